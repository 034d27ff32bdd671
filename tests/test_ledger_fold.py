"""One fold, every reader: the resume state, the report, the gallery and settlement's view
agree on each job, including where their old copies of the rule did not.

Before batchgen/ledger/fold.py each reader folded lines its own way. Three cases where
they disagreed (found when the copies were merged; each test names what the old code
said) are now decided once, as settlement's per-ledger view of attempts decides them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchgen import gallery, ledger, settle, summaries
from batchgen.ledger import schema
from tests.fixtures.ledger_v1 import generate

FIXTURE = Path(__file__).parent / "fixtures" / "ledger_v1"
JOB = "cd" * 16
PARAMS = {"prompt": "p", "seed": 1, "image_file": "https://example.com/a.jpg"}
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def write(path: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines as the writer frames them, one second apart; returns them."""
    lines = [schema.envelope(record, now=T0 + i) for i, record in enumerate(records)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(schema.encode(line) for line in lines))
    return lines


def run_line() -> dict[str, Any]:
    return schema.run("r", manifest="m.yaml", manifest_sha256="0" * 64, model="m",
                      price=0.063, options={})  # fmt: skip


def run_end() -> dict[str, Any]:
    return schema.run_end("r", stopped=None, succeeded=0, failed=0, spent=0.0)


@pytest.mark.parametrize("scenario", generate.SCENARIOS)
def test_every_reader_sees_the_same_jobs_in_the_same_state(scenario: str) -> None:
    paths = ledger.ledgers_in(FIXTURE / scenario)
    state = ledger.load_state(paths)
    report = summaries.summarize(paths)
    cells, _ = gallery.collect(paths)
    assert set(cells) == set(state.records) and report.jobs == len(state.records)
    statuses = [record.status for record in state.records.values()]
    assert report.succeeded == statuses.count("succeeded")
    assert report.failed == statuses.count("failed")
    assert report.unwritten == statuses.count("unwritten")
    for job_id, record in state.records.items():
        shown = record.status if record.status in ("succeeded", "failed") else "pending"
        assert cells[job_id].status == shown
    unsettled = {a.job_id for a in settle.read_view(paths).unsettled()}
    assert bool(unsettled) == (report.possibly_billed > 0)


def test_a_crash_in_one_ledger_stays_possibly_billed_whatever_another_ledger_says(
    tmp_path: Path,
) -> None:
    """A request in flight when the plain ledger's run was killed; the job's next line is
    in a shard's ledger, a failure before anything was sent (its image could not be read).
    Settlement always kept the crashed attempt open (an attempt is its ledger's); the old
    report let the other ledger's failure close it, and said nothing was possibly billed."""
    write(tmp_path / "ledger.jsonl",
          [run_line(), schema.started(JOB, attempt=1, price=0.063, params=PARAMS)])  # fmt: skip
    nothing_sent = schema.failed(JOB, error="cannot read the input image", http_status=None,
                                 retryable=True, attempts=0, billed="no", cost=0.0,
                                 params=PARAMS)  # fmt: skip
    write(tmp_path / "ledger.shard-1-of-2.jsonl", [run_line(), nothing_sent, run_end()])
    paths = ledger.ledgers_in(tmp_path)
    unsettled = list(settle.read_view(paths).unsettled())
    assert [(a.job_id, a.billed, a.ledger.name) for a in unsettled] == [(JOB, None, "ledger.jsonl")]
    report = summaries.summarize(paths)
    assert report.possibly_billed == pytest.approx(0.063)  # the old report: 0.0
    assert report.failed == 1


def test_a_settled_charge_counts_even_when_the_manifest_priced_it_at_nothing(
    tmp_path: Path,
) -> None:
    """`price: 0` in a manifest does not stop the service charging. A crashed attempt,
    then the same attempt sent again and its image written, then settlement finds the
    crashed one billed: the old report dropped a zero-price open attempt when the next
    one started, so the settled charge was never spent; settlement's view had it."""
    path = tmp_path / "ledger.jsonl"
    crashed = schema.started(JOB, attempt=1, price=0.0, params=PARAMS)
    success = schema.succeeded(JOB, output="x.jpg", cost=0.0, size=1, sha256="0" * 64,
                               attempts=1, headers={}, params=PARAMS)  # fmt: skip
    first = schema.timestamp(T0 + 1)  # the crashed attempt's `started` line, by `write`
    charged = schema.settled(JOB, billed="billed", cost=0.063, request_id="r-1",
                             history_status="COMPLETED",
                             settles={"started": first, "attempt": 1})  # fmt: skip
    write(path, [run_line(), crashed, crashed, success, charged])
    attempts = settle.read_view([path]).attempts[JOB]
    assert [a.billed for a in attempts] == [None, "billed"]  # crashed, then written
    assert attempts[0].key == (str(path), JOB, first, 1)  # what the settled line names
    report = summaries.summarize([path])
    assert (report.spent, report.possibly_billed) == (pytest.approx(0.063), 0)  # old: 0.0, 0


def test_a_job_is_known_by_its_own_lines_not_by_an_attempt_s_alone(tmp_path: Path) -> None:
    """A `retry` line with no `started` before it (a ledger cut by hand): the resume state
    and the gallery never counted such a job; the old report counted it unfinished. Its
    money still counts: possibly billed."""
    path = tmp_path / "ledger.jsonl"
    lost = schema.retry(JOB, attempt=1, http_status=502, error="Bad gateway", billed="maybe",
                        cost=0.063, delay=1.0)  # fmt: skip
    write(path, [run_line(), lost, run_end()])
    report = summaries.summarize([path])
    assert (report.jobs, report.not_finished) == (0, 0)  # the old report: 1, 1
    assert report.possibly_billed == pytest.approx(0.063)
    assert ledger.load_state([path]).records == {} and gallery.collect([path])[0] == {}


def test_settling_one_jobs_attempt_leaves_anothers_of_the_same_moment_open(
    tmp_path: Path,
) -> None:
    """Two jobs' requests went in the same millisecond, both attempt 1, and a crash cut
    both. A `settled` line names its attempt by (`started` ts, attempt number) and sits
    on its job's line: it settles that job's attempt, never the other's (the key once
    lacked the job, so both looked settled and the other was never looked up)."""
    other = "ef" * 16
    path = tmp_path / "ledger.jsonl"
    at = schema.timestamp(T0 + 1)
    lines = [schema.envelope(run_line(), now=T0)]
    for job in (JOB, other):
        lines.append({"v": 1, "ts": at, **schema.started(job, attempt=1, price=0.063,
                                                          params=PARAMS)})  # fmt: skip
    settles = {"started": at, "attempt": 1}
    lines.append(schema.envelope(schema.settled(JOB, billed="no", cost=0.0, request_id=None,
                                                history_status=None, settles=settles),
                                 now=T0 + 2))  # fmt: skip
    path.write_bytes(b"".join(schema.encode(line) for line in lines))
    view = settle.read_view([path])
    assert [a.job_id for a in view.unsettled()] == [other]
    assert summaries.summarize([path]).possibly_billed == pytest.approx(0.063)
