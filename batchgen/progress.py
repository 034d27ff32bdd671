"""What a person watching a run sees: a tqdm bar on a terminal, log lines otherwise.

Cron logs get one summary line every few seconds instead of a bar's control codes,
each line stamped with the time in UTC (`2026-12-01T02:00:03Z batchgen: ...`).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

from batchgen import events

LOG_INTERVAL_S = 5.0


def stamped(line: str, now: float | None = None) -> str:
    """A log line with its time first: UTC to the second, ISO 8601 (`...T02:00:03Z`)."""
    when = time.gmtime(time.time() if now is None else now)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', when)} {line}"


class Progress:
    def __init__(
        self,
        total: int,
        *,
        bar: bool,
        stream: TextIO = sys.stderr,
        interval: float = LOG_INTERVAL_S,
    ) -> None:
        self.total, self.stream, self.interval = total, stream, interval
        self.done = self.failed = self.retrying = self.throttled = 0
        self.spent = 0.0
        self._started = self._last_log = time.monotonic()
        self._waiting: set[str] = set()
        self._bar = (
            tqdm(total=total, unit="img", file=stream, dynamic_ncols=True, smoothing=0.1)
            if bar
            else None
        )

    def __call__(self, event: events.Event) -> None:
        match event:
            case events.JobFinished(job_id=job_id, ok=ok, cost=cost):
                self._waiting.discard(job_id)
                if ok:
                    self.done += 1
                else:
                    self.failed += 1
                self.spent += cost
                if self._bar is not None:
                    self._bar.update(1)
            case events.JobRetrying(job_id=job_id):
                self._waiting.add(job_id)
            case events.JobStarted(job_id=job_id):
                self._waiting.discard(job_id)
            case events.JobThrottled():
                self.throttled += 1
            case events.RunStopping(message=reason):
                self._write(f"stopping: {reason}; letting requests in flight finish")
        self.retrying = len(self._waiting)
        self._refresh()

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self._status(), refresh=False)
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
        else:
            print(stamped(f"batchgen: {text}"), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self._status())
            self._bar.close()
