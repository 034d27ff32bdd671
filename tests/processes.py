"""Real processes for tests: a standalone emulator, and `batchgen run` to kill."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from batchgen.emulator_serve import EmulatorProcess
from batchgen.emulator_serve import emulator_process as serve


@contextmanager
def emulator_process(*options: str, key: str = "test-key-123") -> Iterator[EmulatorProcess]:
    """The standalone emulator, drawing tiny images: tests check files, not pixels."""
    with serve("--image-scale", "0.03125", *options, key=key) as emulator:
        yield emulator


def batchgen(*args: str, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen[str]:
    """Start `batchgen ARGS` with a clean environment plus `env`."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMIND_")}
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "batchgen", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def wait_for_lines(path: Path, status: str, count: int, *, timeout: float = 30.0) -> None:
    """Block until the ledger holds `count` lines of `status`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count(f'"status":"{status}"') >= count:
            return
        time.sleep(0.02)
    raise TimeoutError(f"{path} never reached {count} {status} lines")
