"""Ledgers written by an older release still read to the same numbers.

`tests/fixtures/ledger_v1/` holds ledgers that batchgen wrote at commit 69022dd (real
runs against the emulator: retries, billed 504s, failures for good and for now, a refused
key, an unwritten image, reconcile, a killed run with a torn last line, two shards, the
v2 queue API), and `expected.json` what that release's readers made of them: the report,
the resume state, the gallery's cells and settlement's view. The format is `v: 1` for
good: today's readers must agree with those numbers, which were never computed by them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchgen import ledger
from tests.fixtures.ledger_v1 import generate

FIXTURE = Path(__file__).parent / "fixtures" / "ledger_v1"
EXPECTED: dict[str, Any] = json.loads((FIXTURE / "expected.json").read_text())


@pytest.mark.parametrize("scenario", generate.SCENARIOS)
@pytest.mark.parametrize("reader", ["report", "per_ledger_report", "state", "gallery", "view"])
def test_an_old_release_s_ledgers_read_as_that_release_read_them(
    scenario: str, reader: str
) -> None:
    seen = generate.expected(FIXTURE / scenario)
    assert seen[reader] == EXPECTED[scenario][reader]


def test_the_fixture_holds_every_kind_of_line_it_claims() -> None:
    statuses: dict[str, int] = {}
    for path in FIXTURE.rglob("ledger*.jsonl"):
        for record in ledger.read(path):
            statuses[record["status"]] = statuses.get(record["status"], 0) + 1
            assert record["v"] == 1
    kinds = {"run", "run_end", "started", "retry", "succeeded", "failed", "interrupted",
             "unwritten", "settled", "submitted"}  # fmt: skip
    assert kinds <= set(statuses), statuses


def test_the_numbers_a_person_would_check() -> None:
    """A few of the expected numbers, spelled out: what each scenario left behind."""
    unfinished = EXPECTED["unfinished"]["report"]
    assert (unfinished["jobs"], unfinished["succeeded"], unfinished["failed"]) == (6, 3, 1)
    assert (unfinished["not_finished"], unfinished["unwritten"]) == (1, 1)
    assert unfinished["possibly_billed"] == pytest.approx(2 * 0.063)  # the 504, the crash
    assert EXPECTED["unfinished"]["state"]["cut"] == ["ledger.jsonl"]  # killed: no run_end
    plain = EXPECTED["plain"]["report"]
    assert (plain["succeeded"], plain["possibly_billed"]) == (12, pytest.approx(0.063))
    assert len(EXPECTED["shards"]["per_ledger_report"]) == 2
    assert EXPECTED["v2"]["report"]["failures"] == {
        "HTTP 422: Inference failed: the model could not process this request": 1
    }
