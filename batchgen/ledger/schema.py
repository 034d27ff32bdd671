"""The ledger's lines, format `v: 1`: one constructor per line type, and the patterns the
fast scanner reads them by.

Every line is a JSON object whose first keys are, in this order, `v`, `ts`, `job_id` and
`status` (`envelope` puts the first two in front of a constructor's record). The order is
not JSON's business but the scanner's: `scan.py` reads most lines of a big resume without
parsing them, by matching `PREFIX`, and a `succeeded` line's `output`, `cost`, `bytes` and
`sha256` by `SUCCEEDED`. Both patterns sit below the constructors whose key order they
depend on, and `tests/test_ledger_schema.py` checks the constructors' output against them: a line
that stopped matching would not be misread (the scanner falls back to a full parse), only
slower to read.

- `run`         a run began (manifest, its digest, options; never the key)
- `started`     written just before a request is sent, so a crash leaves evidence of what
                might have been billed
- `submitted`   (`--api v2`) the request was queued: its `request_id`, before the first poll
- `retry`       an attempt failed and will be tried again (`billed`, `cost`, `delay`)
- `succeeded`   written only after the output file is in place
- `failed`      with `error`, `http_status`, `retryable`, `attempts`, `billed`
- `interrupted` the run stopped around this job: not its failure, the next run does it
- `unwritten`   paid for (`billed: billed`, `cost`, `request_id`), but not written: the
                file could not be, or the answer's image was cut off on the way
- `run_end`     a run ended (why, and its totals)
- `settled`     an ambiguous attempt settled from the request history (`billed`, `cost`,
                `request_id`, and `settles` naming the attempt: its `started` ts and number).
                A `succeeded` line with `recovered: true` and `settles` is the image of such
                an attempt, downloaded instead of paid again (batchgen/settle/)

New fields may be added at the end of a line; readers ignore what they do not know.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypedDict

VERSION: Final = 1
DEFAULT_NAME: Final = "ledger.jsonl"

Billed = Literal["no", "maybe", "billed"]  # what an attempt cost: nothing, perhaps, its price
BILLED: Final[frozenset[str]] = frozenset({"no", "maybe", "billed"})
JOB_STATUSES: Final = frozenset({"started", "succeeded", "failed", "interrupted", "unwritten"})
SETTLED: Final = "settled"  # not a job status: it settles one attempt of the job
SUBMITTED: Final = "submitted"  # not a job status: the open attempt's v2 request id
RETRY: Final = "retry"  # not a job status: it closes one attempt
OUTCOMES: Final = frozenset({RETRY, "failed", "interrupted", "unwritten", "succeeded"})

Record = dict[str, Any]


class Settles(TypedDict):
    """Which attempt a settling line settles: its `started` line's `ts` and `attempt`."""

    started: str
    attempt: int


def billed_of(value: object) -> Billed:
    """A line's `billed`, as every reader takes it: a missing or unknown value is "no"
    (as the readers always took it; batchgen writes only the three)."""
    if value == "maybe":
        return "maybe"
    return "billed" if value == "billed" else "no"


# -- the envelope ---------------------------------------------------------------------


def timestamp(now: float | None = None) -> str:
    """UTC to the millisecond, like 2026-11-27T02:40:16.123Z."""
    now = time.time() if now is None else now
    second = math.floor(now)
    micros = round((now - second) * 1e6)  # as datetime rounds, before isoformat truncates
    if micros == 1_000_000:
        second, micros = second + 1, 0
    return f"{_second(second)}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=4)
def _second(second: int) -> str:
    """Cached: two lines a job share a second with many others on a busy run."""
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def envelope(record: Mapping[str, Any], now: float | None = None) -> Record:
    """A constructor's record as a line: `v` and `ts` first, as the scanner wants."""
    return {"v": VERSION, "ts": timestamp(now), **record}


def encode(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


# -- one constructor per line type (each starts with job_id, status) -------------------


def run(run_id: str, *, manifest: str, manifest_sha256: str, model: str, price: float,
        options: Mapping[str, Any]) -> Record:  # fmt: skip
    return {"job_id": None, "status": "run", "run_id": run_id, "manifest": manifest,
            "manifest_sha256": manifest_sha256, "model": model, "price": price,
            "options": dict(options)}  # fmt: skip


def run_end(run_id: str, *, stopped: str | None, succeeded: int, failed: int,
            spent: float) -> Record:  # fmt: skip
    return {"job_id": None, "status": "run_end", "run_id": run_id, "stopped": stopped,
            "succeeded": succeeded, "failed": failed, "spent": spent}  # fmt: skip


def started(job_id: str, *, attempt: int, price: float, params: Mapping[str, Any],
            resend: bool = False, probe: bool = False) -> Record:  # fmt: skip
    """`resend`: the same attempt sent again (it never arrived); `probe`: the one request
    an open breaker lets through."""
    line: Record = {"job_id": job_id, "status": "started", "attempt": attempt}
    if resend:
        line["resend"] = True
    if probe:
        line["probe"] = True
    return {**line, "price": price, "params": params}


def submitted(job_id: str, *, attempt: int, request_id: str) -> Record:
    return {"job_id": job_id, "status": SUBMITTED, "attempt": attempt, "request_id": request_id}


def retry(job_id: str, *, attempt: int, http_status: int | None, error: str, billed: Billed,
          cost: float, delay: float | None, outage: bool = False) -> Record:  # fmt: skip
    line: Record = {"job_id": job_id, "status": RETRY, "attempt": attempt,
                    "http_status": http_status, "error": error, "billed": billed,
                    "cost": cost, "delay": delay}  # fmt: skip
    return {**line, "outage": True} if outage else line


def succeeded(job_id: str, *, output: str, cost: float, size: int, sha256: str, attempts: int,
              headers: Mapping[str, str], params: Mapping[str, Any],
              request_id: str | None = None) -> Record:  # fmt: skip
    """`output`, `cost`, `bytes`, `sha256` in this order, first: `SUCCEEDED` reads them."""
    line: Record = {"job_id": job_id, "status": "succeeded", "output": output, "cost": cost,
                    "bytes": size, "sha256": sha256, "attempts": attempts,
                    "headers": dict(headers), "params": params}  # fmt: skip
    if request_id is not None:
        line["request_id"] = request_id
    return line


def recovered(job_id: str, *, output: str, cost: float, size: int, sha256: str, attempts: int,
              request_id: str, params: Mapping[str, Any], settles: Settles) -> Record:  # fmt: skip
    """The `succeeded` line of an image downloaded from the request history instead of
    paid again (batchgen/settle/): the writer's order first, then what it settles."""
    headers = {"x-request-id": request_id}
    line = succeeded(job_id, output=output, cost=cost, size=size, sha256=sha256,
                     attempts=attempts, headers=headers, params=params)  # fmt: skip
    return {**line, "recovered": True, "request_id": request_id, "settles": settles}


def failed(job_id: str, *, error: str, http_status: int | None, retryable: bool, attempts: int,
           billed: Billed, cost: float, params: Mapping[str, Any],
           request_id: str | None = None, settles: Settles | None = None) -> Record:  # fmt: skip
    """With `settles`: a v2 request whose poll said FAILED (`request_id`: its id), the
    end of the attempt it names."""
    line: Record = {"job_id": job_id, "status": "failed", "error": error,
                    "http_status": http_status, "retryable": retryable, "attempts": attempts,
                    "billed": billed, "cost": cost, "params": params}  # fmt: skip
    if settles is not None:
        line |= {"request_id": request_id, "polled": True, "settles": settles}
    return line


def interrupted(job_id: str, *, error: str, http_status: int | None = None,
                billed: Billed | None = None, cost: float = 0.0,
                params: Mapping[str, Any] | None = None) -> Record:  # fmt: skip
    """Without `billed`: nothing was sent (only the error is said)."""
    line: Record = {"job_id": job_id, "status": "interrupted"}
    if billed is None:
        return {**line, "error": error}
    return {**line, "http_status": http_status, "error": error, "billed": billed,
            "cost": cost, "params": params}  # fmt: skip


def unwritten(line: Mapping[str, Any], error: str) -> Record:
    """The `succeeded` line an image would have had, turned into what happened: paid
    for, not on disk. Keeps the service's request id, so a later run can fetch it."""
    headers = line.get("headers") or {}
    return {**line, "status": "unwritten", "billed": "billed", "error": error,
            "request_id": headers.get("x-request-id")}  # fmt: skip


def cut_short(job_id: str, *, error: str, attempts: int, cost: float,
              params: Mapping[str, Any], request_id: str) -> Record:  # fmt: skip
    """A 200 whose image was cut off on the way: paid for, not on disk, as `unwritten`
    says, with the service's id, so settlement downloads it instead of paying again."""
    return {"job_id": job_id, "status": "unwritten", "billed": "billed", "error": error,
            "request_id": request_id, "cost": cost, "attempts": attempts,
            "params": params}  # fmt: skip


def settled(job_id: str, *, billed: Billed, cost: float, request_id: str | None,
            history_status: str | None, settles: Settles,
            polled: bool = False) -> Record:  # fmt: skip
    """`polled`: a v2 request whose end its poll told (no history row)."""
    line: Record = {"job_id": job_id, "status": SETTLED, "billed": billed, "cost": cost,
                    "request_id": request_id, "history_status": history_status}  # fmt: skip
    if polled:
        line["polled"] = True
    return {**line, "settles": settles}


# -- what the scanner matches without a full parse: the constructors' key order ----------

# {"v":1,"ts":...,"job_id":...,"status":...,   (every line `envelope` makes of a job's)
PREFIX: Final = re.compile(rb'\{"v":1,"ts":"[^"\\]*","job_id":"([0-9a-f]+)","status":"([a-z_]+)",')
# ..."output":...,"cost":...,"bytes":...,"sha256":...   (right after a `succeeded` PREFIX)
SUCCEEDED: Final = re.compile(
    rb'"output":"([^"\\]*)","cost":[-0-9.e]+,"bytes":(\d+),"sha256":"([0-9a-f]{64})"[,}]'
)
MAYBE: Final = b'"billed":"maybe"'  # an attempt that may have been billed, by its bytes
