"""Settlement: what the v1 API leaves ambiguous, settled from the service's request history.

A request whose answer was lost (a 502/504, a timeout after sending, a crash with it in
flight) may or may not have been billed: the ledger says `billed: "maybe"`, or has a
`started` line with no outcome. A paid image that could not be written is `unwritten`,
with the service's request id. The request history (`batchgen.history`) knows: each row
carries the request body as sent, the money charged, and a public URL of the image.
A billed attempt of a job not done is recovered: its image downloaded and put in place,
a `succeeded` line with `recovered: true` after it. Nothing is sent again.
`summaries` counts an attempt as possibly billed until a line settles it; then as spent
for what the service charged, or not at all. So a report's money equals the service's.

    view.py       the ledgers read: each job's attempts, what is settled, ids claimed
    matching.py   which history rows are a job's: keys of parameters and bodies (pure)
    decision.py   decide: BILLED, NOT_BILLED or UNKNOWN for each attempt (pure)
    lines.py      the ledger lines settlement writes, each naming what it settles (pure)
    targets.py    where a recovered image goes
    recover.py    a billed image downloaded and put in place, its line after it
    ledger_io.py  LedgerIO: where settlement reads and writes (the local files)
    queued.py     the v2 step: recorded request ids polled first
    settler.py    Settler: one history; every unsettled attempt of some ledgers
    report.py     SettleReport: what a pass did, and its line for the user
    folder.py     settle_out: one pass over an out folder, the ledgers it may lock
    passes.py     a run's passes: settle first, again while undecided; results combined
    store.py      the same on an object store: StoreIO, resume state, settle_store

`run` settles on resume, before anything is sent (`passes.settle_first`), and
`batchgen reconcile` on its own (`settle_out`). `passes` and `store` sit above the runner
and the object store, and are imported as `batchgen.settle.passes` and
`batchgen.settle.store`; the names below are the ones the rest of batchgen uses, as
`settle.X`.
"""

from batchgen.settle.decision import HISTORY_LAG_S, Decision, Verdict, decide
from batchgen.settle.folder import settle_out
from batchgen.settle.ledger_io import LedgerIO
from batchgen.settle.lines import recovered_line, settled_line
from batchgen.settle.matching import body_keys, params_keys
from batchgen.settle.report import SettleReport
from batchgen.settle.settler import Settler
from batchgen.settle.targets import Targets
from batchgen.settle.view import LedgerView, read_view

__all__ = [
    "HISTORY_LAG_S",
    "Decision",
    "LedgerIO",
    "LedgerView",
    "SettleReport",
    "Settler",
    "Targets",
    "Verdict",
    "body_keys",
    "decide",
    "params_keys",
    "read_view",
    "recovered_line",
    "settle_out",
    "settled_line",
]
