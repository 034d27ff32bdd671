"""Target 7, upload once: the bytes a run sends for a 5 MB image used by 1,000 jobs, with and
without `--upload-images`, counted by a TCP proxy in front of the emulator (every byte the
client writes: request lines, headers and bodies, the upload call included).

Without the flag each request carries the image as 6.7 MB of base64; with it, the image is
uploaded once and each request carries its URL: about 1,000 times fewer bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from pathlib import Path

import batchgen
from bench.bench_images import noise_jpeg
from bench.common import KEY, emulator, machine, scratch, verdict

MIN_SHARE = 0.5  # of the ideal ratio, the jobs: headers and JSON of each request eat some


class CountingProxy:
    """Forwards loopback TCP to `target`, counting the bytes clients send."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sent = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        await asyncio.gather(
            self._pipe(reader, up_writer, count=True), self._pipe(up_reader, writer, count=False)
        )

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, count: bool
    ) -> None:
        try:
            while data := await src.read(1 << 18):
                if count:
                    self.sent += len(data)
                dst.write(data)
                await dst.drain()
        except ConnectionError:
            pass
        finally:
            with contextlib.suppress(ConnectionError, RuntimeError):
                dst.close()


async def measure(
    manifest: Path, folder: Path, emulator_url: str
) -> dict[str, tuple[int, float, int]]:
    """{"base64" | "upload": (bytes sent, seconds, images made)}."""
    host, _, port = emulator_url.removeprefix("http://").partition("/")[0].partition(":")
    figures = {}
    async with CountingProxy(host, int(port)) as proxy:
        for name, flag in (("base64", False), ("upload", True)):
            proxy.sent = 0
            began = time.perf_counter()
            result = await batchgen.run_async(
                manifest, out=folder / f"out-{name}", api_base=f"{proxy.url}/v1", api_key=KEY,
                concurrency=8, upload_images=flag,
            )  # fmt: skip
            figures[name] = (proxy.sent, time.perf_counter() - began, result.succeeded)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args(argv)
    print(f"bench_upload: {machine()}")
    with tempfile.TemporaryDirectory(dir=scratch()) as tmp:
        folder = Path(tmp)
        size = noise_jpeg(folder / "big" / "photo.jpg", 2080, 1, target_bytes=5_000_000)
        body = {"output": "{prompt}-{seed}.{ext}",
                "grid": {"image_file": ["big/photo.jpg"],
                         "prompt": [f"p{i}" for i in range(args.jobs // 10)],
                         "seed": list(range(101, 111))}}  # fmt: skip
        (folder / "big.yaml").write_text(json.dumps(body))
        with emulator("--image-scale", "0.01") as emu:
            figures = asyncio.run(measure(folder / "big.yaml", folder, emu.url))
            stats = emu.stats()
    plain, once = figures["base64"], figures["upload"]
    ratio = plain[0] / max(1, once[0])
    for name, (sent, seconds, made) in figures.items():
        print(f"  {name:<7} {sent / 1e6:>10,.1f} MB sent for {made:,} images in {seconds:.1f}s "
              f"({sent / max(1, made):,.0f} bytes an image)")  # fmt: skip
    print(f"  uploads {stats['uploads']} call(s), {stats['assets_uploaded']} asset(s)")
    ok = (
        plain[2] == once[2] == args.jobs
        and stats["assets_uploaded"] == 1
        and ratio >= MIN_SHARE * args.jobs
    )
    return verdict(ok, f"a {size / 1e6:.1f} MB image in {args.jobs:,} jobs: {plain[0] / 1e6:,.0f} MB "
                       f"sent as base64, {once[0] / 1e6:,.1f} MB with --upload-images: "
                       f"{ratio:,.0f}x fewer bytes")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
