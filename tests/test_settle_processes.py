"""`kill -9` mid-run, then resume: the requests the kill cut are settled from the request
history (downloaded when billed) instead of paid again. Real processes, real emulator."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

import batchgen
from batchgen import grid, manifest
from tests.processes import EmulatorProcess, emulator_process, killed_mid_run
from tests.processes import batchgen as batchgen_process
from tests.runs import job_fingerprints, make_project

pytestmark = pytest.mark.slow

LATENCY_S = 0.5


def quiet(emulator: EmulatorProcess) -> dict[str, Any]:
    """The emulator's stats once the requests a killed run left have finished (and billed)."""
    stats = emulator.stats()
    deadline = time.monotonic() + 20
    calm = 0
    while time.monotonic() < deadline:
        time.sleep(LATENCY_S)
        again = emulator.stats()
        calm = calm + 1 if again["in_flight"] == 0 and again == stats else 0
        if calm == 2:
            return again
        stats = again
    raise TimeoutError("the emulator never went quiet")


@pytest.mark.parametrize("settling", [True, False], ids=["settled", "baseline"])
def test_a_sigkill_then_resume_charges_every_job_once(tmp_path: Path, settling: bool) -> None:
    m = make_project(tmp_path, images=4, prompts=3, seeds=2)  # 24 jobs
    out = tmp_path / "out"
    fingerprints = job_fingerprints(m)
    jobs = {job.job_id for job in grid.expand(manifest.load(m))}
    rng = random.Random(5)
    extra = ["--history-lag", "2"] if settling else ["--no-reconcile"]
    args = ["run", str(m), "--out", str(out), "--concurrency", "4", "--no-progress", *extra]
    cut = 0
    with emulator_process("--latency", str(LATENCY_S), "--latency-jitter", "0.5") as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url,
               "SEGMIND_HISTORY_BASE": emu.history_base}  # fmt: skip
        for kill in range(2):
            killed_mid_run(*args, env=env, ledger=out / "ledger.jsonl",
                           successes=3 + 6 * kill, delay=rng.uniform(0.1, 0.5))  # fmt: skip
            cut += emu.stats()["in_flight"]
            quiet(emu)
        final = batchgen_process(*args, env=env)
        _, stderr = final.communicate(timeout=120)
        assert final.returncode == 0, stderr
        stats = quiet(emu)
    charges = [stats["charges"].get(fingerprints[job], 0) for job in jobs]
    double = sum(count - 1 for count in charges if count > 1)
    summary = batchgen.report(out)
    print(f"\nkill -9 x2 ({'settled' if settling else 'baseline, --no-reconcile'}): "
          f"{len(jobs)} jobs, {cut} requests in flight at the kills, {double} charged twice, "
          f"report ${summary.spent:.3f} vs emulator ${stats['spent']:.3f}")  # fmt: skip
    assert min(charges) == 1
    if settling:
        assert double == 0, charges
        assert summary.spent == pytest.approx(stats["spent"]) and summary.possibly_billed == 0
    else:
        assert double <= 8  # at most --concurrency a kill
