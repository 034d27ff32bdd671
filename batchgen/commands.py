"""What each command does with its parsed arguments. Parsing and exit-code mapping for
user errors live in `cli.py`; the work itself lives in the modules these call."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yarl

from batchgen import api, grid, ledger, manifest, outputs, report, retry, runlock, shard
from batchgen.batch import BatchConfig, BatchResult, run_batch
from batchgen.errors import InputError, Problem
from batchgen.grid import Job
from batchgen.plan import Plan, make_plan, render
from batchgen.progress import Progress
from batchgen.runner import RunOptions

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


@dataclass(frozen=True)
class Prepared:
    """Everything checked before a single request: manifest, ledgers, collisions, shard."""

    manifest: manifest.Manifest
    shard: shard.Shard | None
    ledger_path: Path
    state: ledger.LedgerState
    plan: Plan

    def jobs(self, *, check_paths: bool = False) -> Iterator[Job]:
        """This shard's jobs; the output-path check already ran in `prepare`."""
        return shard_jobs(self.manifest, self.shard, check_paths=check_paths)


def shard_jobs(
    loaded: manifest.Manifest, owned: shard.Shard | None, *, check_paths: bool
) -> Iterator[Job]:
    for job in grid.expand(loaded, check_paths=check_paths):
        if owned is None or owned.owns(job.job_id):
            yield job


def resolve_shard(args: argparse.Namespace) -> shard.Shard | None:
    spec = getattr(args, "shard", None)
    if spec is None:
        return None
    return shard.parse(spec, shard_count=args.shard_count, environ=os.environ)


def prepare(
    args: argparse.Namespace, *, ledger_file: Path | None = None, split_into: int | None = None
) -> Prepared:
    out: Path | None = getattr(args, "out", None)
    loaded = manifest.load(args.manifest, exclude=(out,))  # outputs are never inputs
    owned = resolve_shard(args)
    ledger_path = written_ledger(owned, out, ledger_file)
    paths = {ledger_path} if ledger_file else set()
    if out is not None:
        paths |= {*ledger.ledgers_in(out), ledger_path}  # resume sees every shard's work
    state = ledger.load_state(sorted(paths))
    prepared = Prepared(loaded, owned, ledger_path, state, _empty_plan())
    jobs = prepared.jobs(check_paths=True)  # drained once: collisions found before sending
    if out is not None and (owners := state.owners(out)):
        jobs = _not_owned_by_others(jobs, owners, out, loaded.display)
    plan = make_plan(
        manifest=loaded.display,
        model=loaded.model,
        price=loaded.price,
        axes=grid.axis_sizes(loaded),
        jobs=jobs,
        state=state,
        retry_failed=getattr(args, "retry_failed", False),
        concurrency=getattr(args, "concurrency", None),
        rpm=rate_limit(args, owned),
        shard=str(owned) if owned else None,
        split_into=split_into if owned is None else None,
        skipped=loaded.skipped,
    )
    return Prepared(loaded, owned, ledger_path, state, plan)


MAX_OWNER_PROBLEMS = 10  # a whole folder of them says the same thing


def _not_owned_by_others(
    jobs: Iterator[Job], owners: dict[str, tuple[str, ledger.JobRecord]], out: Path, display: str
) -> Iterator[Job]:
    """The jobs, checked against the images the ledgers in `out` already own: another
    manifest (or an edited one) writing over a paid image would pay for it again each
    night. Raises InputError at the end, naming both jobs and both manifests."""
    extensions = sorted(set(api.EXTENSIONS.values()))
    problems: list[str] = []
    for job in jobs:
        for ext in extensions:
            path = outputs.final_path(job.output, ext)
            owner = owners.get(path)
            if owner is None or owner[0] == job.job_id:
                continue
            other, record = owner
            if record.output_path is None or not record.output_path.exists():
                continue
            problems.append(
                f"{display}: job {job.job_id[:12]} would overwrite {out / path}, the image of "
                f"job {other[:12]} from {record.manifest or 'an earlier run'}; use another "
                "--out, or put {job_id} in the output template"
            )
        yield job
    if problems:
        more = len(problems) - MAX_OWNER_PROBLEMS
        shown = problems[:MAX_OWNER_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])
        raise InputError([Problem("", "output", text) for text in shown])


def check_room(out: Path, images: int) -> None:
    """Before the first request: --out can be written and has room to start."""
    if images and (problem := outputs.room_problem(out, images)) is not None:
        raise InputError(f"{problem}; nothing sent")


def written_ledger(owned: shard.Shard | None, out: Path | None, given: Path | None) -> Path:
    """The one ledger a run appends to (and locks): --ledger, else its shard's under --out."""
    name = owned.ledger_name if owned else ledger.DEFAULT_NAME
    return given or (out / name if out else Path(name))


def _empty_plan() -> Plan:
    return Plan("", "", 0.0, {}, 0, 0, 0, 0, 0.0, None)


def rate_limit(args: argparse.Namespace, owned: shard.Shard | None) -> float | None:
    """--rpm is this process's own limit; --rpm-total is the key's, shared by N shards."""
    total = getattr(args, "rpm_total", None)
    if total is not None:
        return float(total) / (owned.count if owned else 1)
    rpm: float | None = getattr(args, "rpm", None)
    return rpm


def cmd_plan(args: argparse.Namespace) -> int:
    if args.list:
        loaded = manifest.load(args.manifest, exclude=(args.out,))
        jobs = shard_jobs(loaded, resolve_shard(args), check_paths=True)
        for job in jobs:
            line = {"job_id": job.job_id, "output": job.output, "params": grid.describe(job.params)}
            sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
        return EXIT_OK
    plan = prepare(args, ledger_file=args.ledger, split_into=args.shard_count).plan
    print(json.dumps(plan.as_dict()) if args.json else render(plan))
    return EXIT_OK


def api_key(args: argparse.Namespace) -> str:
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


def api_base(args: argparse.Namespace) -> str:
    """--api-base, else $SEGMIND_API_BASE, else Segmind's: an http(s) URL with a host."""
    given: str | None = getattr(args, "api_base", None)
    where = "--api-base"
    if given is None:
        given, where = os.environ.get("SEGMIND_API_BASE"), "SEGMIND_API_BASE"
    if given is None:
        return api.API_BASE
    try:
        url = yarl.URL(given.strip())
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise InputError(
            f"{where} {given!r} is not an http(s) URL with a host "
            f"(e.g. {api.API_BASE} or http://127.0.0.1:8000/v1)"
        )
    return given.strip()


def cmd_run(args: argparse.Namespace) -> int:
    key = api_key(args)
    base = api_base(args)
    written = written_ledger(resolve_shard(args), args.out, args.ledger)
    with runlock.hold(written, wait=args.wait_lock, on_wait=_tell):  # before any state is read
        prepared = prepare(args, ledger_file=args.ledger)
        check_room(args.out, prepared.plan.to_run)
        config = batch_config(args, prepared, base, key)
        result = execute(config, prepared, bar=not args.no_progress)
    return finish(args, config, result, prepared.plan.jobs)


def _tell(line: str) -> None:
    print(f"batchgen: {line}", file=sys.stderr, flush=True)


GALLERY_AUTO_MAX_JOBS = 5000  # above this, a contact sheet is made on request only


def refresh_gallery(out: Path, jobs: int) -> str:
    """Rewrite the contact sheet after a run; a failure here never fails the run."""
    from batchgen import gallery

    if jobs > GALLERY_AUTO_MAX_JOBS:
        return f"not refreshed for {jobs:,} jobs: `batchgen gallery {out}` makes one"
    try:
        return str(gallery.write_gallery(ledger.ledgers_in(out)))
    except (OSError, ValueError, InputError) as err:
        return f"(not written: {err})"


def batch_config(args: argparse.Namespace, prepared: Prepared, base: str, key: str) -> BatchConfig:
    options = RunOptions(
        concurrency=args.concurrency,
        max_cost=getattr(args, "max_cost", None),
        max_attempts=getattr(args, "max_attempts", retry.MAX_ATTEMPTS),
        retry_failed=getattr(args, "retry_failed", False),
        outage_limit=getattr(args, "outage_limit", retry.OUTAGE_LIMIT_S),
    )
    return BatchConfig(
        manifest=prepared.manifest,
        out=args.out,
        ledger_path=prepared.ledger_path,
        api_base=base,
        api_key=key,
        options=options,
        rpm=rate_limit(args, prepared.shard),
        timeout=getattr(args, "timeout", retry.REQUEST_TIMEOUT_S),
        shard=str(prepared.shard) if prepared.shard else None,
    )


def execute(config: BatchConfig, prepared: Prepared, *, bar: bool) -> BatchResult:
    plan = prepared.plan
    where = f" (shard {prepared.shard})" if prepared.shard else ""
    print(
        f"batchgen: {plan.jobs:,} jobs{where}, {plan.done:,} already done, {plan.to_run:,} to "
        f"run (about ${plan.estimated_cost:,.2f})",
        file=sys.stderr,
    )
    return asyncio.run(run_with_progress(config, prepared, bar=bar))


async def run_with_progress(config: BatchConfig, prepared: Prepared, *, bar: bool) -> BatchResult:
    """The run itself, with a bar on a terminal (log lines otherwise)."""
    progress = Progress(prepared.plan.to_run, bar=bar and sys.stderr.isatty())
    try:
        return await run_batch(
            config,
            prepared.jobs(),
            prepared.state,
            on_event=progress,
            to_run=prepared.plan.to_run,
        )
    finally:
        progress.close()


def finish(args: argparse.Namespace, config: BatchConfig, result: BatchResult, jobs: int) -> int:
    totals = result.totals
    resume = None
    if totals.stopped or totals.failed or totals.skipped_failed:
        words = ["batchgen", "run", str(args.manifest), "--out", str(args.out)]
        if getattr(args, "ledger", None):
            words += ["--ledger", str(args.ledger)]
        if getattr(args, "shard", None):
            words += ["--shard", str(args.shard)]
        resume = shlex.join(words)
    print(report.render_run(result, out=config.out, ledger_path=config.ledger_path, resume=resume))
    print(f"  gallery     {refresh_gallery(config.out, jobs)}")
    if totals.stopped:
        return EXIT_STOPPED
    return EXIT_FAILED if totals.failed or totals.skipped_failed else EXIT_OK


def ledger_files(given: list[Path]) -> list[Path]:
    """Ledger files, or folders standing for every ledger*.jsonl in them."""
    paths: list[Path] = []
    for item in given or [Path(".")]:
        found = ledger.ledgers_in(item) if item.is_dir() else [item] if item.exists() else []
        if not found:
            raise InputError(f"{item}: no ledger there (looked for ledger*.jsonl)")
        paths += found
    return paths


def cmd_report(args: argparse.Namespace) -> int:
    summary = report.summarize(ledger_files(args.ledgers))
    print(json.dumps(summary.as_dict()) if args.json else report.render(summary))
    return EXIT_FAILED if summary.failed else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from batchgen import demo  # imports the emulator: only the demo needs it

    code: int = demo.run(args)
    return code


def cmd_inspect(args: argparse.Namespace) -> int:
    from batchgen import metadata

    return metadata.inspect_command(args.image, as_json=args.json)


def cmd_gallery(args: argparse.Namespace) -> int:
    from batchgen import gallery

    paths = ledger_files(args.ledgers)
    try:
        written = gallery.write_gallery(paths, args.output)
    except OSError as err:
        where = err.filename or args.output or paths[0].parent
        raise InputError(f"{where}: cannot write the gallery: {err.strerror}") from None
    print(f"gallery     {written}")
    return EXIT_OK
