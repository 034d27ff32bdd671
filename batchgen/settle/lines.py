"""The ledger lines settlement writes (format `v: 1`; new fields and one new status
only), each naming the attempt it settles, `"settles": {"started": TS, "attempt": N}`
(the `ts` and `attempt` of its `started` line, in the same ledger) (pure):

- `succeeded` with `recovered: true`, `request_id`, `settles`: the image was fetched;
- `settled` with `billed: "billed"`, `cost`, `request_id`: billed, no image needed (the job
  was done already, or another attempt's image was fetched, or the output has expired);
- `settled` with `billed: "no"`, `cost: 0`: not billed; the job runs again as it would have;
- `failed` of a v2 request that ended FAILED, for good, and `settled` with `polled: true`
  for one whose end its poll told.
"""

from __future__ import annotations

import hashlib
from typing import Any

from batchgen.history import Row
from batchgen.ledger import schema
from batchgen.ledger.fold import Attempt
from batchgen.ledger.schema import Billed
from batchgen.settle.decision import Decision, Verdict


def _settles(attempt: Attempt) -> schema.Settles:
    return {"started": attempt.started, "attempt": attempt.attempt}


def queued_line(attempt: Attempt, billed: Billed, cost: float) -> dict[str, Any]:
    """A `settled` line for a v2 request whose end its poll told."""
    return schema.settled(attempt.job_id, billed=billed, cost=cost,
                          request_id=attempt.request_id, history_status=None,
                          settles=_settles(attempt), polled=True)  # fmt: skip


def failed_line(attempt: Attempt, error: str) -> dict[str, Any]:
    """The `failed` line of a v2 request that ended FAILED: for good, not billed."""
    return schema.failed(attempt.job_id, error=error, http_status=422, retryable=False,
                         attempts=attempt.attempt, billed="no", cost=0.0,
                         params=dict(attempt.params), request_id=attempt.request_id,
                         settles=_settles(attempt))  # fmt: skip


def recovered_line(attempt: Attempt, row: Row, output: str, body: bytes) -> dict[str, Any]:
    """The `succeeded` line of an image fetched from the history."""
    return schema.recovered(
        attempt.job_id, output=output,
        cost=row.cost if attempt.ambiguous else 0.0,  # an unwritten one was counted
        size=len(body), sha256=hashlib.sha256(body).hexdigest(), attempts=attempt.attempt,
        request_id=row.request_id, params=dict(attempt.params), settles=_settles(attempt),
    )  # fmt: skip


def settled_line(decision: Decision) -> dict[str, Any]:
    """The `settled` line of a decision: billed (its row's cost and id) or not."""
    attempt, row = decision.attempt, decision.row
    billed = decision.verdict is not Verdict.NOT_BILLED
    return schema.settled(
        attempt.job_id, billed="billed" if billed else "no",
        cost=row.cost if billed and row is not None else 0.0,
        request_id=row.request_id if row is not None else None,
        history_status=row.status if row is not None else None, settles=_settles(attempt),
    )  # fmt: skip
