"""Messages that tell the whole story: timestamped log lines, what a rerun found, a resume
hint that repeats the run's flags, and a question before a big bill on a terminal."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from batchgen import events, ledger
from batchgen.cli import build_parser, main
from batchgen.progress import Progress, stamped
from tests.processes import batchgen, emulator_process
from tests.runs import make_project

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"  # UTC, to the second


def test_log_lines_carry_a_utc_timestamp() -> None:
    assert stamped("batchgen: hi", now=1796090403.7) == "2026-12-01T02:00:03Z batchgen: hi"
    stream = io.StringIO()
    progress = Progress(3, bar=False, stream=stream, interval=0.0)
    progress(events.JobFinished(job_id="a", ok=True, cost=0.063))
    progress(events.RunStopping(reason="the --max-cost budget of $0.10 is reached"))
    progress.close()
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(rf"{STAMP} batchgen: 1/3 ok 1 failed 0 \$0\.06", lines[0]), lines
    assert re.fullmatch(
        rf"{STAMP} batchgen: stopping: the --max-cost budget of \$0\.10 is reached; "
        "letting requests in flight finish",
        lines[1],
    ), lines


def job_ids(m: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["plan", str(m), "--list"]) == 0
    return [json.loads(row)["job_id"] for row in capsys.readouterr().out.splitlines()]


@pytest.mark.slow
def test_a_rerun_says_what_it_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)  # 8 jobs
    ids = job_ids(m, capsys)
    out = tmp_path / "out"
    out.mkdir()
    line = {"v": 1, "ts": "2026-12-01T02:00:00.000Z"}
    cut = [ledger.encode({**line, "job_id": None, "status": "run", "manifest": "m.yaml"})]
    cut += [ledger.encode({**line, "job_id": job, "status": "started"}) for job in ids[:5]]
    cut.append(
        ledger.encode({**line, "job_id": ids[5], "status": "succeeded", "output": "gone.jpg",
                       "cost": 0.063, "bytes": 10, "sha256": "0" * 64})
    )  # fmt: skip  # and no run_end: the machine died with 5 requests in flight
    (out / "ledger.jsonl").write_bytes(b"".join(cut))

    assert main(["plan", str(m), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        "missing    1 finished image is missing or changed on disk and will be paid again" in text
    )
    with emulator_process() as emu:
        monkeypatch.setenv("SEGMIND_API_KEY", emu.key)
        monkeypatch.setenv("SEGMIND_API_BASE", emu.url)
        assert main(["run", str(m), "--out", str(out), "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert re.search(rf"^{STAMP} batchgen: 8 jobs, 0 already done, 8 to run", err, re.M)
        assert re.search(
            rf"^{STAMP} batchgen: the last run was cut: 5 requests were in flight and may "
            "have been billed$",
            err,
            re.M,
        ), err
        assert re.search(
            rf"^{STAMP} batchgen: 1 finished image is missing or changed on disk and will be "
            "paid again$",
            err,
            re.M,
        ), err
        assert main(["run", str(m), "--out", str(out), "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert "8 already done" in err and "cut" not in err and "missing" not in err
