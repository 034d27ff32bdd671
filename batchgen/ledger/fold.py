"""The one fold: ledger lines, in order, into what they say about each job.

Every reader of ledgers folds with it: the resume state (`state.LedgerState`, fed by the
fast scanner), the report (`summaries`), the gallery and settlement's view of attempts.
The rules, in one place:

- A job's status is its last job line's (`started`, `succeeded`, `failed`, `interrupted`,
  `unwritten`), except that a success, once recorded, is never forgotten (a later success
  wins: a deleted image made again). A `settled` line after a `started` one makes it
  `settled`: no longer in flight, to be run again.
- An attempt is a `started` line and the outcome line that follows it for the job in the
  same ledger (`retry`, `failed`, `interrupted`, `unwritten`, `succeeded`); a `started`
  line with none before the next one or the ledger's end was cut short (a crash). Its key
  is (ledger, started ts, attempt number): what a settling line names in `settles`.
- Money: an outcome `billed` (or a success) is spent at its `cost`; an attempt open or
  `maybe` is possibly billed (its price, or the outcome's cost) until a line settles it,
  then spent at what the service charged, or nothing.

`Fold(detail=False)` keeps the resume fields alone (no parameters, money or attempts):
the fast scanner hands it only what it reads without a full parse. Attempts are kept
for the jobs `attempts_for` names (settlement's candidates): a big ledger's others need
none.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchgen.ledger.schema import JOB_STATUSES, OUTCOMES, SETTLED, SUBMITTED, Billed, billed_of

Key = tuple[str, str, str, int]  # an attempt: (its ledger, its job, its `started` ts, its number)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One request of one job, as a ledger recorded it."""

    ledger: Path
    job_id: str
    started: str  # the `ts` of its `started` line: with `attempt`, what settles it
    attempt: int
    started_at: float
    params: Mapping[str, Any]
    price: float = 0.0
    model: str | None = None
    billed: Billed | None = None  # None: no outcome recorded (a crash)
    status: str | None = None  # the outcome line's status
    ended_at: float | None = None  # the outcome line's ts
    request_id: str | None = None  # the service's id, when a line recorded it

    @property
    def key(self) -> Key:
        return (str(self.ledger), self.job_id, self.started, self.attempt)

    @property
    def ambiguous(self) -> bool:
        return self.billed is None or self.billed == "maybe"

    def deadline(self, lag: float) -> float:
        """When a row for it must have appeared, if it reached the service at all."""
        return max(self.started_at, self.ended_at or 0.0) + lag


@dataclass(slots=True)
class JobRecord:
    """What the ledgers say about one job, as of its last line."""

    status: str
    output: str | None = None  # relative to `folder`
    folder: Path | None = None
    sha256: str | None = None
    size: int | None = None
    retryable: bool = True
    error: str | None = None  # of a `failed` or `unwritten` last line
    intact: bool = False  # the output's bytes matched the digest, when last read ...
    checked: int | None = None  # ... and a hash of the file's (inode, size, mtime, ctime) then
    manifest: str | None = None  # the manifest of the run that wrote the success
    request_id: str | None = None  # the service's id of a paid, unwritten image: the seam
    # where settlement from the request history downloads it instead of paying again
    http_status: int | None = None  # of a `failed` last line (full reads only)
    params: dict[str, Any] | None = None  # the last job line's (full reads only) ...
    model: str | None = None  # ... and the model of the run that wrote it

    @property
    def output_path(self) -> Path | None:
        if self.output is None or self.folder is None:
            return None
        return self.folder / self.output


@dataclass
class Fold:
    """The fold's state; `add` one line at a time, after `ledger(path)` says whose."""

    detail: bool = True
    attempts_for: Collection[str] = frozenset()
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    lines: int = 0  # job lines folded
    cut: set[Path] = field(default_factory=set)  # ledgers whose last run never ended
    runs: int = 0
    wall_seconds: float = 0.0
    requests: int = 0  # `started` lines
    spent: float = 0.0
    remaining_credits: str | None = None  # as the last success said
    pending: dict[str, dict[Key, float]] = field(default_factory=dict)  # possibly billed
    attempts: dict[str, list[Attempt]] = field(default_factory=dict)  # of attempts_for
    settled: set[Key] = field(default_factory=set)  # attempts a line settles (attempts_for)
    claimed: set[str] = field(default_factory=set)  # request ids lines name (attempts_for)
    manifests: dict[Path, list[tuple[str, str]]] = field(default_factory=dict)  # (name, sha)
    _path: Path = Path()
    _folder: Path = Path()  # the ledger's: its outputs are relative to it (one Path, shared)
    _manifest: str | None = None  # of the run whose lines are being read
    _model: str | None = None
    _run_began: datetime | None = None
    _open: dict[str, Attempt] = field(default_factory=dict)  # this ledger's open attempts

    def ledger(self, path: Path) -> None:
        """The lines that follow are this ledger's."""
        self.end()
        self._path, self._folder = path, path.parent
        self._manifest, self._model, self._run_began = None, None, None

    def end(self) -> None:
        """The ledger is read: its open attempts were cut short (possibly billed)."""
        for job, attempt in self._open.items():
            if job in self.attempts_for:
                self.attempts.setdefault(job, []).append(attempt)
        self._open = {}

    def add(self, record: Mapping[str, Any]) -> None:
        status, job = record.get("status"), record.get("job_id")
        if status == "run":
            self._run(record)
        elif status == "run_end":
            self._run_end(record)
        elif isinstance(job, str):
            if self.detail:
                self._attempt_line(job, status, record)
            if status in JOB_STATUSES:
                self._job_line(job, str(status), record)
            elif status == SETTLED and (known := self.jobs.get(job)) and known.status == "started":
                self.jobs[job] = JobRecord(SETTLED, params=known.params, model=known.model)

    # -- the fast scanner's seams: lines it read without a full parse (detail=False) -----

    def status(self, job: str, status: str) -> None:
        """A `started` or `interrupted` line."""
        self._put(job, JobRecord(status))

    def succeeded(self, job: str, output: str, sha256: str, size: int) -> None:
        self._put(job, JobRecord("succeeded", output, self._folder, sha256, size,
                                 manifest=self._manifest))  # fmt: skip

    # -- the rules --------------------------------------------------------------------

    def _put(self, job: str, record: JobRecord) -> None:
        self.lines += 1
        known = self.jobs.get(job)
        if known is not None:
            if known.status == "succeeded" and record.status != "succeeded":
                if record.params is not None:  # still the latest word on them
                    known.params, known.model = record.params, record.model
                return  # a success, once recorded, is never forgotten
            if record.params is None and known.params is not None:
                record.params, record.model = known.params, known.model
        self.jobs[job] = record

    def _job_line(self, job: str, status: str, line: Mapping[str, Any]) -> None:
        params = line.get("params")
        params = params if self.detail and isinstance(params, dict) else None
        model = self._model if params is not None else None
        if status == "succeeded":
            record = JobRecord("succeeded", str(line["output"]), self._folder,
                               line.get("sha256"), line.get("bytes"), manifest=self._manifest,
                               params=params, model=model)  # fmt: skip
        elif status == "failed":
            record = JobRecord("failed", retryable=bool(line.get("retryable", True)),
                               error=line.get("error"), http_status=line.get("http_status"),
                               params=params, model=model)  # fmt: skip
        elif status == "unwritten":  # paid, not on disk: run again (or download it)
            record = JobRecord("unwritten", error=line.get("error"), params=params,
                               model=model, request_id=line.get("request_id"))  # fmt: skip
        else:  # started (maybe billed, never finished) or interrupted: run it again
            record = JobRecord(status, params=params, model=model)
        self._put(job, record)

    def _run(self, line: Mapping[str, Any]) -> None:
        self._manifest, self._model = line.get("manifest"), line.get("model")
        self.cut.add(self._path)
        self.runs += 1
        self._run_began = _when(line.get("ts"))
        self.manifests.setdefault(self._path, []).append(
            (str(line.get("manifest")), str(line.get("manifest_sha256")))
        )

    def _run_end(self, line: Mapping[str, Any]) -> None:
        self.cut.discard(self._path)
        ended = _when(line.get("ts"))
        if self._run_began is not None and ended is not None:
            self.wall_seconds += (ended - self._run_began).total_seconds()
        self._run_began = None

    def _attempt_line(self, job: str, status: object, line: Mapping[str, Any]) -> None:
        """Attempts and money (full reads only)."""
        tracked = job in self.attempts_for
        headers = line.get("headers") if isinstance(line.get("headers"), dict) else {}
        request_id = line.get("request_id") or (headers or {}).get("x-request-id")
        if tracked and isinstance(request_id, str):
            self.claimed.add(request_id)
        if status == "succeeded":
            self.remaining_credits = (headers or {}).get("x-remaining-credits") or (
                self.remaining_credits
            )
        cost = float(line.get("cost", 0.0))
        settles = line.get("settles")
        if isinstance(settles, dict):  # settles an attempt, opens or closes none
            key = (
                str(self._path),
                job,
                str(settles.get("started")),
                int(settles.get("attempt", 0)),
            )
            if tracked:
                self.settled.add(key)
            pending = self.pending.get(job, {})
            if pending.pop(key, None) is not None and (
                status == "succeeded" or line.get("billed") == "billed"
            ):
                self.spent += cost
        elif status == "started":
            self._started(job, line)
        elif status == SUBMITTED:  # the v2 request of the open attempt: settled by this id
            if job in self._open and isinstance(request_id, str):
                self._open[job] = replace(self._open[job], request_id=request_id)
        elif status in OUTCOMES:
            self._outcome(job, str(status), line, cost, request_id)

    def _started(self, job: str, line: Mapping[str, Any]) -> None:
        self.requests += 1
        if (before := self._open.pop(job, None)) is not None and job in self.attempts_for:
            self.attempts.setdefault(job, []).append(before)  # it never finished: a crash
        params = line.get("params")
        opened = Attempt(
            self._path, job, str(line.get("ts")), int(line.get("attempt", 0)),
            _seconds(line.get("ts")), params if isinstance(params, dict) else {},
            float(line.get("price", 0.0)), self._model,
        )  # fmt: skip
        self._open[job] = opened
        self.pending.setdefault(job, {})[opened.key] = opened.price

    def _outcome(
        self, job: str, status: str, line: Mapping[str, Any], cost: float, request_id: object
    ) -> None:
        billed: Billed = "billed" if status == "succeeded" else billed_of(line.get("billed"))
        opened = self._open.pop(job, None)
        pending = self.pending.setdefault(job, {})
        if opened is not None:
            pending.pop(opened.key, None)
            key = opened.key
        else:  # an outcome with no attempt of its own (nothing was sent, or a lost line)
            key = (str(self._path), job, str(line.get("ts")), int(line.get("attempt", 0)))
        if billed == "billed":
            self.spent += cost
        elif billed == "maybe":
            pending[key] = pending.get(key, 0.0) + cost
        if opened is not None and job in self.attempts_for:
            rid = request_id if isinstance(request_id, str) else opened.request_id
            ended = replace(opened, billed=billed, status=status,
                            ended_at=_seconds(line.get("ts")), request_id=rid)  # fmt: skip
            self.attempts.setdefault(job, []).append(ended)

    def possibly_billed(self) -> float:
        return sum(sum(amounts.values()) for amounts in self.pending.values())


def fold(
    ledgers: Iterable[tuple[Path, Iterable[Mapping[str, Any]]]],
    *,
    attempts_for: Collection[str] = frozenset(),
) -> Fold:
    """Every ledger's lines (each with its path: the folder its outputs are relative
    to, and part of its attempts' keys), folded in order."""
    state = Fold(attempts_for=attempts_for)
    for path, lines in ledgers:
        state.ledger(path)
        for line in lines:
            state.add(line)
    state.end()
    return state


def _when(ts: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        return None


def _seconds(ts: object) -> float:
    """Epoch seconds of a line's `ts` (naive: UTC), 0.0 when it has none."""
    moment = _when(ts) if isinstance(ts, str) and ts else None
    if moment is None:
        return 0.0
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
