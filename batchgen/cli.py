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
import asyncio
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from batchgen import __version__, api, grid, ledger, manifest, report, retry
from batchgen.batch import BatchConfig, BatchResult, run_batch
from batchgen.errors import InputError, LedgerError
from batchgen.plan import Plan, format_duration, make_plan, render
from batchgen.progress import Progress
from batchgen.runner import RunOptions

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
    _add_run(commands)
    _add_report(commands)
    _add_demo(commands)
    _add_emulator(commands)
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


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="run a manifest: concurrent, rate-limited, resumable",
        description="Run every job of a manifest that is not done yet. The key comes from "
        "SEGMIND_API_KEY (or --api-key-file); a rerun with the same --out resumes.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("manifest", type=Path, help="YAML manifest or CSV of jobs")
    _add_run_options(run)
    run.set_defaults(handler=cmd_run)


def _add_run_options(run: argparse.ArgumentParser, *, out_required: bool = True) -> None:
    run.add_argument("--out", type=Path, required=out_required, help="output folder")
    run.add_argument("--ledger", type=Path, help="ledger file (default OUT/ledger.jsonl)")
    run.add_argument("--api-base", help=f"default $SEGMIND_API_BASE, else {api.API_BASE}")
    run.add_argument("--api-key-file", type=Path, help="read the key from this file")
    run.add_argument("--concurrency", type=_positive_int, default=8, help="requests in flight")
    run.add_argument("--rpm", type=_positive_float, help="requests per minute (your plan's limit)")
    run.add_argument("--max-cost", type=_non_negative_float, help="hard cap on USD this run spends")
    run.add_argument(
        "--max-attempts", type=_positive_int, default=retry.MAX_ATTEMPTS, help="tries per job"
    )
    run.add_argument(
        "--timeout", type=_positive_float, default=retry.REQUEST_TIMEOUT_S, help="seconds/request"
    )
    run.add_argument("--retry-failed", action="store_true", help="also rerun jobs that failed")
    run.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")


def _add_report(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rep = commands.add_parser("report", help="summarise one or more ledgers (or folders)")
    rep.add_argument("ledgers", type=Path, nargs="*", help="ledger files or output folders")
    rep.add_argument("--json", action="store_true", help="print one JSON object")
    rep.set_defaults(handler=cmd_report)


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo", help="run the demo manifest against the bundled emulator (no key, no network)"
    )
    demo.add_argument("--manifest", type=Path, default=Path("jobs/demo.yaml"))
    demo.add_argument("--out", type=Path, default=Path("demo-out"))
    demo.add_argument("--latency", type=float, default=1.5, help="emulated seconds per image")
    demo.add_argument("--concurrency", type=_positive_int, default=4)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(handler=cmd_demo)


def _add_emulator(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from batchgen import emulator

    emu = commands.add_parser("emulator", help="serve the bundled emulator of the API on loopback")
    emulator.add_arguments(emu)
    emu.set_defaults(handler=emulator.run_from_args)  # its own exit codes


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


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


def _api_key(args: argparse.Namespace) -> str:
    if args.api_key_file is not None:
        try:
            key: str = args.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            message = f"cannot read --api-key-file {args.api_key_file}: {err.strerror}"
            raise InputError(message) from None
        if not key:
            raise InputError(f"--api-key-file {args.api_key_file} is empty")
        return key
    key = os.environ.get("SEGMIND_API_KEY", "").strip()
    if not key:
        raise InputError(
            "SEGMIND_API_KEY is not set: export it, or pass --api-key-file FILE "
            "(try `batchgen demo` to run against the bundled emulator without a key)"
        )
    return key


def _prepare(args: argparse.Namespace) -> tuple[manifest.Manifest, Path, ledger.LedgerState, Plan]:
    """Load and check everything before a single request: manifest, ledgers, collisions."""
    loaded = manifest.load(args.manifest)
    ledger_path = args.ledger or args.out / ledger.DEFAULT_NAME
    paths = sorted({*ledger.ledgers_in(args.out), ledger_path})
    state = ledger.load_state(paths)
    plan = make_plan(
        manifest=loaded.display,
        model=loaded.model,
        price=loaded.price,
        axes=grid.axis_sizes(loaded),
        jobs=grid.expand(loaded),  # drained once: a path collision is found before sending
        state=state,
        retry_failed=args.retry_failed,
    )
    return loaded, ledger_path, state, plan


def cmd_run(args: argparse.Namespace) -> int:
    key = _api_key(args)
    api_base = args.api_base or os.environ.get("SEGMIND_API_BASE") or api.API_BASE
    loaded, ledger_path, state, plan = _prepare(args)
    config = _batch_config(args, loaded, ledger_path, api_base, key)
    result = _execute(config, state, plan, bar=not args.no_progress)
    return _finish(args, config, plan, result)


def _batch_config(
    args: argparse.Namespace, loaded: manifest.Manifest, ledger_path: Path, base: str, key: str
) -> BatchConfig:
    options = RunOptions(
        concurrency=args.concurrency,
        max_cost=getattr(args, "max_cost", None),
        max_attempts=getattr(args, "max_attempts", retry.MAX_ATTEMPTS),
        retry_failed=getattr(args, "retry_failed", False),
    )
    return BatchConfig(
        manifest=loaded,
        out=args.out,
        ledger_path=ledger_path,
        api_base=base,
        api_key=key,
        options=options,
        rpm=getattr(args, "rpm", None),
        timeout=getattr(args, "timeout", retry.REQUEST_TIMEOUT_S),
    )


def _execute(
    config: BatchConfig, state: ledger.LedgerState, plan: Plan, *, bar: bool
) -> BatchResult:
    print(
        f"batchgen: {plan.jobs:,} jobs, {plan.done:,} already done, {plan.to_run:,} to run "
        f"(about ${plan.estimated_cost:,.2f})",
        file=sys.stderr,
    )
    progress = Progress(plan.to_run, bar=bar and sys.stderr.isatty())
    try:
        return asyncio.run(
            run_batch(config, grid.expand(config.manifest), state, on_event=progress)
        )
    finally:
        progress.close()


def _finish(args: argparse.Namespace, config: BatchConfig, plan: Plan, result: BatchResult) -> int:
    totals = result.totals
    lines = [
        f"{'stopped early' if totals.stopped else 'finished'} in {format_duration(result.seconds)}"
        + (f": {totals.stopped}" if totals.stopped else ""),
        f"  succeeded   {totals.succeeded:,}"
        + (f" ({totals.skipped_done:,} were already done)" if totals.skipped_done else ""),
        f"  failed      {totals.failed:,}"
        + (f" ({totals.skipped_failed:,} failed before, skipped)" if totals.skipped_failed else ""),
    ]
    lines += [f"    {count:>5}  {reason}" for reason, count in totals.failures.most_common(10)]
    if totals.not_run:
        lines.append(f"  not run     {totals.not_run:,} (the next run does them)")
    lines.append(f"  spent       ${totals.spent:,.2f} over {totals.requests:,} requests")
    if totals.possibly_billed:
        lines.append(
            f"  maybe       ${totals.possibly_billed:,.2f} possibly billed (502/504/timeouts)"
        )
    if totals.remaining_credits is not None:
        lines.append(f"  credits     {totals.remaining_credits} remaining, as the service said")
    lines.append(f"  images      {config.out}/")
    lines.append(f"  ledger      {config.ledger_path}")
    if totals.stopped or totals.failed:
        lines.append(f"  resume      {_resume_command(args)}")
    print("\n".join(lines))
    if totals.stopped:
        return EXIT_STOPPED
    return EXIT_FAILED if totals.failed else EXIT_OK


def _resume_command(args: argparse.Namespace) -> str:
    words = ["batchgen", "run", str(args.manifest), "--out", str(args.out)]
    if args.ledger:
        words += ["--ledger", str(args.ledger)]
    return shlex.join(words)


def cmd_report(args: argparse.Namespace) -> int:
    paths: list[Path] = []
    for given in args.ledgers or [Path(".")]:
        found = ledger.ledgers_in(given) if given.is_dir() else [given]
        if not given.exists() or not found:
            raise InputError(f"{given}: no ledger there (looked for ledger*.jsonl)")
        paths += found
    summary = report.summarize(paths)
    print(json.dumps(summary.as_dict()) if args.json else report.render(summary))
    return EXIT_FAILED if summary.failed else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from batchgen import demo  # imports the emulator: only the demo needs it

    code: int = demo.run(args)
    return code


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
