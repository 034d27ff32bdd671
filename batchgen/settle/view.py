"""What settlement reads of the ledgers: every attempt of every job with something to
settle, the attempts already settled, the request ids lines claim, the manifests named.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from batchgen import ledger
from batchgen.ledger import scan as ledger_scan
from batchgen.ledger.fold import Attempt, Key


@dataclass
class LedgerView:
    """What settlement needs of the ledgers: every attempt of every job with something
    to settle, the keys already settled and the request ids lines claim."""

    attempts: dict[str, list[Attempt]] = field(default_factory=dict)
    settled: set[Key] = field(default_factory=set)
    claimed: set[str] = field(default_factory=set)
    manifests: dict[Path, list[tuple[str, str]]] = field(default_factory=dict)  # (name, sha)

    def unsettled(self) -> Iterator[Attempt]:
        for attempts in self.attempts.values():
            for attempt in attempts:
                if attempt.key not in self.settled and (
                    attempt.ambiguous or attempt.status == "unwritten"
                ):
                    yield attempt


def read_view(paths: Iterable[Path]) -> LedgerView:
    """Every attempt, in `paths`, of every job with something to settle in any of them
    (its lines in the other ledgers count too: a success there claims its request id).
    The candidates come from a scan that parses few lines; their attempts from the one
    fold every reader uses (`ledger.fold`)."""
    paths = list(paths)
    candidates: set[str] = set()
    for path in paths:
        candidates |= ledger_scan.candidates(path)
    if not candidates:
        return LedgerView()
    folded = ledger.fold(ledger.ledgers(paths), attempts_for=candidates)
    return LedgerView(folded.attempts, folded.settled, folded.claimed, folded.manifests)
