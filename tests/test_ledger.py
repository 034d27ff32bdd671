"""The ledger: torn tails tolerated, corrupt middles refused, group commit, resume state."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen import durable, ledger
from batchgen.errors import LedgerError


def line(job: str, status: str, **extra: object) -> bytes:
    return ledger.encode({"v": 1, "ts": "t", "job_id": job, "status": status, **extra})


@settings(max_examples=200, deadline=None)
@given(
    statuses=st.lists(st.sampled_from(["started", "failed"]), min_size=1, max_size=20),
    cut=st.integers(min_value=1, max_value=200),
)
def test_any_torn_last_line_is_ignored(
    tmp_path_factory: pytest.TempPathFactory, statuses: list[str], cut: int
) -> None:
    path = tmp_path_factory.mktemp("l") / "ledger.jsonl"
    whole = b"".join(line(f"job{i}", s, retryable=False) for i, s in enumerate(statuses))
    torn = line("torn", "failed", retryable=False)
    path.write_bytes(whole + torn[: min(cut, len(torn) - 1)])
    state = ledger.load_state([path])
    assert set(state.records) == {f"job{i}" for i in range(len(statuses))}
    assert "torn" not in state.records


def test_a_corrupt_middle_line_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(line("a", "started") + b"{not json\n" + line("b", "started"))
    with pytest.raises(LedgerError, match=r"ledger.jsonl:2: corrupt ledger line"):
        ledger.load_state([path])


async def test_writer_cuts_a_torn_tail_and_group_commits(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(line("a", "started") + b'{"v":1,"job_id":"b","sta')
    async with ledger.LedgerWriter(path) as writer:
        await asyncio.gather(
            *(writer.write({"job_id": f"j{i}", "status": "started"}) for i in range(200))
        )
    records = list(ledger.read(path))
    assert [r["job_id"] for r in records] == ["a"] + [f"j{i}" for i in range(200)]
    assert all(r["v"] == 1 and r["ts"].endswith("Z") for r in records[1:])
    assert writer.fsyncs < 200  # many lines shared each fsync


def test_resume_state_rules(tmp_path: Path) -> None:
    out = tmp_path / "out.jpg"
    out.write_bytes(b"image")
    digest = hashlib.sha256(b"image").hexdigest()
    gone = tmp_path / "gone.jpg"
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(
        line("ok", "started")
        + line("ok", "succeeded", output="out.jpg", sha256=digest, bytes=5)
        + line("ok", "started")  # a later rerun crashed: the success still counts
        + line("lost", "succeeded", output="gone.jpg", sha256=digest, bytes=5)
        + line("bad", "failed", retryable=False)
        + line("flaky", "failed", retryable=True)
        + line("crashed", "started")
        + json.dumps({"v": 1, "ts": "t", "job_id": None, "status": "run"}).encode()
        + b"\n"
    )
    state = ledger.load_state([path])
    assert state.is_done("ok")
    assert not gone.exists() and not state.is_done("lost")
    assert state.failed_for_good("bad") and not state.is_done("bad")
    assert not state.failed_for_good("flaky") and not state.is_done("flaky")
    assert not state.is_done("crashed") and state.records["crashed"].status == "started"
    out.write_bytes(b"imagX")  # same size, other bytes: not the file we paid for
    assert not ledger.load_state([path]).is_done("ok")
    durable.write_atomic(out, b"image")  # put back, as a new file: the digest matches again
    assert state.is_done("ok")
    durable.write_atomic(out, b"imagY")  # replaced during a run (another job's output, say)
    assert not state.is_done("ok")  # the same state notices: a new inode is read again


record_strategy = st.fixed_dictionaries(
    {
        "job_id": st.sampled_from([f"{i:032x}" for i in range(6)]),
        "status": st.sampled_from(["started", "succeeded", "failed", "interrupted", "retry"]),
        "retryable": st.booleans(),
        "output": st.sampled_from(["a/b.jpg", "c.png"]),
        "cost": st.sampled_from([0.063, 0.0]),
        "bytes": st.integers(0, 10**6),
        "sha256": st.sampled_from(["a" * 64, "b" * 64]),
    }
)


@settings(max_examples=100, deadline=None)
@given(records=st.lists(record_strategy, max_size=30))
def test_the_fast_scan_agrees_with_plain_json(
    tmp_path_factory: pytest.TempPathFactory, records: list[dict[str, object]]
) -> None:
    folder = tmp_path_factory.mktemp("scan")
    writer_shape = b"".join(
        ledger.encode({"v": 1, "ts": "2026-01-01T00:00:00.000Z", "job_id": r["job_id"],
                       "status": r["status"], **{k: v for k, v in r.items() if k not in ("job_id", "status")}})
        for r in records
    )  # fmt: skip
    other_shape = b"".join(
        json.dumps(dict(reversed(list({"v": 1, "ts": "t", **r}.items()))), indent=None).encode()
        + b"\n"
        for r in records
    )
    (folder / "fast.jsonl").write_bytes(writer_shape)
    (folder / "slow.jsonl").write_bytes(other_shape)
    fast = ledger.load_state([folder / "fast.jsonl"]).records
    slow = ledger.load_state([folder / "slow.jsonl"]).records
    assert fast == slow


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_timestamps_read_as_datetime_writes_them(now: float) -> None:
    """The cached formatter matches datetime's own, to the millisecond, rounding included."""
    expected = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    assert ledger.timestamp(now) == expected.replace("+00:00", "Z")
