"""What a `kill -9` may cost: at most `--concurrency` images paid for and then lost.

The service has no idempotency key, so an image it charged for whose `succeeded` line is
not in the ledger when the process dies is paid again on resume. The invariant: at any
instant, the requests that may have been billed but whose outcome is not yet durable
are at most `--concurrency` (each worker: one request in flight, or one answer waiting for
its commit, never both and never more). So whatever instant the kill lands on, the images
that kill loses are at most C.

The disk is made slow for real (every fsync/fdatasync/syncfs of the run waits 250 ms, an
LD_PRELOAD shim, `tests/slowdisk.py`), because that is where answers pile up waiting for
the ledger's group commit; nothing in batchgen is patched. The run is a real process
against the standalone emulator, killed at a random moment after its first recorded
success, several times over, then finished on a normal disk.

How a kill's loss is counted, from the emulator's charges per request fingerprint:
`unrecorded = sum over jobs of charges[job] - (1 if the ledger records its success)` is
every charge that bought nothing durable so far; its growth across one kill is what that
kill lost (losses of earlier kills stay in it: those jobs are paid again or still owed).
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batchgen import grid, ledger, manifest
from tests.processes import EmulatorProcess, batchgen, emulator_process
from tests.runs import job_fingerprints, make_project
from tests.slowdisk import slow_disk_env, slow_fsync_library

pytestmark = pytest.mark.slow

FSYNC_DELAY_MS = 250
LATENCY_S = 0.2
KILLS = 6
# A kill lands up to this long after the run's first recorded success. One group commit
# on this disk is three syncs (the images, their folders, the ledger): >= 0.75 s, so the
# window spans a few commits, not only the first one's aftermath.
KILL_WINDOW_S = 2.5


def succeeded_jobs(path: Path) -> Counter[str]:
    """job_id -> how many `succeeded` lines the ledger holds for it (a torn tail ignored)."""
    if not path.exists():
        return Counter()
    return Counter(r["job_id"] for r in ledger.read(path) if r["status"] == "succeeded")


def wait_for_new_success(run: subprocess.Popen[str], path: Path, before: int) -> None:
    """Block until the ledger holds more than `before` succeeded lines, or the run ended."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count('"status":"succeeded"') > before:
            return
        if run.poll() is not None:
            return
        time.sleep(0.01)
    raise TimeoutError(f"{path}: no new succeeded line in 60 s")


def settle(emulator: EmulatorProcess) -> dict[str, Any]:
    """The emulator's stats once every request the killed run left behind has finished
    (the emulator finishes, and bills, a request whose client went away): nothing in
    flight and no new request for two polls a latency apart."""
    stats = emulator.stats()
    quiet = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(LATENCY_S)
        again = emulator.stats()
        calm = again["in_flight"] == 0 and again["requests_total"] == stats["requests_total"]
        quiet = quiet + 1 if calm else 0
        if quiet == 2:
            return again
        stats = again
    raise TimeoutError(f"the emulator never went quiet: {stats['in_flight']} in flight")


@pytest.mark.parametrize(
    ("concurrency", "shape"),
    # images, prompts, seeds: 120 and 720 jobs. At C=32 a run that keeps sending while its
    # answers wait could send 240 jobs before the kill window closes, leaving nothing at stake.
    [(8, (5, 4, 6)), (32, (8, 10, 9))],
    ids=["C=8", "C=32"],
)
def test_a_sigkill_loses_at_most_concurrency_paid_images(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    concurrency: int,
    shape: tuple[int, int, int],
) -> None:
    shim = slow_fsync_library(tmp_path_factory)
    images, prompts, seeds = shape
    m = make_project(tmp_path, images=images, prompts=prompts, seeds=seeds)
    out = tmp_path / "out"
    ledger_path = out / "ledger.jsonl"
    fingerprints = job_fingerprints(m)
    jobs = {job.job_id for job in grid.expand(manifest.load(m))}
    assert set(fingerprints) == jobs and len(set(fingerprints.values())) == len(jobs)
    rng = random.Random(20240 + concurrency)
    lost_per_kill: list[int] = []
    recorded_per_kill: list[int] = []
    charged_when_recorded: dict[str, int] = {}  # job -> its charges once its success was on disk
    unrecorded_before = 0
    # --no-reconcile: the bound is the runner's own, what a kill costs when the request
    # history cannot settle it (tests/test_settle_processes.py: with it, nothing is paid twice)
    args = ("run", str(m), "--out", str(out), "--concurrency", str(concurrency), "--no-progress",
            "--no-reconcile")  # fmt: skip
    began = time.monotonic()
    with emulator_process("--latency", str(LATENCY_S), "--latency-jitter", "0.5") as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        slow_env = {**env, **slow_disk_env(shim, delay_ms=FSYNC_DELAY_MS)}
        for _ in range(KILLS):
            recorded = succeeded_jobs(ledger_path)
            if set(recorded) == jobs:
                break  # nothing left to kill
            run = batchgen(*args, env=slow_env)
            wait_for_new_success(run, ledger_path, sum(recorded.values()))
            time.sleep(rng.uniform(0.0, KILL_WINDOW_S))
            run.send_signal(signal.SIGKILL)
            run.communicate(timeout=30)
            charges = settle(emu)["charges"]
            recorded = succeeded_jobs(ledger_path)
            unrecorded = sum(charges.get(fingerprints[job], 0) for job in jobs) - len(recorded)
            lost_per_kill.append(unrecorded - unrecorded_before)
            recorded_per_kill.append(len(recorded))
            unrecorded_before = unrecorded
            for job in set(recorded) - set(charged_when_recorded):
                charged_when_recorded[job] = charges[fingerprints[job]]
        killed_for = time.monotonic() - began
        final = batchgen(*args, env=env)  # a normal disk, not killed: it finishes
        _, stderr = final.communicate(timeout=120)
        assert final.returncode == 0, stderr
        charges = settle(emu)["charges"]
    print(
        f"\nC={concurrency}: {len(jobs)} jobs, fsync {FSYNC_DELAY_MS} ms, latency {LATENCY_S} s: "
        f"lost per kill {lost_per_kill} (max {max(lost_per_kill, default=0)}, "
        f"total {sum(lost_per_kill)}); recorded after each kill {recorded_per_kill}; "
        f"{killed_for:.1f} s of kills"
    )
    recorded = succeeded_jobs(ledger_path)
    assert set(recorded) == jobs and set(recorded.values()) == {1}  # one success line each
    for record in ledger.read(ledger_path):
        if record["status"] == "succeeded":
            image = out / record["output"]
            assert image.is_file() and image.stat().st_size == record["bytes"], image
    # a success on disk is never paid again, and every extra charge is one a kill lost
    assert {job: charges[fingerprints[job]] for job in charged_when_recorded} == (
        charged_when_recorded
    )
    assert sum(charges[fingerprints[job]] for job in jobs) - len(jobs) == sum(lost_per_kill)
    assert max(lost_per_kill) <= concurrency, (
        f"a kill lost more paid images than --concurrency {concurrency}: {lost_per_kill}"
    )
    assert len(lost_per_kill) >= 3, f"only {len(lost_per_kill)} kills landed: too few jobs"
