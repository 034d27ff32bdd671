"""Serving the emulator: on a loopback port in-process (demo, tests), or as a command
(`batchgen emulator`, `python -m batchgen.emulator`). The service itself,
its rules and its misbehaviour, is in `service.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from aiohttp import web

from batchgen.argtypes import fraction, non_negative, number, positive
from batchgen.emulator.accounting import EmulatorStats
from batchgen.emulator.config import (
    DEMO_KEY,
    OUTPUT_TTL_S,
    RECORD_TTL_S,
    SCRIPTABLE,
    SHUTDOWN_TIMEOUT_S,
    EmulatorConfig,
)
from batchgen.emulator.service import make_app
from batchgen.emulator.state import CONFIG, STATS


@dataclass(frozen=True, slots=True)
class RunningEmulator:
    """A served emulator: `url` is the api_base to give a client (it ends in /v1); the request
    history and the asset storage are at its `root`."""

    url: str
    app: web.Application

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    @property
    def v2_url(self) -> str:
        return f"{self.root}/v2"

    @property
    def history_base(self) -> str:
        return self.root

    @property
    def storage_base(self) -> str:
        return self.root

    def environment(self) -> dict[str, str]:
        """The variables a client needs to use this emulator."""
        return {
            "SEGMIND_API_BASE": self.url,
            "SEGMIND_API_KEY": self.api_key,
            "SEGMIND_HISTORY_BASE": self.history_base,
            "SEGMIND_STORAGE_BASE": self.storage_base,
        }

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
    """The command-line options of `batchgen emulator` (and `python -m batchgen.emulator`)."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default: %(default)s, loopback)")
    add(
        "--port",
        type=int,
        default=8000,
        help="port to bind; 0 picks a free one (default %(default)s)",
    )
    add("--key", default=DEMO_KEY, help="the API key to accept (default %(default)s)")
    add(
        "--latency",
        type=non_negative,
        default=0.0,
        help="mean seconds per image (default %(default)s)",
    )
    add(
        "--latency-jitter", type=fraction, default=0.2, help="relative spread (default %(default)s)"
    )
    add(
        "--rpm", type=positive, default=None, help="rate limit, requests per minute (default: none)"
    )
    add("--burst", type=int, default=2, help="rate-limit bucket size (default %(default)s)")
    add("--retry-after", action="store_true", help="send Retry-After on 429 (Segmind does not)")
    add(
        "--max-in-flight",
        type=int,
        default=None,
        help="images at once; over it v1 answers 429 and v2 waits QUEUED (default: no cap)",
    )
    for status in (500, 502, 504):
        add(
            f"--fail-{status}",
            type=fraction,
            default=0.0,
            help=f"probability of a v1 {status} (default %(default)s)",
        )
    add(
        "--fail-cut",
        type=fraction,
        default=0.0,
        help="share of 200s cut off halfway, the connection dropped; billed (default %(default)s)",
    )
    add(
        "--billed-504-share",
        type=fraction,
        default=0.5,
        help="share of 504s whose image was made and billed (default %(default)s)",
    )
    add(
        "--no-fault-request-id",
        dest="fault_request_id",
        action="store_false",
        help="5xx answers carry no x-request-id: find the history row by its body",
    )
    add(
        "--v2-submit-504-share",
        type=fraction,
        default=0.0,
        help="share of v2 submissions queued (they complete and bill) but answered 504 "
        "(default %(default)s)",
    )
    add(
        "--v2-fail",
        type=fraction,
        default=0.0,
        help="probability a v2 request ends FAILED, 422, not billed (default %(default)s)",
    )
    add(
        "--record-ttl",
        type=positive,
        default=RECORD_TTL_S,
        help="seconds the v2 status and result URLs answer (default %(default)s)",
    )
    add(
        "--output-ttl",
        type=positive,
        default=OUTPUT_TTL_S,
        help="seconds the output image URLs answer (default %(default)s, 7 days)",
    )
    add(
        "--history-lag",
        type=non_negative,
        default=0.0,
        help="seconds before a history row shows a change (default %(default)s; real: up to 30)",
    )
    add(
        "--credits",
        type=non_negative,
        default=None,
        help="starting balance in USD (default: unlimited)",
    )
    add(
        "--script",
        type=_script,
        default=(),
        help="statuses for the next requests (v1 upstream answers, v2 submissions): 502,504,200",
    )
    add("--seed", type=int, default=0, help="seed for every random draw (default %(default)s)")
    add(
        "--image-scale",
        type=_scale,
        default=1.0,
        help="draw images at resolution*scale (default %(default)s)",
    )
    add(
        "--format",
        choices=("jpeg", "png"),
        default="jpeg",
        help="output format (default %(default)s)",
    )


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
        fault_cut=args.fail_cut,
        billed_504_share=args.billed_504_share,
        fault_request_id=args.fault_request_id,
        v2_submit_504_share=args.v2_submit_504_share,
        v2_fail=args.v2_fail,
        record_ttl=args.record_ttl,
        output_ttl=args.output_ttl,
        history_lag=args.history_lag,
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
            print(f"batchgen emulator serving {emulator.root} (Ctrl-C stops it); to use it:")
            for name, value in emulator.environment().items():
                print(f"export {name}={shlex.quote(value)}")
            print(flush=True)
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
    """`python -m batchgen.emulator [options]`: the emulator on its own."""
    parser = argparse.ArgumentParser(prog="python -m batchgen.emulator", description=__doc__)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
