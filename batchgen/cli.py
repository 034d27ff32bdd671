"""The `batchgen` command: argument parsing, exit codes and user-facing errors, in one place.

Exit codes:
  0  every job succeeded (or nothing to do)
  1  the run finished but some jobs failed
  2  bad input or usage: nothing was sent
  3  the run stopped early and can be resumed (bad key, no credits, unknown model,
     budget reached, interrupted)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from batchgen import __version__, grid, ledger, manifest
from batchgen.errors import InputError, LedgerError
from batchgen.plan import make_plan, render

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchgen",
        description="Remix images in bulk with Segmind's Ideogram Turbo img2img API.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"batchgen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_plan(commands)
    return parser


def _add_plan(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    plan = commands.add_parser(
        "plan", help="dry run: jobs, what is done, what the rest will cost (no network)"
    )
    plan.add_argument("manifest", type=Path, help="YAML manifest or CSV of jobs")
    where = plan.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="output folder: reads every ledger in it")
    where.add_argument("--ledger", type=Path, help="one ledger file to compare against")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.add_argument("--list", action="store_true", help="stream the jobs as JSON lines")
    plan.add_argument("--rpm", type=_positive_float, help="rate limit, to estimate wall time")
    plan.add_argument("--concurrency", type=_positive_int, help="requests in flight, likewise")
    plan.add_argument("--retry-failed", action="store_true", help="count failed jobs as to run")
    plan.set_defaults(handler=cmd_plan)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def _ledger_paths(out: Path | None, ledger_file: Path | None) -> list[Path]:
    if ledger_file is not None:
        return [ledger_file]
    if out is not None:
        return ledger.ledgers_in(out)
    return []


def cmd_plan(args: argparse.Namespace) -> int:
    loaded = manifest.load(args.manifest)
    if args.list:
        for job in grid.expand(loaded):
            line = {"job_id": job.job_id, "output": job.output, "params": grid.describe(job.params)}
            sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
        return EXIT_OK
    state = ledger.load_state(_ledger_paths(args.out, args.ledger))
    plan = make_plan(
        manifest=loaded.display,
        model=loaded.model,
        price=loaded.price,
        axes=grid.axis_sizes(loaded),
        jobs=grid.expand(loaded),
        state=state,
        retry_failed=args.retry_failed,
        concurrency=args.concurrency,
        rpm=args.rpm,
    )
    print(json.dumps(plan.as_dict()) if args.json else render(plan))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except InputError as err:
        for problem in err.problems:
            print(f"batchgen: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except LedgerError as err:
        print(f"batchgen: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `batchgen plan --list | head`
        sys.stderr.close()
        return EXIT_OK
    return code
