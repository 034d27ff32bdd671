"""Whole runs as a property: random upstream faults (500s, 502s, 503s, billed and unbilled
504s, 200s cut off halfway, a 400 or a 429 now and then) scripted into the bundled emulator,
random --concurrency, --max-attempts and --max-cost, one run or more over the same --out,
settlement on; after each run and after the last, the money invariants the product
promises hold:

1. No job is paid twice (the emulator's charges per request fingerprint). Every charge of
   this fault model is a 200, whole or cut off, or a billed 504; each is the job's image,
   or its image is recovered from the request history (by its row's id for a cut 200, by
   its body for a 504) instead of paid again. No job here legitimately needs a second
   paid request: that takes an image the history cannot give (an output expired, a
   history down, --no-reconcile, a 200 that is no image), none of which these runs meet.
   And no billed image is dropped: after a run that did not stop, every charged job is done.
2. Every job the plan runs is accounted for once: succeeded + failed + not_run + held_back
   == plan.to_run (to_run: the jobs less those done, and less those failed for good unless
   --retry-failed; held-back jobs are among them). The ledger agrees: the jobs done after
   the run are plan.done + succeeded.
3. The run's money brackets the service's: spent <= charged <= spent + possibly billed,
   equal when nothing is possibly billed; so for the report over all the runs; a first
   run's result is what its ledger's report says.
4. A run that did not stop ran every job: nothing not_run or held back, nothing possibly
   billed left; --max-cost bounds what the service charged in the run.
5. Every `succeeded` line names a whole image on disk with the line's sha256 and size.

`test_runs_...` is the brief's model: history lag 0 (settlement decides at once), v1,
the default price. `test_slow_runs_...` widens it: a history that lags (real time; jobs
held back within a run and across runs), the v2 queue, latency, 5xx answers without a
request id, short outage limits, up to four runs with --retry-failed, another price.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import batchgen
from batchgen import api, ledger
from batchgen.emulator import RunningEmulator
from batchgen.emulator.state import STATE
from tests.runs import FakeSleep, emulated, job_fingerprints, make_project, run

PRICE = api.PRICE_USD
STATUSES = (200, 500, 502, 503, 504, 400, 429)
EPS = 1e-6
EXAMPLES = int(os.environ.get("BATCHGEN_PROPERTY_EXAMPLES", "100"))


@dataclass(frozen=True)
class Run:
    """One run's options, and the faults scripted just before it (after the first)."""

    concurrency: int
    max_attempts: int
    max_cost: float | None  # in prices
    script: tuple[int, ...] = ()
    retry_failed: bool = False
    outage_limit: float = 600.0
    wait_out_lag: bool = True  # before it, let the history's lag pass


@dataclass(frozen=True)
class World:
    """The emulator, and what runs against it."""

    jobs: int
    script: tuple[int, ...]
    billed_504_share: float
    fault_cut: float
    seed: int
    runs: tuple[Run, ...]
    rates: tuple[float, float, float] = (0.0, 0.0, 0.0)  # drawn 500s, 502s, 504s
    lag: float = 0.0  # the history's (and the run's history_lag)
    latency: float = 0.0
    fault_request_id: bool = True
    api: str = "v1"
    v2_faults: tuple[float, float] = (0.0, 0.0)  # v2_submit_504_share, v2_fail
    price: float = PRICE  # the manifest's and the service's alike


scripts = st.lists(st.sampled_from(STATUSES), max_size=10).map(tuple)


def runs(slow: bool) -> st.SearchStrategy[Run]:
    return st.builds(
        Run,
        concurrency=st.integers(1, 4 if slow else 2),
        max_attempts=st.integers(1, 6 if slow else 4),
        max_cost=st.one_of(st.none(), st.sampled_from([0, 0.5, 1, 1.5, 2, 3, 5])),
        script=scripts,
        retry_failed=st.booleans() if slow else st.just(False),
        outage_limit=st.sampled_from([600.0, 3.0, 0.5]) if slow else st.just(600.0),
        wait_out_lag=st.booleans(),
    )


def worlds(slow: bool) -> st.SearchStrategy[World]:
    return st.builds(
        World,
        jobs=st.integers(1, 6 if slow else 4),
        script=scripts,
        billed_504_share=st.sampled_from([0.0, 1.0, 0.5]),
        fault_cut=st.sampled_from([0.0, 0.5, 1.0]),
        seed=st.integers(0, 3),
        runs=st.lists(runs(slow), min_size=1, max_size=4 if slow else 2).map(tuple),
        rates=st.sampled_from([(0.0, 0.0, 0.0), (0.0, 0.0, 0.3), (0.15, 0.1, 0.2)]),
        lag=st.sampled_from([0.02, 0.1, 0.3]) if slow else st.just(0.0),
        latency=st.sampled_from([0.0, 0.003, 0.01]) if slow else st.just(0.0),
        fault_request_id=st.booleans() if slow else st.just(True),
        api=st.sampled_from(["v1", "v2"]) if slow else st.just("v1"),
        v2_faults=st.tuples(st.sampled_from([0.0, 0.3, 1.0]), st.sampled_from([0.0, 0.3])),
        price=st.sampled_from([PRICE, 0.08]) if slow else st.just(PRICE),
    )


def ledger_lines(out: Path) -> list[dict[str, Any]]:
    return [line for path in ledger.ledgers_in(out) for line in ledger.read(path)]


def check_run(result: batchgen.RunResult, charged: float, requests: int, how: Run,
              price: float, out: Path) -> None:  # fmt: skip
    """Invariants 2, 3 and 4 of one run; `charged`, `requests`: the service's, in it."""
    plan = result.plan
    where = (result.stopped, result.succeeded, result.failed, result.not_run,
             result.held_back, plan.to_run, result.spent, result.possibly_billed,
             charged)  # fmt: skip
    # 2. every job of the plan is accounted for, once
    assert plan.done + plan.failed + plan.to_run == plan.jobs, plan
    assert result.unwritten == 0, where  # every image here can be written
    counted = result.succeeded + result.failed + result.not_run + result.held_back
    assert counted == plan.to_run, where
    state = ledger.load_state(ledger.ledgers_in(out))
    done = {job for job in state.records if state.is_done(job)}
    assert len(done) == plan.done + result.succeeded, (where, len(done), plan.done)
    assert result.requests == requests, (where, result.requests, requests)
    # 3. this run's money brackets what the service charged for its requests
    assert result.spent <= charged + EPS, where
    assert charged <= result.spent + result.possibly_billed + EPS, where
    if result.possibly_billed == 0:
        assert abs(result.spent - charged) < EPS, where
    # 4. a run that did not stop ran everything, and settled it
    if result.stopped is None:
        assert (result.not_run, result.held_back, result.possibly_billed) == (0, 0, 0), where
        assert result.succeeded + result.failed == plan.to_run, where
        failed = {job for job, record in state.records.items() if record.status == "failed"}
        assert len(failed) == result.failed + plan.failed, (where, failed)
    if how.max_cost is not None:
        assert charged <= how.max_cost * price + 1e-9, where


def check_out(out: Path, served: RunningEmulator, fingerprints: dict[str, str],
              last: batchgen.RunResult) -> None:  # fmt: skip
    """Invariants 1, 3 (the report) and 5 over everything the runs left."""
    records = ledger_lines(out)
    # 1. nobody paid twice
    charges = {job: served.stats.charges.get(fp, 0) for job, fp in fingerprints.items()}
    story = [(r["job_id"][:6] if r.get("job_id") else None, r["status"]) for r in records]
    assert max(charges.values()) <= 1, (charges, story)
    # 5. each success names a whole image, as its line says
    successes = Counter(r["job_id"] for r in records if r["status"] == "succeeded")
    assert all(n == 1 for n in successes.values()), (successes, story)
    for record in records:
        if record["status"] == "succeeded":
            path = out / record["output"]
            assert path.is_file(), record
            data = path.read_bytes()
            assert api.image_problem(data) is None, record
            assert hashlib.sha256(data).hexdigest() == record["sha256"], record
            assert len(data) == record["bytes"], record
    state = ledger.load_state(ledger.ledgers_in(out))
    done = {job for job in state.records if state.is_done(job)}
    assert done == set(successes), (done, successes)
    # 1. no billed image dropped
    if last.stopped is None:
        assert {job for job, n in charges.items() if n} <= done, (charges, story)
    # 3. the report's money brackets the service's
    summary = batchgen.report(out)
    spent = served.stats.spent
    money = (summary.spent, summary.possibly_billed, spent)
    assert summary.spent <= spent + EPS, money
    assert spent <= summary.spent + summary.possibly_billed + EPS, money
    if summary.possibly_billed == 0:
        assert abs(summary.spent - spent) < EPS, money
    if last.stopped is None:  # it settled what earlier runs left, and all of its own
        assert summary.possibly_billed == 0, money


async def quiet(served: RunningEmulator) -> None:
    """Until the emulator's queued v2 requests have ended (and billed, or not)."""
    while tasks := list(served.app[STATE].tasks):
        await asyncio.wait(tasks)


async def scenario(root: Path, world: World) -> None:
    m = make_project(root, images=1, prompts=1, seeds=world.jobs)
    if world.price != PRICE:
        m.write_text(f"price: {world.price}\n" + m.read_text())
    fingerprints = job_fingerprints(m)
    out = root / "out"
    fault_500, fault_502, fault_504 = world.rates
    submit_504, v2_fail = world.v2_faults if world.api == "v2" else (0.0, 0.0)
    async with emulated(
        script=world.script, billed_504_share=world.billed_504_share,
        fault_cut=world.fault_cut, seed=world.seed, history_lag=world.lag,
        fault_500=fault_500, fault_502=fault_502, fault_504=fault_504, price=world.price,
        latency=world.latency, fault_request_id=world.fault_request_id,
        v2_submit_504_share=submit_504, v2_fail=v2_fail,
    ) as served:  # fmt: skip
        stats = served.stats
        result: batchgen.RunResult | None = None
        for n, how in enumerate(world.runs):
            if n:
                served.app[STATE].script = deque(how.script)  # this run's faults
                if how.wait_out_lag:
                    await asyncio.sleep(world.lag)
            spent, sent = stats.spent, stats.requests_total + stats.v2_submits
            result = await run(
                m, served, out, sleep=FakeSleep(), history_lag=world.lag, api=world.api,
                typical_latency=0.01, concurrency=how.concurrency,
                max_attempts=how.max_attempts, retry_failed=how.retry_failed,
                outage_limit=how.outage_limit,
                max_cost=None if how.max_cost is None else how.max_cost * world.price,
            )  # fmt: skip
            await quiet(served)
            if n == 0:
                assert result.plan.to_run == world.jobs  # an empty --out
                summary = batchgen.report(out)  # the first run's ledger says what it did
                assert (summary.spent, summary.possibly_billed) == (
                    result.spent, result.possibly_billed), (summary, result)  # fmt: skip
            check_run(result, round(stats.spent - spent, 6),
                      stats.requests_total + stats.v2_submits - sent, how, world.price,
                      out)  # fmt: skip
            event(f"run {n + 1}: {result.stopped.reason.value if result.stopped else 'ran'}")
            event(f"run {n + 1}: held back {bool(result.held_back)}")
        assert result is not None
        check_out(out, served, fingerprints, result)


@settings(
    max_examples=EXAMPLES, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)  # fmt: skip
@given(world=worlds(slow=False))
def test_runs_never_pay_twice_count_every_job_and_money_right(
    tmp_path_factory: pytest.TempPathFactory, world: World
) -> None:
    asyncio.run(scenario(tmp_path_factory.mktemp("run"), world))


@pytest.mark.slow
@settings(
    max_examples=max(1, EXAMPLES // 2), deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)  # fmt: skip
@given(world=worlds(slow=True))
def test_slow_runs_with_a_lagging_history_v2_and_outages_keep_the_money_right(
    tmp_path_factory: pytest.TempPathFactory, world: World
) -> None:
    asyncio.run(scenario(tmp_path_factory.mktemp("run"), world))
