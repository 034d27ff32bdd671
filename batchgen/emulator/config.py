"""How the emulator behaves: `EmulatorConfig`, its checks, the constants every surface shares."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from batchgen import api

DEMO_KEY: Final = "batchgen-demo-key"
DEFAULT_MAX_BODY_BYTES: Final = 32 * 1024 * 1024
RECORD_TTL_S: Final = 3600.0  # v2 status and result URLs answer 404 an hour after submission
OUTPUT_TTL_S: Final = 7 * 24 * 3600.0  # output images are kept 7 days (pinned)
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
    second; v1 requests and v2 submissions take tokens, polls do not. `max_in_flight` images run
    at once: over it a v1 request answers 429, a v2 request waits QUEUED.

    v1 faults: each upstream request fails with 500, 502 or 504 with probabilities `fault_500`,
    `fault_502`, `fault_504`; a 504 (drawn or scripted) is billed with probability
    `billed_504_share` (the image was made, only the answer was lost). `script` overrides the draw
    for the next requests that reach upstream (200 there means "no scripted fault"); a v2
    submission takes the next scripted status too. `fault_request_id`: 5xx answers carry the
    `x-request-id` of their history row (False: the client must find the row by its body).
    `fault_cut`: that share of 200s is cut off halfway through the image, the connection
    dropped (billed: the image was made, only its bytes were lost on the way).

    v2 faults: `v2_submit_504_share` of submissions are queued (they will complete and bill) but
    answered 504; `v2_fail` of queued requests end FAILED (422, not billed).

    Records: v2 status and result URLs expire `record_ttl` seconds after submission (404); output
    URLs `output_ttl` seconds after the image was made; a history row shows `history_lag` seconds
    after each change (the real service allows up to 30 s).

    Seams for tests: `clock` (monotonic: the rate limit), `wall_clock` (created_at, expiry, lag),
    `sleep` (the simulated latency).
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
    fault_request_id: bool = True
    fault_cut: float = 0.0
    script: Sequence[int] = ()
    v2_submit_504_share: float = 0.0
    v2_fail: float = 0.0
    record_ttl: float = RECORD_TTL_S
    output_ttl: float = OUTPUT_TTL_S
    history_lag: float = 0.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    seed: int = 0
    image_scale: float = 1.0
    output_format: Literal["jpeg", "png"] = "jpeg"
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def __post_init__(self) -> None:
        problems = _config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def output_extension(self) -> str:
        return "jpg" if self.output_format == "jpeg" else "png"


def _config_problems(config: EmulatorConfig) -> list[str]:
    faults = (config.fault_500, config.fault_502, config.fault_504)
    checks = {
        "price must be > 0": config.price > 0,
        "credits must be >= 0": config.credits is None or config.credits >= 0,
        "latency must be >= 0": config.latency >= 0,
        "latency_jitter must be in 0..1": 0 <= config.latency_jitter <= 1,
        "rate_limit_rpm must be > 0": config.rate_limit_rpm is None or config.rate_limit_rpm > 0,
        "rate_burst must be >= 1": config.rate_burst >= 1,
        "max_in_flight must be >= 1": config.max_in_flight is None or config.max_in_flight >= 1,
        "fault probabilities must each be in 0..1 and add up to at most 1": all(
            0 <= p <= 1 for p in faults
        )
        and sum(faults) <= 1,
        "billed_504_share must be in 0..1": 0 <= config.billed_504_share <= 1,
        "fault_cut must be in 0..1": 0 <= config.fault_cut <= 1,
        f"script statuses must be among {sorted(SCRIPTABLE)}": set(config.script) <= SCRIPTABLE,
        "v2_submit_504_share must be in 0..1": 0 <= config.v2_submit_504_share <= 1,
        "v2_fail must be in 0..1": 0 <= config.v2_fail <= 1,
        "record_ttl must be > 0": config.record_ttl > 0,
        "output_ttl must be > 0": config.output_ttl > 0,
        "history_lag must be >= 0": config.history_lag >= 0,
        "max_body_bytes must be >= 1": config.max_body_bytes >= 1,
        "image_scale must be in (0, 1]": 0 < config.image_scale <= 1,
        "output_format must be 'jpeg' or 'png'": config.output_format in ("jpeg", "png"),
    }
    return [message for message, ok in checks.items() if not ok]
