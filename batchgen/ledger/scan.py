"""Reading ledger files: whole lines, streamed; fast where the writer's own lines allow.

A last line without its newline is torn (a crash mid-write) and skipped, as the writer
cuts it before its next append; a corrupt line anywhere else is an error, because
guessing could pay twice. A resume scan of a million lines would spend most of its time
building dicts it throws away, so `scan_into` reads the lines the writer writes by the
schema's patterns (`schema.PREFIX`, `schema.SUCCEEDED`) and parses only the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from batchgen.errors import LedgerError
from batchgen.ledger import schema
from batchgen.ledger.fold import Fold


def lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for every whole line, streamed."""
    own = getattr(path, "ledger_lines", None)
    if own is not None:  # a ledger read from an object store (store.StoredLedger)
        yield from own()
        return
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    except OSError as err:
        raise LedgerError(f"{path}: cannot read ledger: {err.strerror}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                return
            if line.strip():
                yield number, line


def _corrupt(path: Path, number: int) -> LedgerError:
    return LedgerError(f"{path}:{number}: corrupt ledger line; fix or remove it before resuming")


def parse(path: Path, number: int, line: bytes) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        raise _corrupt(path, number) from None
    if not isinstance(record, dict) or "status" not in record:
        raise _corrupt(path, number)
    return record


def read(path: Path) -> Iterator[dict[str, Any]]:
    """Every whole line of a ledger as a dict; a bad line before the end raises
    LedgerError naming it."""
    for number, line in lines(path):
        yield parse(path, number, line)


def ledgers(paths: Iterable[Path]) -> Iterator[tuple[Path, Iterator[dict[str, Any]]]]:
    """Each ledger with its lines, as `fold.fold` takes them."""
    for path in paths:
        yield path, read(path)


def scan_into(state: Fold, path: Path) -> None:
    """Fold one ledger into a resume state (`Fold(detail=False)`), fast for the lines
    the writer writes: `started`/`interrupted` by their prefix, a success by its
    output, size and digest; every other line is parsed (and still checked whole)."""
    state.ledger(path)
    prefix, success = schema.PREFIX.match, schema.SUCCEEDED.search  # the hot loop's
    for number, line in lines(path):
        match = prefix(line)
        if match is None or not line.rstrip().endswith(b"}"):
            state.add(parse(path, number, line))
            continue
        status = match[2].decode()
        if status in ("started", "interrupted"):
            state.status(match[1].decode(), status)
        elif status == "succeeded" and (found := success(line, match.end())):
            state.succeeded(match[1].decode(), found[1].decode(), found[3].decode(), int(found[2]))
        elif status in schema.JOB_STATUSES or status == schema.SETTLED:
            state.add(parse(path, number, line))
        else:
            parse(path, number, line)  # still a whole, valid line?
    state.end()


def candidates(path: Path) -> set[str]:
    """Jobs of one ledger with something that may need settling, without parsing every
    line: a `maybe`, an `unwritten`, a settlement, or a `started` with no outcome."""
    found: set[str] = set()
    open_jobs: set[str] = set()
    for number, line in lines(path):
        match = schema.PREFIX.match(line)
        if match is None:
            record = parse(path, number, line)
            job, status = record.get("job_id"), record.get("status")
            if not isinstance(job, str):
                continue
        else:
            job, status = match[1].decode(), match[2].decode()
        if status in ("started", schema.SUBMITTED):  # submitted: queued (v2), no outcome yet
            open_jobs.add(job)
            continue
        open_jobs.discard(job)
        if status in ("unwritten", schema.SETTLED) or schema.MAYBE in line:
            found.add(job)
    return found | open_jobs
