"""A real S3 protocol on loopback for tests and benchmarks: moto's server, and a small
proxy in front of it that counts requests and can answer 5xx for a while."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_MAX_ATTEMPTS": "1",  # botocore's own retries off: batchgen's are what is tested
}


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 in a thread of this process on a free loopback port; its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextmanager
def restored_environ(*names: str) -> Iterator[None]:
    """Whatever the block does to these environment variables is undone after it."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def aws_env(endpoint: str) -> Iterator[dict[str, str]]:
    """AWS_* pointing at `endpoint` for this process (and what to give a child)."""
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    with restored_environ(*env):
        os.environ.update(env)
        yield env


def make_bucket(endpoint: str, name: str | None = None) -> str:
    import boto3

    name = name or f"b-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=endpoint, **_boto_kwargs())
    client.create_bucket(Bucket=name)
    return name


def objects(endpoint: str, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object under a prefix: key -> bytes (through boto3, not batchgen)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **_boto_kwargs())
    found: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def _boto_kwargs() -> dict[str, str]:
    return {
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "region_name": "us-east-1",
    }


@dataclass
class Fault:
    """Answer `status` to requests of `method` whose path contains `match`, `times` times
    (None: until cleared)."""

    method: str
    match: str
    status: int = 503
    times: int | None = None


@dataclass
class Proxy:
    """A loopback proxy in front of an S3 endpoint, in a thread of its own: counts every
    request (method, and whether it was a ledger segment) and injects faults."""

    upstream: str
    url: str = ""
    counts: Counter[str] = field(default_factory=Counter)
    faults: list[Fault] = field(default_factory=list)
    injected: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.method == method and fault.match in path:
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self.faults.remove(fault)
                    self.injected += 1
                    return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/_proxy/counts":
            with self._lock:
                return web.json_response(dict(self.counts))
        body = await request.read()
        kind = request.method
        if kind == "PUT" and ".jsonl.d/" in request.path:
            kind = "PUT segment"
        elif kind == "PUT" and request.path.endswith(".lease"):
            kind = "PUT lease"
        elif kind == "GET" and "list-type" in request.query_string:
            kind = "LIST"
        with self._lock:
            self.counts[kind] += 1
        fault = self._fault(request.method, request.path)
        if fault is not None:
            xml = (
                "<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable</Code>"
                "<Message>injected by the test proxy</Message></Error>"
            )
            return web.Response(status=fault.status, text=xml, content_type="application/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        assert self._session is not None
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers,
            allow_redirects=False,
        ) as answer:  # fmt: skip
            data = await answer.read()
            drop = ("content-length", "transfer-encoding", "content-encoding", "connection")
            out = {k: v for k, v in answer.headers.items() if k.lower() not in drop}
            return web.Response(status=answer.status, body=data, headers=out)

    _session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def up() -> web.AppRunner:
                self._session = aiohttp.ClientSession(auto_decompress=False)
                app = web.Application(client_max_size=1 << 30)
                app.router.add_route("*", "/{tail:.*}", self._handle)
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                self.url = f"http://127.0.0.1:{port}"
                return runner

            runner = loop.run_until_complete(up())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            assert self._session is not None
            loop.run_until_complete(self._session.close())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait()

    def stop(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()


@contextmanager
def proxy(upstream: str) -> Iterator[Proxy]:
    served = Proxy(upstream)
    served.start()
    try:
        yield served
    finally:
        served.stop()


def main(argv: list[str]) -> int:
    """`python -m tests.s3server proxy UPSTREAM`: a counting proxy in a process of its own
    (benchmarks: no GIL shared with what it measures); prints its URL, serves its counts
    at GET /_proxy/counts, runs until stdin closes."""
    import sys

    if argv[:1] != ["proxy"] or len(argv) != 2:
        print("usage: python -m tests.s3server proxy UPSTREAM", file=sys.stderr)
        return 2
    with proxy(argv[1]) as served:
        print(served.url, flush=True)
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
