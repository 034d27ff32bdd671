"""The one module that talks HTTP: one aiohttp session, one POST per attempt.

It turns every outcome into either an `Answer` (a whole image) or an `ApiError`;
what to do about an error is `retry.verdict`'s business, not this module's.

What it guarantees on the wire:
- the key goes to the API only: redirects are never followed (a 3xx is an error
  naming the status and the host it pointed at);
- an `Answer` is a whole image: the body is read in chunks up to
  `retry.MAX_RESPONSE_BYTES`, its Content-Length honoured, and its end checked
  (`api.image_problem`); anything less after a 200 is a `BadAnswerError`, billed;
- a request that went out on a kept-alive connection the server had already closed,
  and failed within a round trip, before any byte of an answer, is told apart
  (`TransportError.stale`) from one that reached the service and lost its answer
  (`sent`: possibly billed).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import select
import time
import weakref
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from batchgen import api, refusals, retry
from batchgen.errors import AnswerProblem, ApiStatusError, BadAnswerError, TransportError

log = logging.getLogger("batchgen")

USER_AGENT: Final = "batchgen"
READ_CHUNK: Final = 256 * 1024
ERROR_BODY_BYTES: Final = 64 * 1024  # of a non-200 body: enough for its message
_DEAD_SOCKET: Final = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED})


@dataclass(frozen=True, slots=True)
class Answer:
    body: bytes
    format: str  # 'jpeg' | 'png' | 'webp', by the bytes
    headers: Mapping[str, str]  # the contract's response headers that were present
    request_id: str | None = None  # the service's id, when it gave one (v2)
    cost: float | None = None  # what the service said it charged (x-cost; v2's metrics.cost)


def charged(value: object) -> float | None:
    """What the service says a request cost (USD: Segmind's credits are dollars), when it
    says it as a number: the money in the ledger is the money the service charged, and
    the manifest's price only stands in when the answer does not say."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        cost = float(value)
    except ValueError:
        return None
    return cost if math.isfinite(cost) and cost >= 0 else None


class _Connector(aiohttp.TCPConnector):
    """Before a kept-alive connection is used again, a look (nothing is read) at whether
    the server closed it while it sat idle, as urllib3 does: the server's FIN may be
    waiting unread. An idle connection with anything to read is dropped and another one
    taken, so the request is not written into a dead socket at all."""

    def __init__(self, *, limit: int) -> None:
        super().__init__(limit=limit, limit_per_host=limit)
        self._used: weakref.WeakSet[ResponseHandler] = weakref.WeakSet()

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's own signature)
    ) -> Connection:
        for _ in range(2 * self.limit + 1):
            conn = await super().connect(req, traces, timeout)
            protocol = conn.protocol
            if protocol is None or protocol not in self._used:
                if protocol is not None:
                    self._used.add(protocol)
                return conn
            if not _idle_socket_readable(conn):
                attempt = _ATTEMPT.get()
                if attempt is not None:
                    attempt.reused = True
                    attempt.reused_at = time.monotonic()
                return conn
            conn.close()  # the server gave up on it; the next one is checked too
        return conn  # every one looked closed: send anyway, the answer will tell


def _idle_socket_readable(conn: Connection) -> bool:
    transport = conn.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    try:
        fd = sock.fileno()
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class _Attempt:
    """What the connector found for one request: a kept-alive connection used before
    (`reused`, handed out at `reused_at`), or a new one. Set through `_ATTEMPT` (a context
    variable: the connector runs in the sending task), which costs less than aiohttp's
    tracing signals."""

    __slots__ = ("reused", "reused_at")

    def __init__(self) -> None:
        self.reused = False
        self.reused_at = 0.0

    def closed_before_sent(self, err: BaseException) -> bool:
        """The request went out on a kept-alive connection the server had already closed.

        The server's close raced our request: it was on the wire before the request
        reached the server, so it arrives within one round trip of the send. A
        connection that dies later, with no byte of answer, had its request read and
        maybe worked on (a proxy's idle timeout cutting an 11 s generation looks just
        like this): that one may have been billed, however it failed."""
        return (
            self.reused
            and time.monotonic() - self.reused_at < retry.STALE_WINDOW_S
            and _dead_before_answer(err)
        )


_ATTEMPT: ContextVar[_Attempt | None] = ContextVar("batchgen_attempt", default=None)


def make_session(
    concurrency: int, *, timeout: float = retry.REQUEST_TIMEOUT_S
) -> aiohttp.ClientSession:
    """One session for the whole run, its connection pool sized to the worker pool."""
    return aiohttp.ClientSession(
        connector=_Connector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=timeout, connect=retry.CONNECT_TIMEOUT_S),
        headers={"User-Agent": USER_AGENT},
    )


class Client:
    def __init__(self, session: aiohttp.ClientSession, *, api_base: str, api_key: str) -> None:
        self._session = session
        self._fresh: aiohttp.ClientSession | None = None  # no keep-alive: for resends
        self._base = api_base.rstrip("/")
        self._key = api_key
        self._headers = {"x-api-key": api_key, "Content-Type": "application/json"}

    async def generate(self, model: str, body: bytes, *, fresh: bool = False) -> Answer:
        """POST one request. Raises ApiStatusError (BadAnswerError for a 200 that is not
        a whole image) or TransportError; no message ever holds the key.

        `fresh` sends it on a new connection: after a kept-alive connection was found
        dead, the next one from the pool may be closing too (a server that drops every
        idle connection), and a resend must not meet the same fate again and again."""
        try:
            return await self._generate(self._session_for(fresh), f"{self._base}/{model}", body)
        except ApiStatusError as err:
            raise self._scrubbed(err) from None

    def _session_for(self, fresh: bool) -> aiohttp.ClientSession:
        if not fresh:
            return self._session
        if self._fresh is None:
            self._fresh = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                timeout=self._session.timeout,
                headers={"User-Agent": USER_AGENT},
            )
        return self._fresh

    def _scrubbed(self, err: ApiStatusError) -> ApiStatusError:
        """The error, its message never holding the key."""
        if self._key and self._key in err.message:
            err.message = err.message.replace(self._key, "[the API key]")
            err.args = (f"HTTP {err.status}: {err.message}",)
        return err

    async def aclose(self) -> None:
        """Close what the client opened of its own (the session is the caller's)."""
        if self._fresh is not None:
            await self._fresh.close()

    async def _generate(self, session: aiohttp.ClientSession, url: str, body: bytes) -> Answer:
        began = time.monotonic()
        response = await self._send(session, url, body)
        async with response:
            status = response.status
            if log.isEnabledFor(logging.DEBUG):  # -vv; the URL never holds the key
                log.debug("POST %s: HTTP %d after %.2f s (%s)", url, status,
                          time.monotonic() - began,
                          response.headers.get("x-request-id", "no request id"))  # fmt: skip
            if status != 200:
                raise await self._refusal(response)
            headers = {name: response.headers[name] for name in api.RESPONSE_HEADERS
                       if name in response.headers}  # fmt: skip
            try:
                payload = await _read_image(response)
            except BadAnswerError as err:
                err.request_id = headers.get("x-request-id")
                err.cost = charged(headers.get("x-cost"))
                raise
        return Answer(payload, _kind(payload), headers, cost=charged(headers.get("x-cost")))

    async def _send(
        self, session: aiohttp.ClientSession, url: str, body: bytes
    ) -> aiohttp.ClientResponse:
        """POST `body` with the key, never following a redirect; every failure before an
        answer's status line is a TransportError saying whether it may have been sent."""
        attempt = _Attempt()
        token = _ATTEMPT.set(attempt)
        try:
            response = await session.post(
                url,
                data=body,
                headers=self._headers,
                allow_redirects=False,  # the key must not follow a Location anywhere
            )
        except aiohttp.ConnectionTimeoutError:
            raise TransportError(
                f"cannot connect to {self._base}: timed out", sent=False, reason="connect timed out"
            ) from None
        except TimeoutError:
            raise TransportError(
                "timed out waiting for the service", sent=True, reason="timed out"
            ) from None
        except aiohttp.ClientConnectorError as err:
            raise TransportError(
                f"cannot connect to {self._base}: {err.os_error}",
                sent=False,
                reason=_connect_reason(err.os_error),
            ) from None
        except (aiohttp.ClientError, asyncio.IncompleteReadError) as err:
            if attempt.closed_before_sent(err):
                raise TransportError(
                    "the kept-alive connection was already closed by the server "
                    f"({_name(err)}); the request never reached it",
                    sent=False,
                    stale=True,
                ) from None
            raise TransportError(
                f"connection failed: {_name(err)}", sent=True, reason="connection lost"
            ) from None
        finally:
            _ATTEMPT.reset(token)
        return response

    async def _refusal(self, response: aiohttp.ClientResponse) -> ApiStatusError:
        status = response.status
        if 300 <= status < 400:
            location = response.headers.get("Location", "")
            return ApiStatusError(
                status, refusals.endpoint_redirect(status, response.url, location)
            )
        payload = bytearray()
        try:
            while len(payload) < ERROR_BODY_BYTES and (
                chunk := await response.content.read(ERROR_BODY_BYTES - len(payload))
            ):
                payload += chunk
        except (aiohttp.ClientError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the status is what matters; the message is a courtesy
        return ApiStatusError.from_response(status, bytes(payload), dict(response.headers))


async def _read_image(response: aiohttp.ClientResponse) -> bytes:
    """The whole body of a 200, in chunks, never more than the cap. Every way this can
    fail is a BadAnswerError: the service answered 200, so it billed."""
    cap = retry.MAX_RESPONSE_BYTES
    declared = response.content_length
    if declared is not None and declared > cap:
        raise BadAnswerError(
            AnswerProblem.TOO_LARGE, f"the answer is {declared:,} bytes; the cap is {cap:,}"
        )
    data = bytearray()
    try:
        while chunk := await response.content.read(READ_CHUNK):
            data += chunk
            if len(data) > cap:
                raise BadAnswerError(
                    AnswerProblem.TOO_LARGE,
                    f"the answer went past the cap of {cap:,} bytes; stopped reading",
                )
    except TimeoutError:
        raise BadAnswerError(
            AnswerProblem.TRUNCATED, f"timed out reading the image after {len(data):,} bytes"
        ) from None
    except (aiohttp.ClientError, asyncio.IncompleteReadError) as err:
        raise BadAnswerError(
            AnswerProblem.TRUNCATED,
            f"the image was cut off after {len(data):,} bytes ({_name(err)})",
        ) from None
    if declared is not None and len(data) != declared:
        raise BadAnswerError(
            AnswerProblem.TRUNCATED, f"the answer is {len(data):,} of {declared:,} bytes"
        )
    payload = bytes(data)
    problem = api.image_problem(payload)
    if problem is not None:
        kind = (
            AnswerProblem.NOT_IMAGE if api.sniff_image(payload) is None else AnswerProblem.TRUNCATED
        )
        raise BadAnswerError(kind, problem)
    return payload


def _kind(payload: bytes) -> str:
    kind = api.sniff_image(payload)
    assert kind is not None  # _read_image checked it
    return kind


def _dead_before_answer(err: BaseException) -> bool:
    """The connection failed before any byte of an answer, the way a connection the
    server had already closed does (aiohttp resends idempotent requests on exactly these)."""
    if isinstance(err, aiohttp.ClientConnectionResetError):
        return True  # the transport was closing before our request was written
    if isinstance(err, aiohttp.ServerDisconnectedError):
        return isinstance(err.message, str)  # no partial status line or headers
    if isinstance(err, aiohttp.ClientOSError):
        return err.errno in _DEAD_SOCKET
    return False


def _connect_reason(error: OSError) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    return f"cannot connect: {error.strerror or type(error).__name__}"


def _name(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
