"""An offline stand-in for Segmind's Ideogram Turbo img2img endpoint (shared/api/ contract).

The demo and every end-to-end test talk to this instead of the paid service, so it enforces the
same rules (through `batchgen.api`, never a copy of them) and misbehaves the way the real one does,
on demand and reproducibly (every random draw comes from `random.Random(config.seed)`).

What a request meets, in order:

    POST /v1/{model}
      401  x-api-key missing or wrong (a Bearer Authorization header is not accepted)
      404  model not in config.models
      429  token bucket empty (rate_limit_rpm, rate_burst) or max_in_flight reached
      406  Content-Type not JSON                 {"error": "Invalid content type"}
      413  body over max_body_bytes
      400  bad JSON, any rule of api.check_body, image_file not an image
      406  balance below the price               {"error": "Insufficient credits"}
      ---  upstream: the next scripted status, else a seeded 500/502/504 fault draw
      5xx  after the simulated latency; a billed_504_share of 504s are billed first
      200  the image (JPEG unless output_format="png"), billed; headers x-cost, x-request-id,
           x-generation-time, x-seed-value, x-remaining-credits (when credits are set) and
           x-rate-limit-reset-at-utc (when rate-limited: when the bucket is full again)
    GET  /_stats    EmulatorStats as JSON: who paid for what
    POST /_script   a JSON list of statuses, replacing what is left of the script

Only 200s and billed 504s are charged; `EmulatorStats.charges` counts charges per request
fingerprint, so a test can prove that nobody paid twice. Serving it (a loopback port, the
`batchgen emulator` command) is `serve.py`'s job; drawing its pictures is `pictures.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler

from batchgen import api
from batchgen.emulator.pictures import InvalidImage, RenderCache, render, request_spec, seed_for

DEMO_KEY: Final = "batchgen-demo-key"
DEFAULT_MAX_BODY_BYTES: Final = 32 * 1024 * 1024
INLINE_RENDER_PIXELS: Final = 256 * 256  # above this, Pillow runs in a thread, off the loop
SHUTDOWN_TIMEOUT_S: Final = 5.0
MESSAGES: Final[Mapping[int, str]] = {
    400: "Bad request",
    401: "Unauthorized: missing or invalid x-api-key",
    403: "Forbidden",
    404: "Not found",
    406: "Insufficient credits",
    429: "Rate limit exceeded",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}
SCRIPTABLE: Final = frozenset({200, *MESSAGES})


@dataclass(frozen=True, kw_only=True)
class EmulatorConfig:
    """How the emulator behaves. The defaults are a well-behaved, free, instant service.

    Latency of one request: `latency * uniform(1 - latency_jitter, 1 + latency_jitter)` seconds.
    Rate limit: a token bucket holding `rate_burst` tokens, refilled at `rate_limit_rpm / 60` per
    second. Faults: each upstream request fails with 500, 502 or 504 with probabilities
    `fault_500`, `fault_502`, `fault_504`; a 504 (drawn or scripted) is billed with probability
    `billed_504_share`. `script` overrides the draw for the next requests that reach upstream
    (200 there means "no scripted fault"). `clock` and `sleep` are seams for tests.
    """

    api_key: str = DEMO_KEY
    models: tuple[str, ...] = (api.MODEL,)
    price: float = api.PRICE_USD
    credits: float | None = None  # None = unlimited
    latency: float = 0.0
    latency_jitter: float = 0.2
    rate_limit_rpm: float | None = None
    rate_burst: int = 2
    retry_after: bool = False  # Segmind sends no Retry-After; True adds one to 429s
    max_in_flight: int | None = None
    fault_500: float = 0.0
    fault_502: float = 0.0
    fault_504: float = 0.0
    billed_504_share: float = 0.5
    script: Sequence[int] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    seed: int = 0
    image_scale: float = 1.0
    output_format: Literal["jpeg", "png"] = "jpeg"
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def __post_init__(self) -> None:
        problems = _config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))


def _config_problems(config: EmulatorConfig) -> list[str]:
    checks = {
        "price must be > 0": config.price > 0,
        "credits must be >= 0": config.credits is None or config.credits >= 0,
        "latency must be >= 0": config.latency >= 0,
        "latency_jitter must be in 0..1": 0 <= config.latency_jitter <= 1,
        "rate_limit_rpm must be > 0": config.rate_limit_rpm is None or config.rate_limit_rpm > 0,
        "rate_burst must be >= 1": config.rate_burst >= 1,
        "max_in_flight must be >= 1": config.max_in_flight is None or config.max_in_flight >= 1,
        "fault probabilities must each be in 0..1 and add up to at most 1": all(
            0 <= p <= 1 for p in (config.fault_500, config.fault_502, config.fault_504)
        )
        and config.fault_500 + config.fault_502 + config.fault_504 <= 1,
        "billed_504_share must be in 0..1": 0 <= config.billed_504_share <= 1,
        f"script statuses must be among {sorted(SCRIPTABLE)}": set(config.script) <= SCRIPTABLE,
        "max_body_bytes must be >= 1": config.max_body_bytes >= 1,
        "image_scale must be in (0, 1]": 0 < config.image_scale <= 1,
        "output_format must be 'jpeg' or 'png'": config.output_format in ("jpeg", "png"),
    }
    return [message for message, ok in checks.items() if not ok]


def fingerprint(body: Mapping[str, Any]) -> str:
    """sha256 of the body's canonical JSON: the identity under which a request is charged."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class EmulatorStats:
    """Who paid for what. `credits_left` counts credits reserved by requests still running."""

    price: float
    credits: float | None = None  # the starting balance; None = unlimited
    requests_total: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    charges: dict[str, int] = field(default_factory=dict)
    billed_total: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    reserved: int = 0

    @property
    def spent(self) -> float:
        return round(self.billed_total * self.price, 6)

    @property
    def credits_left(self) -> float | None:
        if self.credits is None:
            return None
        return round(self.credits - (self.billed_total + self.reserved) * self.price, 6)

    def can_afford(self) -> bool:
        left = self.credits_left
        return left is None or round(left - self.price, 6) >= 0

    def record(self, status: int) -> None:
        self.requests_total += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def bill(self, request_fingerprint: str) -> None:
        self.billed_total += 1
        self.charges[request_fingerprint] = self.charges.get(request_fingerprint, 0) + 1

    def double_charged(self) -> list[str]:
        """Fingerprints of requests that were charged more than once."""
        return sorted(fp for fp, count in self.charges.items() if count > 1)

    def as_json(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
            "charges": dict(self.charges),
            "billed_total": self.billed_total,
            "spent": self.spent,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "credits_left": self.credits_left,
        }


class TokenBucket:
    """Holds up to `burst` tokens, refilled at `rpm / 60` per second; a request takes one."""

    def __init__(self, *, rpm: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rpm / 60.0
        self._capacity = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> float:
        """0.0 when a token was taken, else the seconds until one will be available."""
        if self._refill() >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate

    def full_in(self) -> float:
        """Seconds until the bucket is full again: when the limit has 'reset'."""
        return (self._capacity - self._refill()) / self._rate

    def _refill(self) -> float:
        """Add what has dripped in since the last look; the tokens now held."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now
        return self._tokens


class _Refusal(Exception):
    """A non-200 answer, raised from deep in a request and turned into JSON in one place."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return web.json_response({"error": self.message}, status=self.status, headers=self.headers)


@dataclass(frozen=True, slots=True)
class _Upstream:
    """What the 'model' will do with one admitted request, drawn before any waiting so that
    concurrent requests cannot reorder the seeded draws among themselves."""

    status: int
    billed: bool
    delay: float


class _State:
    """The emulator's mutable state; one per application, never global."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.stats = EmulatorStats(price=config.price, credits=config.credits)
        self.rng = random.Random(config.seed)
        self.script: deque[int] = deque(config.script)
        self.cache = RenderCache()
        self.served = 0
        rpm = config.rate_limit_rpm
        self.bucket = (
            TokenBucket(rpm=rpm, burst=config.rate_burst, clock=config.clock) if rpm else None
        )

    def draw_upstream(self) -> _Upstream:
        status = self.script.popleft() if self.script else 200
        if status == 200:
            status = self._draw_fault()
        billed = status == 504 and self.rng.random() < self.config.billed_504_share
        spread = self.config.latency_jitter
        delay = self.config.latency * self.rng.uniform(1 - spread, 1 + spread)
        return _Upstream(status, billed, delay)

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

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Count the request as in flight while it holds the slot."""
        stats = self.stats
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            yield
        finally:
            stats.in_flight -= 1


CONFIG: Final = web.AppKey("emulator_config", EmulatorConfig)
STATS: Final = web.AppKey("emulator_stats", EmulatorStats)
STATE: Final = web.AppKey("emulator_state", _State)


def make_app(config: EmulatorConfig) -> web.Application:
    """The emulator as an aiohttp application (serve it, or hand it to a TestServer)."""
    app = web.Application(middlewares=[_count_answers], client_max_size=config.max_body_bytes)
    state = _State(config)
    app[CONFIG] = config
    app[STATS] = state.stats
    app[STATE] = state
    app.router.add_post("/v1/{model}", _generate)
    app.router.add_get("/_stats", _get_stats)
    app.router.add_post("/_script", _set_script)
    return app


@web.middleware
async def _count_answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record the status of every /v1 answer, including aiohttp's own 405s."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    stats = request.app[STATS]
    try:
        response = await handler(request)
    except web.HTTPException as err:
        stats.record(err.status)
        raise  # aiohttp turns it into the answer; we only count it
    stats.record(response.status)
    return response


async def _generate(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        _admit(request, state)
        with state.slot():
            body, source = await _read_body(request, state.config)
            return await _run_upstream(state, body, source)
    except _Refusal as refusal:
        return refusal.response()


def _admit(request: web.Request, state: _State) -> None:
    """The gateway's checks, made before the body is read: key, model, rate, concurrency."""
    config = state.config
    if request.headers.get("x-api-key") != config.api_key:
        raise _Refusal(401, MESSAGES[401])
    model = request.match_info["model"]
    if model not in config.models:
        raise _Refusal(404, f"Model {model!r} not found")
    wait = state.bucket.take() if state.bucket else 0.0
    if wait > 0:
        raise _throttled(config, wait)
    cap = config.max_in_flight
    if cap is not None and state.stats.in_flight >= cap:
        raise _throttled(config, 1.0)


def _throttled(config: EmulatorConfig, wait: float) -> _Refusal:
    headers = {"Retry-After": str(max(1, math.ceil(wait)))} if config.retry_after else {}
    return _Refusal(429, MESSAGES[429], headers)


async def _read_body(
    request: web.Request, config: EmulatorConfig
) -> tuple[dict[str, Any], bytes | str]:
    """The validated body and its image: decoded bytes, or the URL (never fetched)."""
    if request.content_type != "application/json":
        raise _Refusal(406, "Invalid content type")
    too_large = _Refusal(413, f"Request body is larger than {config.max_body_bytes} bytes")
    if (request.content_length or 0) > config.max_body_bytes:
        raise too_large
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None  # a chunked body that grew past client_max_size
    body = _parse_json(raw)
    problems = api.check_body(body)
    if problems:
        raise _Refusal(400, "; ".join(problems))
    try:
        decoded = api.decode_image_file(body["image_file"])
    except ValueError as err:
        raise _Refusal(400, str(err)) from None
    return body, body["image_file"] if decoded is None else decoded


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _Refusal(400, f"Invalid JSON body: {err}") from None
    if not isinstance(body, dict):
        raise _Refusal(400, "request body must be a JSON object")
    return body


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")  # Python accepts NaN/Infinity; JSON does not


async def _run_upstream(state: _State, body: dict[str, Any], source: bytes | str) -> web.Response:
    """Credits, then the scripted or drawn outcome, then (on success) the picture and the bill."""
    stats = state.stats
    if not stats.can_afford():
        raise _Refusal(406, MESSAGES[406])
    request_fp = fingerprint(body)
    upstream = state.draw_upstream()
    stats.reserved += 1  # held while running, so concurrent requests cannot overdraw
    try:
        if upstream.delay > 0:
            await state.config.sleep(upstream.delay)
        if upstream.billed:
            stats.bill(request_fp)
        if upstream.status == 429:
            raise _throttled(state.config, 1.0)
        if upstream.status != 200:
            raise _Refusal(upstream.status, MESSAGES[upstream.status])
        started = time.perf_counter()
        image = await _picture(state, body, request_fp, source)
        elapsed = upstream.delay + time.perf_counter() - started
        stats.bill(request_fp)
    finally:
        stats.reserved -= 1
    return _image_response(state, image, seed_for(body, request_fp, state.config.seed), elapsed)


async def _picture(
    state: _State, body: dict[str, Any], request_fp: str, source: bytes | str
) -> bytes:
    cached = state.cache.get(request_fp)
    if cached is not None:
        return cached
    seed = seed_for(body, request_fp, state.config.seed)
    spec = request_spec(body, seed, state.config.image_scale, state.config.output_format, source)
    try:
        if spec.width * spec.height > INLINE_RENDER_PIXELS:
            image = await asyncio.to_thread(render, spec)
        else:
            image = render(spec)
    except InvalidImage as err:
        raise _Refusal(400, str(err)) from None
    state.cache.put(request_fp, image)
    return image


def _image_response(state: _State, image: bytes, seed: int, elapsed: float) -> web.Response:
    headers = {
        "x-cost": f"{state.config.price:g}",
        "x-request-id": state.next_request_id(),
        "x-generation-time": f"{elapsed:.3f}",
        "x-seed-value": str(seed),
    }
    left = state.stats.credits_left
    if left is not None:
        headers["x-remaining-credits"] = f"{left:g}"
    if state.bucket is not None:  # Segmind's docs list it among a success's headers
        reset = datetime.fromtimestamp(time.time() + state.bucket.full_in(), UTC)
        stamp = reset.isoformat(timespec="milliseconds")
        headers["x-rate-limit-reset-at-utc"] = stamp.replace("+00:00", "Z")
    content_type = f"image/{state.config.output_format}"
    return web.Response(body=image, content_type=content_type, headers=headers)


async def _get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS].as_json())


async def _set_script(request: web.Request) -> web.Response:
    """Replace what is left of the script, so a test can steer an emulator in a subprocess."""
    try:
        script = json.loads(await request.read())
    except ValueError:
        script = None
    valid = isinstance(script, list) and all(type(s) is int and s in SCRIPTABLE for s in script)
    if not valid:
        allowed = sorted(SCRIPTABLE)
        return web.json_response(
            {"error": f"send a JSON list of statuses among {allowed}"}, status=400
        )
    request.app[STATE].script = deque(script)
    return web.json_response({"script": script})
