"""What a person watching a run sees: a tqdm bar on a terminal, log lines otherwise.

Cron logs get one summary line every few seconds instead of a bar's control codes,
each line stamped with the time in UTC (`2026-12-01T02:00:03Z batchgen: ...`).
"""

from __future__ import annotations

import sys
import time
from typing import Never, TextIO

from tqdm import tqdm

from batchgen import events
from batchgen.planning import Plan

LOG_INTERVAL_S = 5.0


def stamped(line: str, now: float | None = None) -> str:
    """A log line with its time first: UTC to the second, ISO 8601 (`...T02:00:03Z`)."""
    when = time.gmtime(time.time() if now is None else now)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', when)} {line}"


class Progress:
    """The listener the CLI gives a run: on `RunPlanned` it says what the run holds
    (and what the ledger says about the last run), then draws the bar or logs."""

    def __init__(
        self,
        *,
        bar: bool,
        stream: TextIO | None = None,
        interval: float = LOG_INTERVAL_S,
        total: int = 0,
    ) -> None:
        self.total, self.interval = total, interval
        self.stream = stream or sys.stderr  # as it is now, not when this module was read
        self.done = self.failed = self.retrying = self.throttled = 0
        self.spent = 0.0
        self._started = self._last_log = time.monotonic()
        self._waiting: set[str] = set()
        self._shown = ""  # the bar's status text now
        self._want_bar = bar
        self._settled = 0  # requests of earlier runs the history settled before this one
        self._bar: tqdm[Never] | None = None

    def __call__(self, event: events.Event) -> None:
        match event:  # the two events of every job first: each case is a test
            case events.JobStarted(job_id=job_id):
                self._waiting.discard(job_id)
                if self._want_bar and self._bar is None:  # after any question was answered
                    self._bar = tqdm(total=self.total, unit="img", file=self.stream,
                                     dynamic_ncols=True, smoothing=0.1)  # fmt: skip
            case events.JobFinished(job_id=job_id, ok=ok, cost=cost):
                self._waiting.discard(job_id)
                if ok:
                    self.done += 1
                else:
                    self.failed += 1
                self.spent += cost
                if self._bar is not None:
                    self._bar.update(1)
            case events.RunPlanned(plan=plan, cut_in_flight=cut):
                self.total = plan.to_run
                for line in planned_lines(plan, cut, settled=self._settled):
                    self._write(line)
                return
            case events.ImagesUploaded(uploaded=count, bytes=size, cached=cached):
                self._write(uploaded_line(count, size, cached))
                return
            case events.LockWaiting(message=message):
                self._write(message)
                return
            case events.Settled(report=report):
                self._settled += report.settled
                if report.unavailable is None and (report.settled or report.unknown):
                    self._write(report.line())  # an unavailable history was logged already
                return
            case events.JobRetrying(job_id=job_id):
                self._waiting.add(job_id)
            case events.JobThrottled():
                self.throttled += 1
            case events.RunStopping(message=reason):
                self._write(f"stopping: {reason}; letting requests in flight finish")
        self.retrying = len(self._waiting)
        self._refresh()

    def _refresh(self) -> None:
        if self._bar is not None:
            status = self._status()
            if status != self._shown:  # tqdm's postfix costs more than the comparison
                self._shown = status
                self._bar.set_postfix_str(status, refresh=False)
            return
        now = time.monotonic()
        if now - self._last_log >= self.interval:
            self._last_log = now
            self._write(f"{self.done + self.failed:,}/{self.total:,} {self._status()}")

    def _status(self) -> str:
        text = f"ok {self.done} failed {self.failed} ${self.spent:,.2f}"
        if self.retrying:
            text += f" retrying {self.retrying}"
        if self.throttled:
            text += f" 429s {self.throttled}"
        return text

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(f"batchgen: {text}", file=self.stream)
        elif self._want_bar:  # a terminal, before the bar: no time stamps needed
            print(f"batchgen: {text}", file=self.stream, flush=True)
        else:
            print(stamped(f"batchgen: {text}"), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self._status())
            self._bar.close()


def uploaded_line(count: int, size: int, cached: int) -> str:
    """What `--upload-images` did before the first request."""
    if not count:
        before = "image" if cached == 1 else "images"
        return f"{cached:,} {before} uploaded before: nothing to upload; requests carry URLs"
    noun = "image" if count == 1 else "images"
    text = f"uploaded {count:,} {noun} ({size / 1e6:,.1f} MB) once, to public asset URLs"
    if cached:
        text += f"; {cached:,} uploaded before"
    return text + "; requests carry the URLs"


def planned_lines(plan: Plan, cut_in_flight: int | None, *, settled: int = 0) -> list[str]:
    """What a run says before it sends: its size, and what it found of the last run
    (`settled`: requests the request history settled just before)."""
    where = f" (shard {plan.shard})" if plan.shard else ""
    lines = [
        f"{plan.jobs:,} jobs{where}, {plan.done:,} already done, {plan.to_run:,} to "
        f"run (about ${plan.estimated_cost:,.2f})"
    ]
    if cut_in_flight is not None and settled and not cut_in_flight:
        lines.append("the last run was cut: what it had in flight is settled (above)")
    elif cut_in_flight is not None:  # no run_end: killed, or the machine died
        lines.append(f"the last run was cut: {_in_flight(cut_in_flight)}")
    if plan.missing:
        lines.append(f"{missing_text(plan.missing)} and will be paid again")
    return lines


def _in_flight(count: int) -> str:
    if count == 0:
        return "no request was in flight"
    if count == 1:
        return "1 request was in flight and may have been billed"
    return f"{count:,} requests were in flight and may have been billed"


def missing_text(count: int) -> str:
    return f"{count:,} finished image{'s are' if count != 1 else ' is'} missing or changed on disk"
