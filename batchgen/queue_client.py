"""The v2 queue (`--api v2`): submit, make the request id durable, poll, fetch, download.

    POST {v2_base}/{model}            the v1 body -> {"request_id", "status": "QUEUED", ...}
    GET  {v2_base}/requests/{id}      QUEUED | PROCESSING (as the status URL), then COMPLETED
                                      with `output` (a URL, or a list of them) and `metrics`;
                                      422 {"status": "FAILED", "error"}; 404 unknown/expired
    GET  {output}                     the image: public, fetched WITHOUT the key

The v2 base is the API base with its trailing `/v1` replaced by `/v2`, as the vendor SDK
derives it. The poll and result URLs are built from that base, never taken from the answer:
the key goes to the API's host only.

Why it is crash-safe: the submit answers at once with the request's id, and the caller's
`on_submitted` makes it durable (a `submitted` line, fsync'd) before the first poll. A run
killed while its requests are queued loses nothing: the resume polls the recorded ids and
downloads what completed (`settle.Settler.collect_queued`), before anything is sent.

Polling is polite and free (not billed, no rate-limit token): the first poll waits about the
model's typical latency after the submission (`typical_latency`, then what this run has seen:
the 75th percentile of the last completions' `metrics.total_time`), then every 1-2 s with
jitter. It asks the result URL directly: before completion that answers as the status URL
does (the contract), so a finished request costs one GET instead of a status GET and a
result GET. Polls never count as requests; only submissions take the pacer's turn.

After the submit, every failure is either the request's own outcome (FAILED: an
ApiStatusError 422, not billed, the job fails for good; a COMPLETED whose image cannot be
had: a BadAnswerError, billed) or `QueuedRequestLost` (possibly billed, settled by its id:
the record expired, or the polls kept failing past `LOST_AFTER_S`).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from batchgen import api, history, retry
from batchgen.client import ERROR_BODY_BYTES, Answer, Client, charged
from batchgen.errors import (
    AnswerProblem,
    ApiStatusError,
    BadAnswerError,
    QueuedRequestLost,
    TransportError,
)

POLL_MIN_S: Final = 1.0  # after the first poll: every 1-2 s, jittered
POLL_MAX_S: Final = 2.0
POLL_BACKOFF_CAP_S: Final = 30.0  # between polls that fail (429, 5xx, connection errors)
LOST_AFTER_S: Final = 300.0  # polls failing this long: the request is left to settlement
GIVE_UP_AFTER_S: Final = 3000.0  # records live an hour after submission; settle after this
LATENCY_QUANTILE: Final = 0.75  # the first poll waits this quantile of recent completions
LATENCY_SAMPLES: Final = 64
LATENCY_MIN_SAMPLES: Final = 3
DOWNLOAD_TRIES: Final = 3  # the output is free to fetch again; the image was billed
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

Sleep = Callable[[float], Awaitable[None]]
OnSubmitted = Callable[[str], Awaitable[None]]


def v2_base(api_base: str) -> str | None:
    """`https://api.segmind.com/v1` -> `https://api.segmind.com/v2`; None when the base
    does not end in `/v1` (there is then no v2 base to derive)."""
    base = api_base.strip().rstrip("/")
    return base.removesuffix("/v1") + "/v2" if base.endswith("/v1") else None


def valid_request_id(value: object) -> str | None:
    """The id when it is one we may put in a URL path, else None."""
    return value if isinstance(value, str) and _REQUEST_ID.fullmatch(value) else None


@dataclass(frozen=True, slots=True)
class Poll:
    """One look at a request. `state`: QUEUED, PROCESSING, COMPLETED, FAILED, GONE (404:
    unknown or expired) or ERROR (no usable answer: `transient` when worth asking again)."""

    state: str
    output: str | None = None
    cost: float | None = None
    remaining_credits: float | None = None
    seed: int | None = None
    total_time: float | None = None
    error: str | None = None
    transient: bool = False
    retry_after: float | None = None


def output_url(value: object) -> str | None:
    """The `output` of a result: a URL, or a list whose first item is one."""
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) and api.is_url(value) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_result(status: int, data: object) -> Poll:
    """A result (or status) answer as a Poll."""
    body: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
    state = str(body.get("status") or "").upper()
    if status == 422 or state == "FAILED":
        error = body.get("error") or body.get("message")
        return Poll("FAILED", error=str(error) if error else "the request FAILED")
    if status != 200:
        return Poll("ERROR", error=f"HTTP {status}", transient=True)
    if state != "COMPLETED":
        return Poll(state or "QUEUED")
    found = body.get("metrics")
    metrics: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    url = output_url(body.get("output")) or output_url(body.get("images"))
    seed = body.get("seed")
    return Poll(
        "COMPLETED",
        output=url,
        cost=charged(metrics.get("cost")),
        remaining_credits=_number(metrics.get("remaining_credits")),
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        total_time=_number(metrics.get("total_time")),
    )


async def poll(
    session: aiohttp.ClientSession,
    base: str,
    key: str,
    request_id: str,
    *,
    timeout: aiohttp.ClientTimeout | None = None,  # noqa: ASYNC109 (aiohttp's, per request)
) -> Poll:
    """GET the request's result URL once (with the key, never following a redirect)."""
    url = f"{base}/requests/{request_id}"
    try:
        async with session.get(
            url,
            headers={"x-api-key": key, "Accept": "application/json"},
            allow_redirects=False,  # the key goes to the API's host only
            timeout=timeout or session.timeout,
        ) as response:
            status = response.status
            if status == 404:
                return Poll("GONE", error="the request is unknown or its record has expired")
            if status == 429 or status >= 500:
                wait, _ = retry.server_wait(dict(response.headers))
                return Poll("ERROR", error=f"HTTP {status}", transient=True, retry_after=wait)
            if status not in (200, 422):
                return Poll("ERROR", error=f"HTTP {status}", transient=False)
            raw = await response.content.read(ERROR_BODY_BYTES)
    except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as err:
        return Poll("ERROR", error=f"cannot poll: {type(err).__name__}", transient=True)
    try:
        data = json.loads(raw)
    except ValueError:
        return Poll("ERROR", error="the poll answered something that is not JSON", transient=True)
    return parse_result(status, data)


class QueueClient(Client):
    """The v2 client: `generate` submits, hands the request id to `on_submitted` (which
    makes it durable), polls politely and returns the downloaded image as an `Answer`
    (with the request id and `metrics.cost`). The same errors as the v1 client for the
    submit; afterwards FAILED (422), BadAnswerError (billed) or QueuedRequestLost."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_base: str,
        api_key: str,
        typical_latency: float = api.TYPICAL_LATENCY_S,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(session, api_base=api_base, api_key=api_key)
        base = v2_base(api_base)
        if base is None:
            raise ValueError(f"no v2 base can be derived from {api_base!r} (it must end in /v1)")
        self.v2_base = base
        self.typical_latency = typical_latency
        self._sleep, self._clock = sleep, clock
        self._rng = rng or random.Random()
        self._seen: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.polls = 0  # GETs of result URLs: free, never billed, never a rate-limit token
        self.submits = 0

    @property
    def first_poll_after(self) -> float:
        """How long after its submission a request is first polled."""
        if len(self._seen) < LATENCY_MIN_SAMPLES:
            return self.typical_latency
        ordered = sorted(self._seen)
        return ordered[min(len(ordered) - 1, int(LATENCY_QUANTILE * len(ordered)))]

    async def generate(
        self,
        model: str,
        body: bytes,
        *,
        fresh: bool = False,
        on_submitted: OnSubmitted | None = None,
    ) -> Answer:
        request_id = await self.submit(model, body, fresh=fresh)
        submitted_at = self._clock()
        if on_submitted is not None:
            await on_submitted(request_id)  # durable before the first poll
        return await self.follow(request_id, submitted_at)

    async def submit(self, model: str, body: bytes, *, fresh: bool = False) -> str:
        """POST the request to the queue; its id. Raises as the v1 client does; a 200
        without a usable id is a TransportError that may have been billed."""
        self.submits += 1
        try:
            response = await self._send(self._session_for(fresh), f"{self.v2_base}/{model}", body)
            async with response:
                if response.status != 200:
                    raise await self._refusal(response)
                raw = await response.content.read(ERROR_BODY_BYTES)
        except ApiStatusError as err:
            raise self._scrubbed(err) from None
        except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as err:
            raise TransportError(
                f"the submission's answer was cut off ({type(err).__name__}); it may be queued",
                sent=True,
                reason="connection lost",
            ) from None
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        request_id = valid_request_id(data.get("request_id") if isinstance(data, dict) else None)
        if request_id is None:
            raise TransportError(
                "the submission was answered 200 without a usable request_id; it may be queued",
                sent=True,
                reason="unreadable submission answer",
            )
        return request_id

    async def follow(self, request_id: str, submitted_at: float) -> Answer:
        """Poll until the request ends; its image once COMPLETED."""
        wait = max(0.0, self.first_poll_after - (self._clock() - submitted_at))
        failing_since: float | None = None
        failures = 0
        while True:
            await self._sleep(wait)
            result = await poll(self._session, self.v2_base, self._key, request_id)
            self.polls += 1
            now = self._clock()
            if result.state == "COMPLETED":
                break
            if result.state == "FAILED":
                raise self._scrubbed(ApiStatusError(422, result.error or "the request FAILED"))
            if result.state == "GONE":
                raise self._lost(request_id, result.error)
            if now - submitted_at > GIVE_UP_AFTER_S:
                raise self._lost(request_id, "it did not finish before its record would expire")
            if result.state == "ERROR":
                failures += 1
                failing_since = now if failing_since is None else failing_since
                if not result.transient or now - failing_since > LOST_AFTER_S:
                    raise self._lost(request_id, result.error)
                ceiling = min(POLL_BACKOFF_CAP_S, POLL_MIN_S * 2.0**failures)
                wait = result.retry_after or self._rng.uniform(POLL_MIN_S, ceiling)
                continue
            failures, failing_since = 0, None
            wait = self._rng.uniform(POLL_MIN_S, POLL_MAX_S)
        total = result.total_time if result.total_time and result.total_time > 0 else None
        self._seen.append(total if total is not None else now - submitted_at)
        image = await self._download(request_id, result)
        headers = {"x-request-id": request_id}
        if result.remaining_credits is not None:
            headers["x-remaining-credits"] = f"{result.remaining_credits:g}"
        if result.seed is not None:
            headers["x-seed-value"] = str(result.seed)
        kind = api.sniff_image(image)
        assert kind is not None  # download checked it
        return Answer(image, kind, headers, request_id=request_id, cost=result.cost)

    async def _download(self, request_id: str, result: Poll) -> bytes:
        """The output image, without the key; it was billed, so a failed fetch is tried
        again (free) before it becomes a BadAnswerError."""
        if result.output is None:
            raise BadAnswerError(
                AnswerProblem.NOT_IMAGE,
                f"request {request_id} COMPLETED without an output image URL",
            )
        problem = ""
        for attempt in range(1, DOWNLOAD_TRIES + 1):
            try:
                return await history.download(self._session, result.output)
            except history.DownloadError as err:
                problem = str(err)
            if attempt < DOWNLOAD_TRIES:
                await self._sleep(self._rng.uniform(POLL_MIN_S, POLL_MAX_S))
        kind = AnswerProblem.NOT_IMAGE if "not an image" in problem else AnswerProblem.TRUNCATED
        error = BadAnswerError(kind, f"the output of request {request_id}: {problem}")
        error.request_id, error.cost = request_id, result.cost  # settled by its row, later
        raise error

    def _lost(self, request_id: str, why: str | None) -> QueuedRequestLost:
        text = f"lost track of queued request {request_id} ({why}); settled by its id"
        if self._key:
            text = text.replace(self._key, "[the API key]")
        return QueuedRequestLost(text, request_id=request_id)
