"""The ledger: an append-only JSON-lines record of every job's fate.

It is what makes a run resumable without paying twice. One schema, one fold:

    schema.py   the line types (one constructor each) and the patterns the scanner reads
                them by: the format, `v: 1`
    commits.py  the group-commit loop both writers share (and its Pending, WriteFailure)
    writer.py   LedgerWriter: the one writer of a ledger file (its commits, torn tail)
    scan.py     reading ledger files: whole lines, streamed; the fast resume scan
    fold.py     the one fold of lines into each job's state, attempts and money
    state.py    LedgerState: the resume state a plan and a run ask

Every reader folds with `fold`: the resume state, the report (`batchgen.summaries`), the
gallery and settlement's view (`batchgen.settle.read_view`). The names below are the ones
the rest of batchgen uses, as `ledger.X`.
"""

from batchgen.ledger.commits import Pending, WriteFailure, unwritten
from batchgen.ledger.fold import Attempt, Fold, JobRecord, fold
from batchgen.ledger.scan import ledgers, read
from batchgen.ledger.schema import (
    DEFAULT_NAME,
    JOB_STATUSES,
    SETTLED,
    SUBMITTED,
    VERSION,
    Billed,
    encode,
    envelope,
    timestamp,
)
from batchgen.ledger.state import LedgerState, ledgers_in, load_state
from batchgen.ledger.writer import LedgerWriter

__all__ = [
    "DEFAULT_NAME",
    "JOB_STATUSES",
    "SETTLED",
    "SUBMITTED",
    "VERSION",
    "Attempt",
    "Billed",
    "Fold",
    "JobRecord",
    "LedgerState",
    "LedgerWriter",
    "Pending",
    "WriteFailure",
    "encode",
    "envelope",
    "fold",
    "ledgers",
    "ledgers_in",
    "load_state",
    "read",
    "timestamp",
    "unwritten",
]
