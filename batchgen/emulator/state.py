"""The emulator's mutable state, one per application (never global), and what every surface
shares: the seeded draws, the request ids, the answer for a refusal, the pictures."""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import uuid
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from batchgen import api
from batchgen.emulator.accounting import EmulatorStats, Slots, TokenBucket
from batchgen.emulator.assets import AssetStore
from batchgen.emulator.config import MESSAGES, EmulatorConfig
from batchgen.emulator.pictures import RenderCache, render, request_spec
from batchgen.emulator.records import Record, Records

INLINE_RENDER_PIXELS: Final = 256 * 256  # above this, Pillow runs in a thread, off the loop


class Refusal(Exception):
    """A non-200 answer, raised from deep in a request and turned into JSON in one place."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return web.json_response({"error": self.message}, status=self.status, headers=self.headers)


@dataclass(frozen=True, slots=True)
class Upstream:
    """What the 'model' will do with one admitted request, drawn before any waiting so that
    concurrent requests cannot reorder the seeded draws among themselves."""

    status: int
    billed: bool  # a 504 whose image was made and billed: only the answer was lost
    delay: float
    cut: bool = False  # a 200 whose image is cut off halfway: billed, its bytes lost


class State:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.stats = EmulatorStats(price=config.price, credits=config.credits)
        self.rng = random.Random(config.seed)
        self.script: deque[int] = deque(config.script)
        self.cache = RenderCache()
        self.slots = Slots(self.stats, config.max_in_flight)
        self.records = Records(record_ttl=config.record_ttl, wall_clock=config.wall_clock)
        self.assets = AssetStore()
        self.tasks: set[asyncio.Task[None]] = set()
        self.served = 0
        rpm = config.rate_limit_rpm
        self.bucket = (
            TokenBucket(rpm=rpm, burst=config.rate_burst, clock=config.clock) if rpm else None
        )

    def now(self) -> float:
        return self.config.wall_clock()

    def draw_upstream(self) -> Upstream:
        status = self.script.popleft() if self.script else 200
        if status == 200:
            status = self._draw_fault()
        billed = status == 504 and self.rng.random() < self.config.billed_504_share
        share = self.config.fault_cut  # drawn only when set: other seeded draws stay as they were
        cut = status == 200 and share > 0 and self.rng.random() < share
        return Upstream(status, billed, self.draw_latency(), cut)

    def draw_submit(self) -> tuple[int, float, bool]:
        """A v2 submission's (answer, latency, fails): 200; 504 (queued all the same); or the
        scripted status it is refused with. Draws nothing for a fault configured at 0."""
        config = self.config
        status = self.script.popleft() if self.script else 200
        share = config.v2_submit_504_share
        if status == 200 and share > 0 and self.rng.random() < share:
            status = 504
        fails = config.v2_fail > 0 and self.rng.random() < config.v2_fail
        return status, self.draw_latency(), fails

    def draw_latency(self) -> float:
        spread = self.config.latency_jitter
        return self.config.latency * self.rng.uniform(1 - spread, 1 + spread)

    def _draw_fault(self) -> int:
        config = self.config
        draw = self.rng.random()
        for status, chance in ((500, config.fault_500), (502, config.fault_502)):
            if draw < chance:
                return status
            draw -= chance
        return 504 if draw < config.fault_504 else 200

    def next_request_id(self) -> str:
        self.served += 1
        digest = hashlib.sha256(f"{self.config.seed}:{self.served}".encode()).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))

    def throttled(self, wait: float) -> Refusal:
        headers = {"Retry-After": str(max(1, math.ceil(wait)))} if self.config.retry_after else {}
        return Refusal(429, MESSAGES[429], headers)

    def source_of(self, image_file: str) -> bytes | str:
        """What a stored `image_file` draws from: its bytes, an asset's, or the URL itself."""
        decoded = api.decode_image_file(image_file)
        if decoded is not None:
            return decoded
        return self.assets.resolve(image_file) or image_file

    async def picture(self, record: Record, source: bytes | str | None = None) -> bytes:
        """The image `record` produced (or produces): the same bytes every time.
        Raises pictures.InvalidImage for an input Pillow cannot decode."""
        cached = self.cache.get(record.fingerprint)
        if cached is not None:
            return cached
        if source is None:
            source = self.source_of(record.body["image_file"])
        config = self.config
        spec = request_spec(
            record.body, record.seed, config.image_scale, config.output_format, source
        )
        if spec.width * spec.height > INLINE_RENDER_PIXELS:
            image = await asyncio.to_thread(render, spec)
        else:
            image = render(spec)
        self.cache.put(record.fingerprint, image)
        return image

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine in the background, cancelled when the application shuts down."""
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


CONFIG: Final = web.AppKey("emulator_config", EmulatorConfig)
STATS: Final = web.AppKey("emulator_stats", EmulatorStats)
STATE: Final = web.AppKey("emulator_state", State)
