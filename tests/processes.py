"""Real processes for tests: a standalone emulator, and `batchgen run` to kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class EmulatorProcess:
    url: str
    key: str
    process: subprocess.Popen[str]

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url.removesuffix("/v1") + "/_stats", timeout=10) as r:
            result: dict[str, Any] = json.loads(r.read())
            return result


@contextmanager
def emulator_process(*options: str, key: str = "test-key-123") -> Iterator[EmulatorProcess]:
    command = [sys.executable, "-m", "batchgen", "emulator", "--port", "0", "--key", key]
    process = subprocess.Popen(
        [*command, "--image-scale", "0.03125", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()
        env_line = process.stdout.readline()  # SEGMIND_API_BASE=... SEGMIND_API_KEY=...
        url = env_line.split()[0].split("=", 1)[1]
        yield EmulatorProcess(url, key, process)
    finally:
        process.terminate()
        process.communicate(timeout=10)


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
