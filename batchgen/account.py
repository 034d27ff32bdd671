"""The account's credit balance: `GET {api_base}/get-user-credits` -> `{"credits": 12.345,
"free-credits": 0}` (USD). Not billed; lets a dry run say whether the balance covers a batch.

The key goes to the API host only (redirects are never followed). A refusal, a failure
to reach the service or an answer without a balance raises `ServiceError`, naming the
status or the failure, never the key. `credits: null` (the bundled emulator's unlimited
account) is an infinite balance. Free credits are not counted: whether they pay for a
given model is not documented.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, Final

import aiohttp

from batchgen import refusals
from batchgen.errors import ApiStatusError, ServiceError

CREDITS_PATH: Final = "/get-user-credits"
TIMEOUT_S: Final = 30.0
USER_AGENT: Final = "batchgen"


async def fetch_credits(*, api_key: str, api_base: str, timeout: float = TIMEOUT_S) -> float:  # noqa: ASYNC109
    """The balance in USD. Raises ServiceError."""
    base = api_base.strip().rstrip("/")
    url = f"{base}{CREDITS_PATH}"
    try:
        async with (
            aiohttp.ClientSession(
                headers={"User-Agent": USER_AGENT}, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as session,
            session.get(
                url, headers={"x-api-key": api_key, "Accept": "application/json"},
                allow_redirects=False,
            ) as response,
        ):  # fmt: skip
            status, payload = response.status, await response.read()
    except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as err:
        why = "timed out" if isinstance(err, TimeoutError) else type(err).__name__
        raise ServiceError(f"the credit balance at {base} cannot be reached ({why})") from None
    if status != 200:
        raise ServiceError(_refusal(status, payload, base), status)
    return parse_balance(payload, base)


def parse_balance(payload: bytes, base: str = "the API") -> float:
    try:
        answer: Any = json.loads(payload)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and "credits" in answer:
        value = answer["credits"]
        if value is None:
            return math.inf  # no limit (the bundled emulator without --credits)
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    raise ServiceError(
        f'the credit balance at {base} answered without one (expected {{"credits": N}})'
    )


def _refusal(status: int, payload: bytes, base: str) -> str:
    message = ApiStatusError.from_response(status, payload, {}).message
    return refusals.refusal(f"the credit balance at {base}", status, forbidden="read it",
                            missing="not found there (is --api-base right?)",
                            detail=message)  # fmt: skip


def covers(balance: float, price: float, images: int) -> int:
    """How many of `images` at `price` the balance pays for."""
    if price <= 0 or math.isinf(balance):
        return images
    return max(0, min(images, math.floor(balance / price + 1e-9)))


def coverage_line(balance: float, price: float, images: int) -> str:
    """`balance $12.40 covers 196 of 240 images ($15.12)`, or `covers all 240 images`."""
    shown = "unlimited" if math.isinf(balance) else f"${balance:,.2f}"
    cost = f"${images * price:,.2f}"
    if images == 0:
        return f"balance {shown}; nothing to run"
    paid = covers(balance, price, images)
    noun = "image" if images == 1 else "images"
    if paid >= images:
        return f"balance {shown} covers all {images:,} {noun} ({cost})"
    return f"balance {shown} covers {paid:,} of {images:,} {noun} ({cost})"
