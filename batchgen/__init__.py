"""batchgen: bulk image-to-image remixing with manifests, a resumable ledger and dry-run costs.

    import batchgen

    plan = batchgen.plan("jobs/grid.yaml", out="results")     # no network
    result = batchgen.run("jobs/grid.yaml", out="results")     # $SEGMIND_API_KEY
    summary = batchgen.report("results")                       # from ledgers alone
    balance = batchgen.credits()                               # USD, $SEGMIND_API_KEY

`run_async` is `run` for code already inside an event loop. The CLI (`batchgen ...`) is a
thin client of these calls.
"""

from batchgen.errors import (
    ApiError,
    ApiStatusError,
    BatchgenError,
    InputError,
    LedgerError,
    LockedError,
    Problem,
    ServiceError,
    TransportError,
)
from batchgen.events import (
    Event,
    ImagesUploaded,
    JobFinished,
    JobRetrying,
    JobStarted,
    JobThrottled,
    Listener,
    LockWaiting,
    RunPlanned,
    RunStopping,
    Settled,
)
from batchgen.grid import Job
from batchgen.library import (
    credits,
    credits_async,
    jobs,
    plan,
    reconcile,
    reconcile_async,
    report,
    run,
    run_async,
)
from batchgen.manifest import Manifest
from batchgen.manifest import load as load_manifest
from batchgen.planning import Plan
from batchgen.results import RunResult
from batchgen.settle import SettleReport, Verdict
from batchgen.stops import Stop, StopReason
from batchgen.summaries import Summary

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "ApiStatusError",
    "BatchgenError",
    "Event",
    "ImagesUploaded",
    "InputError",
    "Job",
    "JobFinished",
    "JobRetrying",
    "JobStarted",
    "JobThrottled",
    "LedgerError",
    "Listener",
    "LockWaiting",
    "LockedError",
    "Manifest",
    "Plan",
    "Problem",
    "RunPlanned",
    "RunResult",
    "RunStopping",
    "ServiceError",
    "SettleReport",
    "Settled",
    "Stop",
    "StopReason",
    "Summary",
    "TransportError",
    "Verdict",
    "__version__",
    "credits",
    "credits_async",
    "jobs",
    "load_manifest",
    "plan",
    "reconcile",
    "reconcile_async",
    "report",
    "run",
    "run_async",
]
