"""What a run is told: the pool's knobs (the CLI's flags, as the library passes them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from batchgen import retry


@dataclass(frozen=True)
class RunOptions:
    concurrency: int = 64  # the most in flight; the window follows the rate below it
    max_cost: float | None = None
    max_attempts: int = retry.MAX_ATTEMPTS
    retry_failed: bool = False
    outage_limit: float = retry.OUTAGE_LIMIT_S
    defer_ambiguous: bool = False  # maybe-billed attempts wait for settlement, not a retry
    first_window: int | None = None  # --concurrency given: start with that many in flight
    # what this run's earlier passes used: --max-attempts and --max-cost are the run's
    prior_attempts: Mapping[str, int] = field(default_factory=dict)  # each job's attempts
    prior_money: float = 0.0  # spent or possibly billed
