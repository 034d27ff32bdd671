"""The `batchgen` command: argument parsing, exit codes and user-facing errors, in one place.

Exit codes:
  0  every job succeeded (or nothing to do)
  1  the run finished but some jobs failed
  2  bad input or usage: nothing was sent
  3  the run stopped early and can be resumed (bad key, no credits, unknown model,
     budget reached, the service unreachable past --outage-limit, interrupted), or did
     not start: another run holds its ledger, or --upload-images could not upload;
     `plan --credits`: the key was refused or the service could not be reached
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batchgen import __version__, api, commands, library, retry, settle
from batchgen.argtypes import non_negative, positive, positive_int
from batchgen.commands import EXIT_OK, EXIT_STOPPED, EXIT_USAGE
from batchgen.errors import InputError, LedgerError, LockedError, ServiceError
from batchgen.store.location import location_arg


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; every option with a default says it, like
    ArgumentDefaultsHelpFormatter, unless its help already does (`default 0: ...`)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text, default = action.help or "", action.default
        quiet = default is None or default is False or default == argparse.SUPPRESS
        if quiet or not action.option_strings or "default" in text.lower():
            return action.help
        if isinstance(default, float) and default.is_integer():
            default = int(default)
        shown = "none" if default == () else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


def _command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """A subcommand whose --help starts with its one-line summary and shows defaults."""
    kwargs.setdefault("description", f"{summary[0].upper()}{summary[1:]}.")
    command = subparsers.add_parser(name, help=summary, formatter_class=HelpFormatter, **kwargs)
    command.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="say more on stderr: -v what batchgen decides (retries, pauses, settlement), "
        "-vv every request and group commit",
    )  # fmt: skip
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchgen",
        description="Remix images in bulk with Segmind's Ideogram Turbo img2img API.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"batchgen {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_plan(subparsers)
    _add_run(subparsers)
    _add_report(subparsers)
    _add_reconcile(subparsers)
    _add_demo(subparsers)
    _add_emulator(subparsers)
    _add_inspect(subparsers)
    _add_gallery(subparsers)
    return parser


def _add_inspect(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    inspect = _command(subparsers, "inspect", "print the parameters an image was made with")
    inspect.add_argument("image", type=location_arg, help="an image batchgen wrote")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(handler=commands.cmd_inspect)


def _add_gallery(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gallery = _command(
        subparsers, "gallery", "write a self-contained HTML contact sheet from ledgers"
    )
    gallery.add_argument(
        "ledgers", type=location_arg, nargs="*", help="ledger files or output folders"
    )
    gallery.add_argument(
        "-o", "--output", type=location_arg, help="default: gallery.html by the ledger"
    )
    gallery.set_defaults(handler=commands.cmd_gallery)


def _add_plan(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    plan = _command(
        subparsers,
        "plan",
        "dry run: jobs, what is done, what the rest will cost (no network)",
        epilog="--credits is the one option that uses the network: it reads the balance "
        "with the key, as run does (SEGMIND_API_KEY or --api-key-file).",
    )
    plan.add_argument("manifest", type=Path, help="YAML manifest or CSV of jobs")
    where = plan.add_mutually_exclusive_group()
    where.add_argument(
        "--out", type=location_arg, help="output folder or s3:// URL: reads every ledger in it"
    )
    where.add_argument("--ledger", type=Path, help="one ledger file to compare against")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.add_argument("--list", action="store_true", help="stream the jobs as JSON lines")
    plan.add_argument("--rpm", type=positive, help="rate limit, to estimate wall time")
    plan.add_argument("--concurrency", type=positive_int, help="requests in flight, likewise")
    plan.add_argument("--retry-failed", action="store_true", help="count failed jobs as to run")
    _add_shard_options(plan)
    plan.add_argument("--rpm-total", type=positive, help="the key's rate, over all shards")
    _add_upload_options(plan, planning=True)
    plan.add_argument(
        "--credits",
        action="store_true",
        help="read the account's balance (network, with the key) and say whether it covers "
        "the jobs to run",
    )
    plan.add_argument(
        "--api-base", help=f"for --credits: default $SEGMIND_API_BASE, else {api.API_BASE}"
    )
    plan.add_argument(
        "--api-key-file", type=Path, help="for --credits: read the key from this file"
    )
    plan.set_defaults(handler=commands.cmd_plan)


def _add_upload_options(parser: argparse.ArgumentParser, *, planning: bool = False) -> None:
    if planning:
        text = ("show what a run with --upload-images would upload (files, MB) and save "
                "(base64 not sent); no network")  # fmt: skip
    else:
        text = ("upload each local image once, before sending, and send its URL instead of "
                "its base64 (cached in OUT/.batchgen-assets.json). Off by default: asset URLs "
                "are PUBLIC, anyone with one can fetch the image")  # fmt: skip
    parser.add_argument("--upload-images", action="store_true", help=text)
    parser.add_argument(
        "--storage-base",
        metavar="URL",
        help="the asset storage for --upload-images (default $SEGMIND_STORAGE_BASE, else "
        "https://workflows-api.segmind.com, or the root of a custom --api-base)",
    )


def _add_run(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = _command(
        subparsers,
        "run",
        "run a manifest: concurrent, rate-limited, resumable",
        description="Run every job of a manifest that is not done yet. The key comes from "
        "SEGMIND_API_KEY (or --api-key-file); a rerun with the same --out resumes.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    run.add_argument("manifest", type=Path, help="YAML manifest or CSV of jobs")
    _add_run_options(run)
    run.set_defaults(handler=commands.cmd_run)


def _add_run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--out", type=location_arg, required=True, help="output folder, or s3://bucket/prefix"
    )
    run.add_argument("--ledger", type=Path, help="ledger file (default OUT/ledger.jsonl)")
    run.add_argument("--api-base", help=f"default $SEGMIND_API_BASE, else {api.API_BASE}")
    run.add_argument("--api-key-file", type=Path, help="read the key from this file")
    run.add_argument(
        "--api",
        choices=("v1", "v2"),
        default="v1",
        help="v1: each answer is the image (default); v2: Segmind's queue, crash-safe for "
        "long runs (the request id is recorded, then polled; a kill loses nothing that "
        "completed). The v2 base is --api-base with its /v1 made /v2",
    )
    run.add_argument(
        "--typical-latency",
        type=positive,
        default=api.TYPICAL_LATENCY_S,
        metavar="SECONDS",
        help="with --api v2: the first poll of a request waits about this long (then what "
        f"the run observes) (default {api.TYPICAL_LATENCY_S:g})",
    )
    run.add_argument(
        "--concurrency",
        type=positive_int,
        help="the most requests billed and not yet durable; the pool follows the rate and "
        "the latency below it, probing up from 2 in flight, or starting with this many when "
        f"it is given (default: {library.DEFAULT_CONCURRENCY})",
    )
    run.add_argument("--rpm", type=positive, help="requests per minute (your plan's limit)")
    run.add_argument("--max-cost", type=non_negative, help="hard cap on USD this run spends")
    run.add_argument(
        "--max-attempts",
        type=positive_int,
        default=retry.MAX_ATTEMPTS,
        help="tries per job",
    )
    run.add_argument(
        "--timeout", type=positive, default=retry.REQUEST_TIMEOUT_S, help="seconds/request"
    )
    run.add_argument(
        "--outage-limit",
        type=non_negative,
        default=retry.OUTAGE_LIMIT_S,
        metavar="SECONDS",
        help="while the service is unreachable the pool waits, probing it; stop (exit 3) "
        f"after an outage this long (default {retry.OUTAGE_LIMIT_S:g})",
    )
    run.add_argument("--retry-failed", action="store_true", help="also rerun jobs that failed")
    run.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")
    run.add_argument(
        "--confirm-above",
        type=non_negative,
        default=commands.CONFIRM_ABOVE_USD,
        metavar="USD",
        help="on a terminal, ask before a run estimated to cost more than this",
    )
    run.add_argument(
        "-y", "--yes", action="store_true", help="do not ask (as with --max-cost, or no terminal)"
    )
    run.add_argument(
        "--wait-lock",
        type=non_negative,
        default=0.0,
        metavar="SECONDS",
        help="if another run holds the ledger, wait this long for it (default 0: exit 3 at once)",
    )
    _add_shard_options(run)
    run.add_argument(
        "--rpm-total", type=positive, help="the key's rate limit, divided among the shards"
    )
    run.add_argument(
        "--no-reconcile",
        action="store_true",
        help="do not settle lost answers from the request history before sending",
    )
    _add_history_options(run)
    _add_upload_options(run)


def _add_history_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--history-base",
        metavar="URL",
        help="the request history (default $SEGMIND_HISTORY_BASE, else Segmind's, or the "
        "root of a custom --api-base)",
    )
    parser.add_argument(
        "--history-lag",
        type=non_negative,
        default=settle.HISTORY_LAG_S,
        metavar="SECONDS",
        help="how long a request may take to show in the history",
    )


def _add_shard_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shard",
        metavar="I/N|auto",
        help="only the jobs of shard I of N (1-based); auto reads JOB_COMPLETION_INDEX "
        "(Kubernetes) or SLURM_ARRAY_TASK_ID (Slurm)",
    )
    parser.add_argument(
        "--shard-count",
        type=positive_int,
        help="N for --shard auto; with plan alone: the split",
    )


def _add_report(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rep = _command(subparsers, "report", "summarise one or more ledgers (or folders)")
    rep.add_argument("ledgers", type=location_arg, nargs="*", help="ledger files or output folders")
    rep.add_argument("--json", action="store_true", help="print one JSON object")
    rep.set_defaults(handler=commands.cmd_report)


def _add_reconcile(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rec = _command(
        subparsers,
        "reconcile",
        "settle lost answers (502/504s, timeouts, crashes) from the service's request history",
        description="Settle every request the ledgers of OUT leave ambiguous from the "
        "service's request history: billed images are downloaded (not paid again), the "
        "rest recorded as not billed. Appends to the ledgers; rewrites nothing.",
    )
    rec.add_argument("out", type=location_arg, help="the output folder of a run")
    rec.add_argument("--api-base", help=f"default $SEGMIND_API_BASE, else {api.API_BASE}")
    rec.add_argument("--api-key-file", type=Path, help="read the key from this file")
    rec.add_argument("--manifest", type=Path, help="for output paths (default: the run's own)")
    _add_history_options(rec)
    rec.set_defaults(handler=commands.cmd_reconcile)


def _add_demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = _command(
        subparsers,
        "demo",
        "run the demo manifest against the bundled emulator (no key, no network)",
    )
    demo.add_argument("--manifest", type=Path, default=Path("jobs/demo.yaml"), help="what to run")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    demo.add_argument("--latency", type=float, default=1.5, help="emulated seconds per image")
    demo.add_argument("--concurrency", type=positive_int, default=4, help="requests in flight")
    demo.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")
    demo.set_defaults(handler=commands.cmd_demo)


def _add_emulator(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from batchgen.emulator import serve as emulator_serve

    emu = _command(subparsers, "emulator", "serve the bundled emulator of the API on loopback")
    emulator_serve.add_arguments(emu)
    emu.set_defaults(handler=emulator_serve.run_from_args)  # its own exit codes


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _log_to_stderr(args.verbose)
    try:
        code: int = args.handler(args)
    except InputError as err:
        for problem in err.problems:
            print(f"batchgen: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except LedgerError as err:
        print(f"batchgen: {err}", file=sys.stderr)
        return EXIT_USAGE
    except LockedError as err:  # another run holds the ledger: retrying later resumes
        print(f"batchgen: {err}", file=sys.stderr)
        return EXIT_STOPPED
    except ServiceError as err:  # the service refused the key or could not be reached
        print(f"batchgen: {err}", file=sys.stderr)
        return EXIT_STOPPED
    except BrokenPipeError:  # `batchgen plan --list | head`
        sys.stderr.close()
        return EXIT_OK
    return code


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The CLI's: `batchgen`'s diagnostics on stderr (sys.stderr when each is logged, so
    a test capturing stderr sees them)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _log_to_stderr(verbosity: int) -> None:
    """Warnings always (as before: Python's last-resort handler printed them), -v info,
    -vv debug. The library itself never configures logging: that is the caller's."""
    logger = logging.getLogger("batchgen")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)  # main() called again in one process (tests)
    logger.addHandler(_StderrHandler())
    logger.setLevel((logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)])
