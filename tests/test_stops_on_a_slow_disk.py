"""A run-stopping decision stops the run at once, however slow the disk.

When the retry budget ran out (or the key was refused), the worker used to write its
`interrupted` line, wait for that line's fsync, and only then raise the stop flag. For as
long as the fsync took, the other workers went on sending first attempts, each one adding
to the retry budget's allowance: on a disk whose syncs take 50 ms, a service answering
500 to everything got 87 requests instead of 14, and a refused key 64 instead of 1. Here a
real `batchgen run` process on a slowed disk (an LD_PRELOAD shim) meets the emulator, and
the emulator counts what reached it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen.commands import EXIT_STOPPED
from tests.processes import batchgen, emulator_process
from tests.runs import make_project
from tests.slowdisk import slow_disk_env, slow_fsync_library

pytestmark = pytest.mark.slow

SYNC_DELAY_MS = 50


@pytest.mark.parametrize(
    ("case", "most"),
    [("500-everywhere", 20), ("key-refused", 2)],
)
def test_a_stop_takes_effect_before_its_line_is_durable(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, case: str, most: int
) -> None:
    shim = slow_fsync_library(tmp_path_factory)
    m = make_project(tmp_path, images=5, prompts=10, seeds=10)  # 500 jobs
    out = tmp_path / "out"
    script = ("--script", ",".join(["500"] * 600)) if case == "500-everywhere" else ()
    with emulator_process(*script) as emu:
        key = emu.key if case == "500-everywhere" else "sk-not-the-key"
        env = {"SEGMIND_API_KEY": key, "SEGMIND_API_BASE": emu.url,
               **slow_disk_env(shim, delay_ms=SYNC_DELAY_MS)}  # fmt: skip
        run = batchgen("run", str(m), "--out", str(out), "--no-progress", "--yes", env=env)
        _, stderr = run.communicate(timeout=120)
        requests = emu.stats()["requests_total"]
    assert run.returncode == EXIT_STOPPED, stderr
    assert ("retry budget exhausted" if case == "500-everywhere" else "refused") in stderr
    assert requests <= most, f"{requests} requests reached the service"
