"""Settlement as a property: for random interleavings of lost answers, crashes, lagging
history rows and settlement passes over a simulated ledger, settlement never gives a job two
successes, never drops a billed image, and the report's money is the service's charges."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen import api, ledger, settle, summaries
from batchgen.history import Row

PRICE = api.PRICE_USD
LAG = 30.0
T0 = 1_780_000_000.0
OUTCOMES = ("ok", "maybe_billed", "maybe_not", "failed_500", "crash")


@dataclass
class Service:
    rows: list[tuple[Row, float]] = field(default_factory=list)  # (row, visible from)
    charges: float = 0.0
    billed_jobs: set[str] = field(default_factory=set)
    ids: int = 0

    def request(self, job: str, params: dict[str, Any], at: float, billed: bool | None,
                delay: float) -> str | None:  # fmt: skip
        """A request reaching the service (billed None: it never did)."""
        if billed is None:
            return None
        self.ids += 1
        rid = f"req-{self.ids}"
        body = {**params, "image_file": "https://example.com/a.jpg"}
        status = "COMPLETED" if billed else "FAILED"
        url = f"https://out.example/{rid}.jpg" if billed else None
        row = Row(rid, status, PRICE if billed else 0.0, body, url, at + 0.2, api.MODEL)
        self.rows.append((row, at + 0.2 + delay))
        if billed:
            self.charges += PRICE
            self.billed_jobs.add(job)
        return rid

    def visible(self, now: float) -> list[Row]:
        return [row for row, shown in self.rows if shown <= now]


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, at: float, record: dict[str, Any]) -> None:
        with self.path.open("ab") as handle:
            handle.write(ledger.encode({"v": 1, "ts": ledger.timestamp(at), **record}))


def params_of(job: str) -> dict[str, Any]:
    return {"image_file": "https://example.com/a.jpg", "prompt": f"p {job}", "seed": 101}


def settle_pass(path: Path, service: Service, now: float, book: Ledger) -> set[str]:
    """One pass of the engine's pure part over the ledger; returns the jobs left unknown."""
    view = settle.read_view([path])
    state = ledger.load_state([path])
    rows = service.visible(now)
    by_id = {row.request_id: row for row in rows}
    unknown: set[str] = set()
    recovered: set[str] = set()  # as Settler._apply: the first image fetched, the rest settled
    for job, attempts in view.attempts.items():
        wanted = settle.params_keys(params_of(job))
        mine = [r for r in rows if r.request_id not in view.claimed
                and r.body is not None and settle.body_keys(r.body) == wanted]  # fmt: skip
        record = state.records.get(job)
        done = record is not None and record.status == "succeeded"
        for decision in settle.decide(attempts, mine, now=now, lag=LAG, done=done,
                                      settled=view.settled, by_id=by_id):  # fmt: skip
            if decision.verdict is settle.Verdict.UNKNOWN:
                unknown.add(job)
            elif decision.recover and decision.row is not None and job not in recovered:
                line = settle.recovered_line(decision.attempt, decision.row, f"{job}.jpg", b"x")
                book.append(now, line)
                recovered.add(job)
            else:
                book.append(now, settle.settled_line(decision))
    return unknown


round_strategy = st.lists(
    st.tuples(
        st.sampled_from(OUTCOMES),
        st.booleans(),  # a crash's request: billed or not ...
        st.booleans(),  # ... or never reached the service
        st.floats(0.0, LAG - 1.0),  # how long its row takes to show
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    jobs=st.integers(1, 3),
    rounds=st.lists(st.tuples(round_strategy, st.floats(0.0, 90.0)), min_size=1, max_size=4),
)
def test_settlement_never_pays_twice_never_drops_and_counts_right(
    tmp_path_factory: Any,
    jobs: int,
    rounds: list[tuple[list[tuple[str, bool, bool, float]], float]],
) -> None:
    path = tmp_path_factory.mktemp("sim") / "ledger.jsonl"
    book, service = Ledger(path), Service()
    names = [f"{n:032x}" for n in range(1, jobs + 1)]
    now = T0
    held: set[str] = set()
    for steps, gap in rounds:
        book.append(now, {"job_id": None, "status": "run", "model": api.MODEL})
        state = ledger.load_state([path])
        todo = [j for j in names if j not in held and not (
            (r := state.records.get(j)) is not None and r.status == "succeeded")]  # fmt: skip
        moves = iter(steps)
        crashed = False
        for job in todo:
            for attempt in range(1, 4):
                move = next(moves, None)
                if move is None:
                    crashed = True  # the run stops here: the rest waits for the next one
                    break
                outcome, billed, reached, delay = move
                params = params_of(job)
                book.append(now, {"job_id": job, "status": "started", "attempt": attempt,
                                  "price": PRICE, "params": params})  # fmt: skip
                started = now
                now += 1.0
                if outcome == "crash":
                    service.request(job, params, started, billed if reached else None, delay)
                    crashed = True
                    break
                if outcome == "ok":
                    rid = service.request(job, params, started, True, delay)
                    book.append(now, {"job_id": job, "status": "succeeded", "output": f"{job}.jpg",
                                      "cost": PRICE, "bytes": 1, "sha256": "0" * 64,
                                      "headers": {"x-request-id": rid}, "params": params})  # fmt: skip
                    break
                if outcome in ("maybe_billed", "maybe_not"):
                    service.request(job, params, started, outcome == "maybe_billed", delay)
                    book.append(now, {"job_id": job, "status": "retry", "attempt": attempt,
                                      "billed": "maybe", "cost": PRICE})  # fmt: skip
                else:
                    service.request(job, params, started, False, delay)
                    book.append(now, {"job_id": job, "status": "retry", "attempt": attempt,
                                      "billed": "no", "cost": 0.0})  # fmt: skip
            else:
                book.append(now, {"job_id": job, "status": "failed", "retryable": True,
                                  "billed": "no", "cost": 0.0})  # fmt: skip
            if crashed:
                break
        if not crashed:
            book.append(now, {"job_id": None, "status": "run_end"})
        now += gap
        held = settle_pass(path, service, now, book)  # what the next run would hold back
    now += 10 * LAG
    assert settle_pass(path, service, now, book) == set()  # everything is decided in the end
    assert settle_pass(path, service, now + 1, book) == set()  # and settled once, for good
    records = list(ledger.read(path))
    successes: dict[str, int] = {}
    for record in records:
        if record["status"] == "succeeded":
            successes[record["job_id"]] = successes.get(record["job_id"], 0) + 1
    assert all(count == 1 for count in successes.values()), successes
    assert service.billed_jobs <= set(successes), "a billed image was dropped"
    summary = summaries.summarize([path])
    assert summary.possibly_billed == 0
    assert round(summary.spent, 6) == round(service.charges, 6)
