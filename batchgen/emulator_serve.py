"""Serving the emulator: on a loopback port in-process (demo, tests), or as a command
(`batchgen emulator`, `python -m batchgen.emulator_serve`). The service itself,
its rules and its misbehaviour, is in `emulator.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from batchgen.argtypes import fraction, non_negative, number, positive
from batchgen.emulator import (
    CONFIG,
    DEMO_KEY,
    SCRIPTABLE,
    SHUTDOWN_TIMEOUT_S,
    STATS,
    EmulatorConfig,
    EmulatorStats,
    make_app,
)


@dataclass(frozen=True, slots=True)
class RunningEmulator:
    """A served emulator: `url` is the api_base to give a client (it ends in /v1)."""

    url: str
    app: web.Application

    @property
    def stats(self) -> EmulatorStats:
        return self.app[STATS]

    @property
    def api_key(self) -> str:
        return self.app[CONFIG].api_key


@contextlib.asynccontextmanager
async def running_emulator(
    config: EmulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningEmulator]:
    """Serve the emulator on `host:port` (0 = a free port) for the duration of the block."""
    app = make_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        yield RunningEmulator(url=f"http://{shown}:{bound_port}/v1", app=app)
    finally:
        await runner.cleanup()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options of `batchgen emulator` (and `-m batchgen.emulator_serve`)."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    add("--port", type=int, default=8000, help="port to bind; 0 picks a free one (default 8000)")
    add("--key", default=DEMO_KEY, help=f"the API key to accept (default {DEMO_KEY})")
    add(
        "--latency",
        type=non_negative,
        default=0.0,
        help="mean seconds per image (default 0)",
    )
    add(
        "--latency-jitter",
        type=fraction,
        default=0.2,
        help="relative spread (default 0.2)",
    )
    add("--rpm", type=positive, default=None, help="rate limit, requests per minute")
    add("--burst", type=int, default=2, help="rate-limit bucket size (default 2)")
    add("--retry-after", action="store_true", help="send Retry-After on 429 (Segmind does not)")
    add("--max-in-flight", type=int, default=None, help="concurrency cap; over it answers 429")
    for status in (500, 502, 504):
        add(
            f"--fail-{status}",
            type=fraction,
            default=0.0,
            help=f"probability of a {status}",
        )
    add("--billed-504-share", type=fraction, default=0.5, help="share of 504s billed")
    add("--credits", type=non_negative, default=None, help="starting balance in USD")
    add("--script", type=_script, default=(), help="statuses for the next requests: 502,504,200")
    add("--seed", type=int, default=0, help="seed for every random draw (default 0)")
    add("--image-scale", type=_scale, default=1.0, help="draw images at resolution*scale")
    add("--format", choices=("jpeg", "png"), default="jpeg", help="output format")


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """An EmulatorConfig from options added by `add_arguments`. Raises ValueError."""
    return EmulatorConfig(
        api_key=args.key,
        latency=args.latency,
        latency_jitter=args.latency_jitter,
        rate_limit_rpm=args.rpm,
        rate_burst=args.burst,
        retry_after=args.retry_after,
        max_in_flight=args.max_in_flight,
        fault_500=args.fail_500,
        fault_502=args.fail_502,
        fault_504=args.fail_504,
        billed_504_share=args.billed_504_share,
        credits=args.credits,
        script=tuple(args.script),
        seed=args.seed,
        image_scale=args.image_scale,
        output_format=args.format,
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM. 0 on a clean stop, 2 for a bad option, 1 if binding fails."""
    try:
        config = config_from_args(args)
    except ValueError as err:
        print(f"batchgen emulator: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(config, args.host, args.port))
    except OSError as err:  # the port is taken, or the host is not ours
        print(
            f"batchgen emulator: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr
        )
        return 1
    return 0


async def _serve(config: EmulatorConfig, host: str, port: int) -> None:
    """Serve until a signal; then, once requests in flight are done, print the final
    /_stats as one JSON line (`{"final_stats": ...}`) on stdout."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with running_emulator(config, host, port) as emulator:
            print(f"batchgen emulator serving {emulator.url} (Ctrl-C stops it); use:", flush=True)
            print(f"SEGMIND_API_BASE={emulator.url} SEGMIND_API_KEY={config.api_key}", flush=True)
            await stop.wait()
        # requests in flight have finished: who paid for what, for whoever stopped it
        print(json.dumps({"final_stats": emulator.stats.as_json()}), flush=True)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _scale(text: str) -> float:
    return number(text, float, lambda v: 0 < v <= 1, "in (0, 1], e.g. 0.03125")


def _script(text: str) -> tuple[int, ...]:
    try:
        statuses = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use comma-separated statuses") from None
    unknown = sorted(set(statuses) - SCRIPTABLE)
    if unknown:
        raise argparse.ArgumentTypeError(f"cannot script {unknown}; use {sorted(SCRIPTABLE)}")
    return statuses


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m batchgen.emulator_serve [options]`: the emulator on its own."""
    parser = argparse.ArgumentParser(prog="python -m batchgen.emulator_serve", description=__doc__)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())


@dataclass
class EmulatorProcess:
    """`batchgen emulator` running in a process of its own (benchmarks, crash tests)."""

    url: str
    key: str
    process: subprocess.Popen[str]

    def stats(self) -> dict[str, Any]:
        """The emulator's /_stats: who paid for what."""
        with urllib.request.urlopen(self.url.removesuffix("/v1") + "/_stats", timeout=30) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data


@contextlib.contextmanager
def emulator_process(*options: str, key: str = DEMO_KEY) -> Iterator[EmulatorProcess]:
    """Start `batchgen emulator --port 0 OPTIONS` on loopback; stop it afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "emulator", "--port", "0", "--key", key, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()  # "batchgen emulator serving ..."
        url = process.stdout.readline().split()[0].split("=", 1)[1]  # SEGMIND_API_BASE=...
        yield EmulatorProcess(url, key, process)
    finally:
        process.terminate()
        process.communicate(timeout=30)
