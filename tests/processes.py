"""Real processes for tests and benchmarks: a standalone emulator, and `batchgen run` to kill."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from batchgen.emulator import DEMO_KEY


@dataclass
class EmulatorProcess:
    """`batchgen emulator` running in a process of its own (benchmarks, crash tests)."""

    url: str  # the api_base, ending in /v1
    key: str
    process: subprocess.Popen[str]
    env: dict[str, str]  # what it printed to export: SEGMIND_API_BASE, _API_KEY, _HISTORY_BASE, ...

    @property
    def history_base(self) -> str:
        return self.env["SEGMIND_HISTORY_BASE"]

    @property
    def storage_base(self) -> str:
        return self.env["SEGMIND_STORAGE_BASE"]

    def stats(self) -> dict[str, Any]:
        """The emulator's /_stats: who paid for what."""
        with urllib.request.urlopen(self.url.removesuffix("/v1") + "/_stats", timeout=30) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data


@contextmanager
def serve_emulator(*options: str, key: str = DEMO_KEY) -> Iterator[EmulatorProcess]:
    """Start `batchgen emulator --port 0 OPTIONS` on loopback; stop it afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "emulator", "--port", "0", "--key", key, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        env = read_exports(process.stdout)
        yield EmulatorProcess(env["SEGMIND_API_BASE"], env["SEGMIND_API_KEY"], process, env)
    finally:
        process.terminate()
        process.communicate(timeout=30)


def read_exports(stdout: IO[str]) -> dict[str, str]:
    """The `export NAME=value` lines `batchgen emulator` prints, up to the blank line after them."""
    env: dict[str, str] = {}
    for line in stdout:
        if not line.strip():
            if env:
                return env
            continue
        words = shlex.split(line)
        if words[:1] == ["export"]:
            name, _, value = words[1].partition("=")
            env[name] = value
    raise RuntimeError(f"the emulator exited before printing its environment; got {env}")


@contextmanager
def emulator_process(*options: str, key: str = "test-key-123") -> Iterator[EmulatorProcess]:
    """The standalone emulator, drawing tiny images: tests check files, not pixels."""
    with serve_emulator("--image-scale", "0.03125", *options, key=key) as emulator:
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


def killed_mid_run(*args: str, env: dict[str, str], ledger: Path, successes: int,
                   delay: float) -> None:  # fmt: skip
    """`batchgen ARGS` started, left to run until `ledger` holds `successes` succeeded
    lines and `delay` seconds more, then killed with SIGKILL (no cleanup of any kind) and
    reaped: a crash at a moment the caller's random `delay` picks."""
    run = batchgen(*args, env=env)
    wait_for_lines(ledger, "succeeded", successes)
    time.sleep(delay)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=30)
