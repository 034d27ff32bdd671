"""The resume state: what every ledger in `out` says each job is, for plan and run.

It is the fold (`fold.Fold`, resume fields only) fed by the fast scanner, plus the
questions a run asks of it: is a job done (its image still there, with its bytes), which
outputs do recorded successes own, how many attempts were left open.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from batchgen.ledger import scan
from batchgen.ledger.fold import Fold, JobRecord
from batchgen.planning import Standing


def _resume_fold() -> Fold:
    return Fold(detail=False)


@dataclass
class LedgerState:
    fold: Fold = field(default_factory=_resume_fold)

    @property
    def records(self) -> dict[str, JobRecord]:
        return self.fold.jobs

    @property
    def lines(self) -> int:
        return self.fold.lines

    @property
    def cut(self) -> set[Path]:
        """Ledgers whose last run never ended."""
        return self.fold.cut

    def scan(self, path: Path) -> None:
        """Fold one ledger into the state, fast for the lines the writer writes."""
        scan.scan_into(self.fold, path)

    def owners(self, out: Path) -> dict[str, tuple[str, JobRecord]]:
        """Every output path under `out` (relative to it) that a recorded success owns,
        with the job that owns it: another job's image must never overwrite it."""
        root = os.path.abspath(out)
        prefixes: dict[Path, str | None] = {}  # a ledger's folder, as seen from `out`
        owned: dict[str, tuple[str, JobRecord]] = {}
        for job_id, record in self.records.items():
            if record.status != "succeeded" or record.output is None or record.folder is None:
                continue
            if (prefix := prefixes.get(record.folder, "")) == "":
                where = os.path.relpath(os.path.abspath(record.folder), root)
                prefix = prefixes[record.folder] = None if where.startswith("..") else where
            if prefix is not None:
                owned[os.path.normpath(os.path.join(prefix, record.output))] = (job_id, record)
        return owned

    def is_done(self, job_id: str) -> bool:
        """Succeeded, and its output file is still there with the recorded bytes.

        A file is read and hashed again only if it changed since the last check (inode,
        size, mtime or ctime): `run` asks in its validating plan pass and again as it
        feeds the workers, and a big resume would otherwise read every finished image
        twice, while a file replaced in between (by another job whose output path now
        falls on it, say) is still caught."""
        record = self.records.get(job_id)
        path = record.output_path if record is not None else None
        if record is None or record.status != "succeeded" or path is None:
            return False
        try:
            seen = os.stat(path)
        except OSError:
            return False
        key = hash((seen.st_ino, seen.st_size, seen.st_mtime_ns, seen.st_ctime_ns))
        if record.checked != key:
            same_size = record.size is None or seen.st_size == record.size
            record.intact = same_size and _digest_matches(path, record.sha256)
            record.checked = key
        return record.intact

    def open_attempts(self, owns: Callable[[str], bool] | None = None) -> int:
        """Jobs whose last line is `started`: a request sent with no outcome recorded (in
        flight when a run was killed), maybe billed. `owns` keeps one shard's jobs: its
        siblings' ledgers, beside it in --out, may be running right now."""
        return sum(
            record.status == "started" and (owns is None or owns(job_id))
            for job_id, record in self.records.items()
        )

    def standing(self, job_id: str) -> Standing:
        """What the ledgers say of a job, for a plan (reads its image if it succeeded)."""
        record = self.records.get(job_id)
        if record is None:
            return "new"
        if record.status == "succeeded":
            return "done" if self.is_done(job_id) else "missing"
        if record.status == "failed" and not record.retryable:
            return "failed_for_good"
        return "again"

    def failed_for_good(self, job_id: str) -> bool:
        record = self.records.get(job_id)
        return record is not None and record.status == "failed" and not record.retryable


def _digest_matches(path: Path, sha256: str | None) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return sha256 is None or hashlib.sha256(data).hexdigest() == sha256


def load_state(paths: Iterable[Path]) -> LedgerState:
    state = LedgerState()
    for path in paths:
        state.scan(path)
    return state


def ledgers_in(folder: Path) -> list[Path]:
    """Every ledger in an output folder: the plain one and any shard's."""
    return sorted(folder.glob("ledger*.jsonl"))
