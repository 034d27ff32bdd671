"""The bundled emulator of Segmind's Ideogram Turbo img2img API and the service around it
(shared/api/): the demo, the tests and the benchmarks talk to this instead of the paid service.
Every surface is served on one port; one module a job:

    config.py      EmulatorConfig: every knob, every fault
    service.py     the v1 endpoint, the credit balance, and the application wiring it all
    gateway.py     what v1 and v2 requests meet first: key, model, rate limit, body rules
    v2.py          the v2 queue: submit, poll the status, fetch the result
    history.py     the request history
    storage.py     asset uploads, and the public asset and output URLs
    records.py     what is remembered of each request (history rows, outputs, v2 records)
    assets.py      uploaded images by digest
    accounting.py  who paid for what (EmulatorStats), the rate limit, the in-flight slots
    state.py       one application's mutable state: seeded draws, request ids, pictures
    pictures.py    the deterministic pictures it answers with
    serve.py       serving it on a port in-process, and the `batchgen emulator` command
"""

from __future__ import annotations

from batchgen.emulator.accounting import EmulatorStats, fingerprint
from batchgen.emulator.config import DEMO_KEY, SCRIPTABLE, EmulatorConfig
from batchgen.emulator.serve import RunningEmulator, running_emulator
from batchgen.emulator.service import make_app
from batchgen.emulator.state import CONFIG, STATE, STATS

__all__ = [
    "CONFIG",
    "DEMO_KEY",
    "SCRIPTABLE",
    "STATE",
    "STATS",
    "EmulatorConfig",
    "EmulatorStats",
    "RunningEmulator",
    "fingerprint",
    "make_app",
    "running_emulator",
]
