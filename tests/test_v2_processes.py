"""`kill -9` of a `--api v2` run, then resume: every job charged exactly once, and what
completed meanwhile downloaded by polling its recorded id (within the hour records live)
or, past it, settled from the request history. Real processes, real emulator."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

import batchgen
from batchgen import grid, manifest
from tests.processes import batchgen as batchgen_process
from tests.processes import emulator_process, killed_mid_run
from tests.runs import job_fingerprints, make_project
from tests.test_settle_processes import LATENCY_S, quiet

pytestmark = pytest.mark.slow


def open_submitted(ledger_path: Path) -> int:
    """Jobs whose last line is `submitted`: queued at the service, no outcome recorded."""
    last: dict[str, str] = {}
    for line in ledger_path.read_text().splitlines():
        record = json.loads(line)
        if isinstance(record.get("job_id"), str):
            last[record["job_id"]] = record["status"]
    return sum(status == "submitted" for status in last.values())


@pytest.mark.parametrize("ttl", [3600.0, 1.0], ids=["polled", "expired"])
def test_a_sigkill_of_a_v2_run_then_resume_charges_every_job_once(
    tmp_path: Path, ttl: float
) -> None:
    m = make_project(tmp_path, images=4, prompts=3, seeds=2)  # 24 jobs
    out = tmp_path / "out"
    fingerprints = job_fingerprints(m)
    jobs = {job.job_id for job in grid.expand(manifest.load(m))}
    rng = random.Random(7)
    args = ["run", str(m), "--out", str(out), "--concurrency", "4", "--no-progress",
            "--api", "v2", "--typical-latency", str(LATENCY_S), "--history-lag", "2"]  # fmt: skip
    queued = 0
    options = ("--latency", str(LATENCY_S), "--latency-jitter", "0.5", "--record-ttl", str(ttl))
    with emulator_process(*options) as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url,
               "SEGMIND_HISTORY_BASE": emu.history_base}  # fmt: skip
        for kill in range(2):
            killed_mid_run(*args, env=env, ledger=out / "ledger.jsonl",
                           successes=3 + 6 * kill, delay=rng.uniform(0.1, 0.5))  # fmt: skip
            queued += open_submitted(out / "ledger.jsonl")
            quiet(emu)  # they complete and bill while nobody listens
            if ttl < 60:
                time.sleep(ttl + 0.5)  # their records are gone: the history has to say
        final = batchgen_process(*args, env=env)
        _, stderr = final.communicate(timeout=120)
        assert final.returncode == 0, stderr
        stats = quiet(emu)
    charges = [stats["charges"].get(fingerprints[job], 0) for job in jobs]
    records = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    polled = sum(1 for r in records if r.get("polled") and r["status"] == "succeeded")
    recovered = sum(1 for r in records if r.get("recovered") and r["status"] == "succeeded")
    summary = batchgen.report(out)
    double = sum(count - 1 for count in charges if count > 1)
    print(f"\nv2 kill -9 x2 (record ttl {ttl:g}s): {len(jobs)} jobs, {queued} queued at the "
          f"kills, {polled} downloaded by polling their id, {recovered - polled} from the "
          f"history, {double} charged twice; report ${summary.spent:.3f} vs emulator "
          f"${stats['spent']:.3f}")  # fmt: skip
    assert charges == [1] * len(jobs), charges
    assert queued >= 1, "the kills should cut some queued requests"
    if ttl > 60:
        assert polled >= 1
    else:
        assert polled == 0 and recovered >= 1
    assert summary.spent == pytest.approx(stats["spent"]) and summary.possibly_billed == 0
    assert summary.succeeded == len(jobs)
