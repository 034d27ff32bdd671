"""What each command does with its parsed arguments: parse, call the library, print.
Parsing and exit codes live in `cli.py`; every rule of a run lives in `library.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shlex
import sys
from pathlib import Path

from batchgen import (
    account,
    events,
    ledger,
    library,
    retry,
    run_summary,
    settle,
    store,
    summaries,
)
from batchgen.api import TYPICAL_LATENCY_S
from batchgen.errors import InputError
from batchgen.grid import describe
from batchgen.planning import Plan, render
from batchgen.progress import Progress
from batchgen.results import RunResult
from batchgen.stops import StopReason

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3
CONFIRM_ABOVE_USD = 5.0  # `run` on a terminal asks before spending more than this
EXIT_FOR_STOP = {reason: EXIT_STOPPED for reason in StopReason} | {
    StopReason.NOT_CONFIRMED: EXIT_USAGE  # nothing was sent: as for bad input
}


def cmd_plan(args: argparse.Namespace) -> int:
    if args.list:
        for job in library.jobs(args.manifest, out=args.out, shard=args.shard,
                                shard_count=args.shard_count):  # fmt: skip
            line = {"job_id": job.job_id, "output": job.output, "params": describe(job.params)}
            sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
        return EXIT_OK
    plan = library.plan(
        args.manifest, out=args.out, ledger=args.ledger, retry_failed=args.retry_failed,
        concurrency=args.concurrency, rpm=args.rpm, rpm_total=args.rpm_total,
        shard=args.shard, shard_count=args.shard_count, upload_images=args.upload_images,
        api_base=args.api_base, storage_base=args.storage_base,
    )  # fmt: skip
    if not args.credits:
        print(json.dumps(plan.as_dict()) if args.json else render(plan))
        return EXIT_OK
    balance = library.credits(api_key_from_file(args), args.api_base)  # after the plan's checks
    if args.json:
        covered = account.covers(balance, plan.price, plan.to_run)
        shown = None if math.isinf(balance) else balance
        print(json.dumps({**plan.as_dict(), "credits": shown, "credits_cover": covered}))
    else:
        print(render(plan))
        print(f"credits    {account.coverage_line(balance, plan.price, plan.to_run)}")
    return EXIT_OK


def api_key_from_file(args: argparse.Namespace) -> str | None:
    """The key from --api-key-file, or None for the library to read $SEGMIND_API_KEY."""
    if args.api_key_file is None:
        return None
    try:
        key: str = args.api_key_file.read_text(encoding="utf-8").strip()
    except OSError as err:
        message = f"cannot read --api-key-file {args.api_key_file}: {err.strerror}"
        raise InputError(message) from None
    if not key:
        raise InputError(f"--api-key-file {args.api_key_file} is empty")
    return key


def run_options(args: argparse.Namespace) -> dict[str, object]:
    """The library's options for `run`, from the flags of the same names."""
    return {
        "out": args.out, "ledger": args.ledger, "concurrency": args.concurrency,
        "rpm": args.rpm, "rpm_total": args.rpm_total, "max_cost": args.max_cost,
        "max_attempts": args.max_attempts, "timeout": args.timeout,
        "outage_limit": args.outage_limit,
        "retry_failed": args.retry_failed, "shard": args.shard, "shard_count": args.shard_count,
        "wait_lock": args.wait_lock, "reconcile": not args.no_reconcile,
        "history_base": args.history_base, "history_lag": args.history_lag,
        "api": args.api, "typical_latency": args.typical_latency,
        "upload_images": args.upload_images, "storage_base": args.storage_base,
    }  # fmt: skip


def cmd_run(args: argparse.Namespace) -> int:
    key = api_key_from_file(args)
    progress = Progress(bar=not args.no_progress and sys.stderr.isatty())
    try:
        result = library.run(
            args.manifest, api_key=key, api_base=args.api_base, **run_options(args),  # type: ignore[arg-type]
            on_event=progress, confirm=lambda plan: confirmed(args, plan), handle_signals=True,
        )  # fmt: skip
    finally:
        progress.close()
    return finish(args, result)


def confirmed(args: argparse.Namespace, plan: Plan) -> bool:
    """A person at a terminal says yes before a run above --confirm-above; --yes,
    --max-cost (a cap was chosen) or no terminal on stdin (cron) never asks."""
    cost = plan.estimated_cost
    if args.yes or args.max_cost is not None or cost <= args.confirm_above:
        return True
    if sys.stdin is None or not sys.stdin.isatty():
        return True
    question = f"this will spend about ${cost:,.2f} on {plan.to_run:,} images; continue? [y/N] "
    print(f"batchgen: {question}", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        answer = ""
    if not answer.endswith("\n"):
        print(file=sys.stderr)  # Ctrl-C or Ctrl-D: the next line starts on its own
    return answer.strip().lower() in ("y", "yes")


GALLERY_AUTO_MAX_JOBS = 5000  # above this, a contact sheet is made on request only


def refresh_gallery(out: Path | str, jobs: int) -> str:
    """Rewrite the contact sheet after a run; a failure here never fails the run."""
    from batchgen import gallery

    if jobs > GALLERY_AUTO_MAX_JOBS:
        return f"not refreshed for {jobs:,} jobs: `batchgen gallery {out}` makes one"
    try:
        if isinstance(out, str):  # an object store's URL
            from batchgen.store import gallery as store_gallery

            return store_gallery.write_gallery(out)
        return str(gallery.write_gallery(ledger.ledgers_in(out)))
    except (OSError, ValueError, InputError) as err:
        return f"(not written: {err})"


def finish(args: argparse.Namespace, result: RunResult) -> int:
    """Print the summary (and refresh the gallery); the exit code for the result."""
    if result.stopped is not None and result.stopped.reason is StopReason.NOT_CONFIRMED:
        print(f"batchgen: {result.stopped}", file=sys.stderr)
        return EXIT_USAGE
    resume = retry_failed = None
    if result.stopped or result.failed:  # failed for good before: only --retry-failed helps
        resume = resume_command(args)
    if (result.failed or result.skipped_failed) and not getattr(args, "retry_failed", False):
        retry_failed = resume_command(args, "--retry-failed")
    print(run_summary.render(result, resume=resume, retry=retry_failed))
    print(f"  gallery     {refresh_gallery(result.out, result.plan.jobs)}")
    if result.stopped is not None:
        return EXIT_FOR_STOP[result.stopped.reason]
    return EXIT_FAILED if result.failed or result.skipped_failed else EXIT_OK


# Every `run` option that shapes a run, with its default: a resume hint repeats those the
# user set, so pasting it after a budget stop does not run on without the cap.
RESUMED_OPTIONS: tuple[tuple[str, str, object], ...] = (
    ("--ledger", "ledger", None),
    ("--shard", "shard", None),
    ("--shard-count", "shard_count", None),
    ("--api-base", "api_base", None),
    ("--api-key-file", "api_key_file", None),
    ("--api", "api", "v1"),
    ("--typical-latency", "typical_latency", TYPICAL_LATENCY_S),
    ("--concurrency", "concurrency", None),
    ("--rpm", "rpm", None),
    ("--rpm-total", "rpm_total", None),
    ("--max-cost", "max_cost", None),
    ("--max-attempts", "max_attempts", retry.MAX_ATTEMPTS),
    ("--timeout", "timeout", retry.REQUEST_TIMEOUT_S),
    ("--outage-limit", "outage_limit", retry.OUTAGE_LIMIT_S),
    ("--wait-lock", "wait_lock", 0.0),
    ("--history-base", "history_base", None),
    ("--history-lag", "history_lag", settle.HISTORY_LAG_S),
    ("--no-reconcile", "no_reconcile", False),
    ("--upload-images", "upload_images", False),
    ("--storage-base", "storage_base", None),
    ("--confirm-above", "confirm_above", CONFIRM_ABOVE_USD),
    ("--retry-failed", "retry_failed", False),
    ("--no-progress", "no_progress", False),
    ("--yes", "yes", False),
)


def resume_command(args: argparse.Namespace, *extra: str) -> str:
    """`batchgen run` with the manifest, --out and every option of this run that was not
    left at its default (the demo's own defaults differ: it is resumed as a run)."""
    words = ["batchgen", "run", str(args.manifest), "--out", str(args.out)]
    for flag, dest, default in RESUMED_OPTIONS:
        value = getattr(args, dest, None)
        if value is None or value is False or value == default:
            continue
        if value is True:
            words.append(flag)
        elif isinstance(value, float):
            words += [flag, str(int(value)) if value.is_integer() else repr(value)]
        else:
            words += [flag, str(value)]
    return shlex.join([*words, *extra])


def cmd_report(args: argparse.Namespace) -> int:
    summary = library.report(*args.ledgers)
    print(json.dumps(summary.as_dict()) if args.json else summaries.render(summary))
    return EXIT_FAILED if summary.failed else EXIT_OK


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Settle, then print what was settled and the report's money afterwards."""
    report = library.reconcile(
        args.out, api_key=api_key_from_file(args), api_base=args.api_base,
        history_base=args.history_base, history_lag=args.history_lag, manifest=args.manifest,
    )  # fmt: skip
    for skipped in report.skipped_ledgers:
        print(f"batchgen: {skipped} is in use by another run; left alone", file=sys.stderr)
    if report.unavailable is not None:
        return EXIT_STOPPED  # the warning says why; nothing was appended
    print(report.line())
    summary = library.report(args.out)
    print("\n".join(summaries.money_lines(
        summary.spent, summary.requests, summary.possibly_billed, summary.remaining_credits,
        why="still unsettled",
    )))  # fmt: skip
    return EXIT_STOPPED if report.unknown or report.skipped_ledgers else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """A real run of the demo manifest against the bundled emulator, served in-process
    on a free loopback port with its own key: no key of yours, no network, no bill."""
    from batchgen.emulator import EmulatorConfig, running_emulator  # only the demo needs it

    config = EmulatorConfig(latency=args.latency, latency_jitter=0.3, credits=100.0)
    progress = Progress(bar=not args.no_progress and sys.stderr.isatty())

    async def go() -> tuple[RunResult, dict[str, object]]:
        async with running_emulator(config) as served:

            def listener(event: events.Event) -> None:
                if isinstance(event, events.RunPlanned):
                    plan = event.plan
                    print(f"batchgen demo: {plan.jobs} jobs from {plan.manifest}, "
                          f"${plan.estimated_cost:.2f} at list price, against the bundled "
                          "emulator (no key, no network, no bill)")  # fmt: skip
                    print(f"batchgen demo: emulator serving at {served.url}", flush=True)
                progress(event)

            result = await library.run_async(
                args.manifest, out=args.out, api_key=served.api_key, api_base=served.url,
                concurrency=args.concurrency, on_event=listener, handle_signals=True,
            )  # fmt: skip
            return result, served.stats.as_json()

    try:
        result, stats = asyncio.run(go())
    finally:
        progress.close()
    args.ledger = args.api_base = args.shard = None  # its resume hint is a plain `run`
    code = finish(args, result)
    print(f"  emulator    {stats['requests_total']} requests, billed {stats['billed_total']} "
          f"(${stats['spent']:.3f} pretend), credits left {stats['credits_left']}")  # fmt: skip
    print(f"  next        batchgen report {result.out}   # the same summary, from the ledger alone")
    return code


def cmd_inspect(args: argparse.Namespace) -> int:
    from batchgen import metadata

    if store.is_url(args.image):  # an image on an object store
        from batchgen.store import reading

        meta = metadata.read(reading.read_object(args.image))
        if meta is None:
            raise InputError(f"{args.image}: no batchgen parameters found")
    else:
        meta = metadata.read_file(args.image)
    if args.json:
        print(json.dumps(meta, ensure_ascii=False, sort_keys=True))
        return EXIT_OK
    width = max(len(key) for key in meta)
    for key in metadata.ordered(meta):
        value = meta[key] if isinstance(meta[key], str) else json.dumps(meta[key])
        indent = "\n" + " " * (width + 2)  # a prompt's own lines stay readable
        print(f"{key:<{width}}  {indent.join(value.splitlines() or [''])}")
    return EXIT_OK


def cmd_gallery(args: argparse.Namespace) -> int:
    from batchgen import gallery

    if any(store.is_url(item) for item in [*args.ledgers, args.output]):
        from batchgen.store import gallery as store_gallery

        if len(args.ledgers) != 1 or not store.is_url(args.ledgers[0]):
            raise InputError("a store's gallery is made from one URL: batchgen gallery s3://b/p")
        print(f"gallery     {store_gallery.write_gallery(args.ledgers[0], args.output)}")
        return EXIT_OK
    paths = library.ledger_files(args.ledgers)
    try:
        written = gallery.write_gallery(paths, args.output)
    except OSError as err:
        where = err.filename or args.output or paths[0].parent
        raise InputError(f"{where}: cannot write the gallery: {err.strerror}") from None
    print(f"gallery     {written}")
    return EXIT_OK
