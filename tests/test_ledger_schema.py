"""The schema's constructors write what the fast scanner reads, and the fast scan folds
to what a full parse folds to: the key order the scanner depends on is tested here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from batchgen import ledger
from batchgen.ledger import schema

JOB = "ab" * 16
PARAMS = {"prompt": "a watercolor fox", "seed": 101, "image_file": "https://example.com/a.jpg"}
BODY = b"not really a jpeg"
SHA = hashlib.sha256(BODY).hexdigest()
SETTLES: schema.Settles = {"started": "2026-01-01T00:00:00.000Z", "attempt": 1}


def every_job_line() -> list[dict[str, Any]]:
    """One of each line type a job has, as the runner and settlement write them."""
    success = schema.succeeded(JOB, output="p0/fox.jpg", cost=0.063, size=len(BODY), sha256=SHA,
                               attempts=2, headers={"x-request-id": "r-1"}, params=PARAMS)  # fmt: skip
    return [
        schema.started(JOB, attempt=1, price=0.063, params=PARAMS),
        schema.started(JOB, attempt=1, price=0.063, params=PARAMS, resend=True, probe=True),
        schema.submitted(JOB, attempt=1, request_id="r-1"),
        schema.retry(
            JOB,
            attempt=1,
            http_status=504,
            error="Gateway timeout",
            billed="maybe",
            cost=0.063,
            delay=None,
            outage=True,
        ),
        schema.failed(
            JOB,
            error="Bad request",
            http_status=400,
            retryable=False,
            attempts=1,
            billed="no",
            cost=0.0,
            params=PARAMS,
        ),
        schema.failed(
            JOB,
            error="FAILED",
            http_status=422,
            retryable=False,
            attempts=1,
            billed="no",
            cost=0.0,
            params=PARAMS,
            request_id="r-1",
            settles=SETTLES,
        ),
        schema.interrupted(JOB, error="not sent: the run stopped"),
        schema.interrupted(JOB, error="Unauthorized", http_status=401, billed="no", params=PARAMS),
        schema.unwritten(success, "p0/fox.jpg: No space left on device"),
        schema.cut_short(
            JOB,
            error="the image was cut off after 545 bytes",
            attempts=1,
            cost=0.063,
            params=PARAMS,
            request_id="r-1",
        ),
        schema.settled(
            JOB,
            billed="billed",
            cost=0.063,
            request_id="r-1",
            history_status="COMPLETED",
            settles=SETTLES,
        ),
        schema.settled(
            JOB,
            billed="no",
            cost=0.0,
            request_id="r-1",
            history_status=None,
            settles=SETTLES,
            polled=True,
        ),
        success,
        schema.recovered(
            JOB,
            output="p0/fox.jpg",
            cost=0.063,
            size=len(BODY),
            sha256=SHA,
            attempts=1,
            request_id="r-2",
            params=PARAMS,
            settles=SETTLES,
        ),
    ]


@pytest.mark.parametrize("record", every_job_line(), ids=lambda r: str(r["status"]))
def test_every_job_line_is_matched_by_the_scanner_s_prefix(record: dict[str, Any]) -> None:
    line = schema.encode(schema.envelope(record))
    match = schema.PREFIX.match(line)
    assert match is not None, line
    assert (match[1].decode(), match[2].decode()) == (JOB, record["status"])
    assert json.loads(line) == {"v": schema.VERSION, "ts": json.loads(line)["ts"], **record}


@pytest.mark.parametrize("record", [r for r in every_job_line() if r["status"] == "succeeded"])
def test_a_success_s_output_size_and_digest_are_read_without_a_parse(
    record: dict[str, Any],
) -> None:
    line = schema.encode(schema.envelope(record))
    prefix = schema.PREFIX.match(line)
    assert prefix is not None
    found = schema.SUCCEEDED.search(line, prefix.end())
    assert found is not None
    assert (found[1].decode(), int(found[2]), found[3].decode()) == ("p0/fox.jpg", 17, SHA)


def test_run_lines_are_not_job_lines() -> None:
    run = schema.run("r", manifest="m.yaml", manifest_sha256="0" * 64, model="m", price=0.063,
                     options={"rpm": None})  # fmt: skip
    end = schema.run_end("r", stopped=None, succeeded=1, failed=0, spent=0.063)
    for record in (run, end):
        assert schema.PREFIX.match(schema.encode(schema.envelope(record))) is None


async def write(path: Path, records: list[dict[str, Any]]) -> None:
    async with ledger.LedgerWriter(path) as writer:
        for record in records:
            await writer.write(record)


def resume_fields(records: dict[str, ledger.JobRecord]) -> dict[str, tuple[object, ...]]:
    return {
        job: (r.status, r.output, r.folder, r.sha256, r.size, r.retryable, r.error, r.manifest,
              r.request_id)
        for job, r in records.items()
    }  # fmt: skip


@pytest.mark.parametrize("cut", range(1, 14))
async def test_the_fast_scan_folds_as_a_full_parse_does(tmp_path: Path, cut: int) -> None:
    """Every prefix of a job's life, written by the real writer: the resume state from the
    fast scan equals the fold of the fully parsed lines."""
    path = tmp_path / "ledger.jsonl"
    run = schema.run("r", manifest="m.yaml", manifest_sha256="0" * 64, model="m", price=0.063,
                     options={})  # fmt: skip
    await write(path, [run, *every_job_line()[:cut]])
    fast = ledger.load_state([path])
    full = ledger.fold(ledger.ledgers([path]))
    assert resume_fields(fast.records) == resume_fields(full.jobs)
    assert (fast.lines, fast.cut) == (full.lines, full.cut)


async def test_a_line_the_patterns_miss_still_reads_the_same(tmp_path: Path) -> None:
    """The patterns are only a shortcut: the same lines with their keys in another order
    (another writer's) fold to the same state through a full parse."""
    ours, theirs = tmp_path / "ours" / "ledger.jsonl", tmp_path / "theirs" / "ledger.jsonl"
    records = every_job_line()[-3:]  # unwritten, settled, succeeded
    await write(ours, records)
    theirs.parent.mkdir()
    with theirs.open("wb") as handle:
        for line in ours.read_bytes().splitlines():
            reordered = dict(reversed(list(json.loads(line).items())))
            assert schema.PREFIX.match(schema.encode(reordered)) is None
            handle.write(schema.encode(reordered))
    a, b = ledger.load_state([ours]).records[JOB], ledger.load_state([theirs]).records[JOB]
    assert (a.status, a.output, a.sha256, a.size) == (b.status, b.output, b.sha256, b.size)
    assert (a.status, a.size) == ("succeeded", len(BODY))
