"""The bundled emulator of Segmind's Ideogram Turbo img2img API (see shared/api/).

The demo, the tests and the benchmarks talk to this instead of the paid service. One module a job:

    service.py    the v1 endpoint: its rules, its faults, the application that serves it all
    pictures.py   the deterministic pictures it answers with
    serve.py      serving it on a port in-process, and the `batchgen emulator` command
"""

from __future__ import annotations

from batchgen.emulator.serve import RunningEmulator, running_emulator
from batchgen.emulator.service import (
    CONFIG,
    DEMO_KEY,
    STATS,
    EmulatorConfig,
    EmulatorStats,
    fingerprint,
    make_app,
)

__all__ = [
    "CONFIG",
    "DEMO_KEY",
    "STATS",
    "EmulatorConfig",
    "EmulatorStats",
    "RunningEmulator",
    "fingerprint",
    "make_app",
    "running_emulator",
]
