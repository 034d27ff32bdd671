"""Small hostile servers on 127.0.0.1 for the wire tests: each misbehaves in one way the
real service, a proxy or a network could, and counts what it received.

`raw_server` is a bare asyncio socket server, for what aiohttp's own server will not do
(no Content-Length and a cut, silent closes of kept-alive connections); `web_server`
serves an aiohttp.web handler through aiohttp.test_utils.TestServer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

import batchgen
from tests.helpers import image_bytes
from tests.runs import FakeSleep

KEY = "sk-hostile-test-key-0123456789"  # what the runs send; must never be written down
JPEG = image_bytes("JPEG", size=(64, 48), colour=90)  # a whole, real image


@dataclass
class Seen:
    """What a server received: requests read whole, the keys they carried, connections."""

    requests: int = 0
    keys: list[str] = field(default_factory=list)
    connections: int = 0
    answered: int = 0


@dataclass
class Request:
    head: bytes
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode()
        return None


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One HTTP/1.1 request with a Content-Length body; None at a clean end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    request = Request(head, b"")
    length = int(request.header("content-length") or 0)
    request.body = await reader.readexactly(length)
    return request


def response(status: str, body: bytes, *headers: str, length: bool = True) -> bytes:
    lines = [f"HTTP/1.1 {status}", *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


Connection = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Seen], Awaitable[None]]


@asynccontextmanager
async def raw_server(handle: Connection) -> AsyncIterator[tuple[str, Seen]]:
    """Serve `handle` (one call per connection) on a free port; yields (api_base, seen)."""
    seen = Seen()
    tasks: set[asyncio.Task[None]] = set()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handle(reader, writer, seen)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        server.close()
        if tasks:  # the client has closed its connections: let the handlers see it
            await asyncio.wait(list(tasks), timeout=5)
        for task in list(tasks):
            task.cancel()
        await server.wait_closed()


Handler = Callable[[web.Request, Seen], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def web_server(handle: Handler) -> AsyncIterator[tuple[str, Seen]]:
    """Serve an aiohttp.web handler for every path; yields (api_base, seen)."""
    seen = Seen()

    async def counted(request: web.Request) -> web.StreamResponse:
        await request.read()
        seen.requests += 1
        seen.keys.append(request.headers.get("x-api-key", ""))
        return await handle(request, seen)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", counted)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/v1")), seen
    finally:
        await server.close()


class AndClose(bytes):
    """A raw answer after which the server drops the connection (b"": it answers nothing)."""


def scripted(*answers: bytes) -> Connection:
    """A keep-alive server that sends the given raw answers, one per request, then whole
    JPEGs. It drops the connection after an `AndClose` answer, and after one without
    Content-Length (its body ends where the connection does)."""

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen
    ) -> None:
        while (request := await read_request(reader)) is not None:
            seen.requests += 1
            seen.keys.append(request.header("x-api-key") or "")
            n = seen.requests - 1
            answer = answers[n] if n < len(answers) else response("200 OK", JPEG)
            writer.write(answer)
            await writer.drain()
            seen.answered += 1
            head = answer.split(b"\r\n\r\n", 1)[0].lower()
            if isinstance(answer, AndClose) or b"content-length" not in head:
                return

    return handle


async def run_against(
    api_base: str,
    manifest_path: Path,
    out: Path,
    *,
    sleep: FakeSleep | None = None,
    request_timeout: float = 30.0,
    handle_signals: bool = False,
    reconcile: bool = False,
    **options: Any,
) -> batchgen.RunResult:
    """A whole run through the library, as `tests.runs.run` makes it, against any
    api_base, with KEY; without settlement unless asked (these servers keep no request
    history: the wire's own behaviour is under test)."""
    seams: dict[str, Any] = {"sleep": sleep, "clock": sleep.clock} if sleep is not None else {}
    return await batchgen.run_async(
        manifest_path, out=out, api_base=api_base, api_key=KEY, timeout=request_timeout,
        handle_signals=handle_signals, reconcile=reconcile,
        **options, **seams,
    )  # fmt: skip


@dataclass
class Forwarded:
    """What the real server answered a request a proxy passed on."""

    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]  # its `x-` headers (request id, cost, ...)

    def response(self, body: bytes | None = None) -> web.Response:
        """The answer as the proxy's own (`body` in place of the real one)."""
        return web.Response(status=self.status, body=self.body if body is None else body,
                            headers=self.headers, content_type=self.content_type)  # fmt: skip


async def forward(session: aiohttp.ClientSession, request: web.Request, origin: str) -> Forwarded:
    """`request` passed on to `origin` (its path and query, its key and content type;
    no redirect followed), for test proxies that change what goes through them."""
    headers = {k: v for k, v in request.headers.items()
               if k.lower() in ("x-api-key", "content-type")}  # fmt: skip
    async with session.request(request.method, origin + request.path_qs,
                               data=await request.read(), headers=headers,
                               allow_redirects=False) as answer:  # fmt: skip
        kept = {k: v for k, v in answer.headers.items() if k.lower().startswith("x-")}
        return Forwarded(answer.status, await answer.read(), answer.content_type, kept)
