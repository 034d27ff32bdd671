"""The one module that talks HTTP: one aiohttp session, one POST per attempt.

It turns every outcome into either an `Answer` (an image) or an `ApiError`;
what to do about an error is `retry.classify`'s business, not this module's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp

from batchgen import api, retry
from batchgen.errors import ApiStatusError, TransportError

USER_AGENT: Final = "batchgen"


@dataclass(frozen=True, slots=True)
class Answer:
    body: bytes
    format: str  # 'jpeg' | 'png' | 'webp', by the bytes
    headers: Mapping[str, str]  # the contract's response headers that were present


def make_session(
    concurrency: int, *, timeout: float = retry.REQUEST_TIMEOUT_S
) -> aiohttp.ClientSession:
    """One session for the whole run, its connection pool sized to the worker pool."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency),
        timeout=aiohttp.ClientTimeout(total=timeout, connect=retry.CONNECT_TIMEOUT_S),
        headers={"User-Agent": USER_AGENT},
    )


class Client:
    def __init__(self, session: aiohttp.ClientSession, *, api_base: str, api_key: str) -> None:
        self._session = session
        self._base = api_base.rstrip("/")
        self._headers = {"x-api-key": api_key, "Content-Type": "application/json"}

    async def generate(self, model: str, body: bytes) -> Answer:
        """POST one request. Raises ApiStatusError or TransportError."""
        url = f"{self._base}/{model}"
        try:
            async with self._session.post(url, data=body, headers=self._headers) as response:
                payload = await response.read()
                status = response.status
                headers = {name: response.headers[name] for name in api.RESPONSE_HEADERS
                           if name in response.headers}  # fmt: skip
                raw_headers = dict(response.headers)
        except TimeoutError:
            raise TransportError("timed out waiting for the service", sent=True) from None
        except aiohttp.ClientConnectorError as err:
            raise TransportError(
                f"cannot connect to {self._base}: {err.os_error}", sent=False
            ) from None
        except (aiohttp.ClientError, asyncio.IncompleteReadError) as err:
            raise TransportError(f"connection failed: {type(err).__name__}", sent=True) from None
        if status != 200:
            raise ApiStatusError.from_response(status, payload, raw_headers)
        kind = api.sniff_image(payload)
        if kind is None:
            raise ApiStatusError(200, f"answer is not an image ({len(payload)} bytes)")
        return Answer(payload, kind, headers)
