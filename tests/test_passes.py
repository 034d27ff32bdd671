"""A run's passes: what carries from one to the next (`settle.passes`).

A run sends its jobs in up to three passes: after each, the request history settles the
answers it lost, and the next pass sends what was not billed. These drive whole runs
against the emulator where the passes meet: a job failed in one pass is not sent in the
next; --max-cost holds for the run; a job one settlement held and a later one decided
is counted, once; a shard settles its own ledger only."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import batchgen
from batchgen import api
from batchgen.emulator.state import STATE
from tests.hostile import forward
from tests.runs import FakeSleep, emulated, job_fingerprints, lines, make_project, run
from tests.test_settle import charged, done_jobs


async def test_a_job_failed_in_pass_1_is_not_sent_again_in_pass_2(tmp_path: Path) -> None:
    """--max-attempts 1. Job A's only attempt is a 500 (not billed): it fails, retryably.
    Job B's is a 504 the service did not bill: deferred, settled not billed, sent in
    pass 2. Before, pass 2 sent A again too (the plan said it was to run) and the result
    counted it twice; now a later pass sends only what the settlement sent back."""
    m = make_project(tmp_path, images=1, prompts=1, seeds=2)
    out = tmp_path / "out"
    async with emulated(script=(500, 504), billed_504_share=0.0) as served:
        result = await run(m, served, out, max_attempts=1, concurrency=1, sleep=FakeSleep())
    started = Counter(r["job_id"] for r in lines(out) if r["status"] == "started")
    counted = result.succeeded + result.failed + result.not_run + result.held_back
    assert (sorted(started.values()), result.plan.to_run, counted) == ([1, 1], 2, 2), (
        started, result.succeeded, result.failed)  # fmt: skip


async def test_a_held_job_a_later_in_run_settlement_decides_is_counted(tmp_path: Path) -> None:
    """Pass 1: J0's answer is lost to a billed 504 whose row stays PENDING a while: the
    settlement after pass 1 cannot say, so J0 is held from pass 2. J1's 504 was not
    billed: sent again in pass 2, lost again (not billed), so a settlement follows
    pass 2, by when J0's row shows COMPLETED: its image is downloaded. J0's charge is
    this run's money (its 504 was this run's), and its job succeeded in this run.
    Before, only the pass just before a settlement counted as its own: the run said 2
    succeeded, $0.126 spent and $0.063 maybe, against the service's $0.189."""
    m = make_project(tmp_path, images=1, prompts=1, seeds=3)
    fingerprints = job_fingerprints(m)
    out = tmp_path / "out"
    async with emulated(script=(504, 504, 200, 504), billed_504_share=1.0) as served:
        state = served.app[STATE]

        def j1_not_billed() -> None:
            state.config = replace(state.config, billed_504_share=0.0)

        late = RowLateUntilPass2(state, then=j1_not_billed)
        result = await run(m, served, out, concurrency=1, sleep=FakeSleep(), on_event=late)
        spent = served.stats.spent
    assert late.done, late.starts
    assert charged(served, fingerprints) == Counter({1: 3})  # J0's 504, J1's and J2's 200
    assert done_jobs(out) == set(fingerprints)
    assert batchgen.report(out).spent == pytest.approx(spent)
    assert (result.stopped, result.held_back, result.not_run) == (None, 0, 0), result.stopped
    assert (result.succeeded, result.spent, result.possibly_billed) == (
        3,
        pytest.approx(spent),
        0,
    ), (result.succeeded, result.spent, result.possibly_billed, spent)


async def test_a_held_504_found_not_billed_later_leaves_its_budget(tmp_path: Path) -> None:
    """As above, but J0's 504 was not billed either: its row stays PENDING past the
    settlement after pass 1 (J0 held), then shows FAILED by the one after pass 2, so J0
    is sent in pass 3. --max-cost is exactly the three images the service bills: the
    run has the budget for J0 and J1 in pass 3. Before, pass 3 still counted J0's 504
    as possibly billed and stopped for the budget."""
    m = make_project(tmp_path, images=1, prompts=1, seeds=3)
    fingerprints = job_fingerprints(m)
    out = tmp_path / "out"
    async with emulated(script=(504, 504, 200, 504), billed_504_share=0.0) as served:
        late = RowLateUntilPass2(served.app[STATE])
        result = await run(m, served, out, concurrency=1, sleep=FakeSleep(), on_event=late,
                           max_cost=3 * api.PRICE_USD)  # fmt: skip
        spent = served.stats.spent
    assert late.done, late.starts
    assert result.stopped is None, (result.stopped, result.spent, result.possibly_billed)
    assert charged(served, fingerprints) == Counter({1: 3})
    assert done_jobs(out) == set(fingerprints)
    assert result.spent == pytest.approx(spent) and result.possibly_billed == 0


async def test_a_job_held_from_an_earlier_run_and_recovered_in_run_is_counted(
    tmp_path: Path,
) -> None:
    """A killed run left J0's request open; the service billed it, but its row is still
    PENDING when this run settles first: J0 is held back (in the plan's to_run). J1's
    504 (not billed) is deferred; by the settlement after pass 1, J0's row is COMPLETED
    and its image is downloaded. Before, the result counted J1 succeeded and J0
    nowhere: succeeded + failed + not_run + held_back was 1 of the plan's 2."""
    from tests.test_settle import a_crash, send

    m = make_project(tmp_path, images=1, prompts=1, seeds=2)
    fingerprints = job_fingerprints(m)
    out = tmp_path / "out"
    async with emulated(billed_504_share=0.0) as served:
        state = served.app[STATE]
        _, body = a_crash(out, m, job_index=0)
        assert await send(served, body) == 200  # billed; the killed run never heard
        (record,) = list(state.records.oldest_first())
        finished = record.finished_at
        record.finished_at = time.time() + 1e6  # PENDING, for now
        state.script.append(504)  # J1's first request: lost, not billed

        def row_ends(event: batchgen.Event) -> None:
            if isinstance(event, batchgen.JobStarted):
                record.finished_at = finished

        result = await run(m, served, out, concurrency=1, sleep=FakeSleep(), on_event=row_ends)
    assert charged(served, fingerprints) == Counter({1: 2})
    assert done_jobs(out) == set(fingerprints)
    assert result.settlement is not None and result.settlement.recovered == 1
    assert result.plan.to_run == 2
    counted = result.succeeded + result.failed + result.not_run + result.held_back
    assert (counted, result.stopped) == (2, None), (result.succeeded, result.held_back,
                                                    result.stopped)  # fmt: skip


async def test_a_billed_failure_is_not_paid_again_in_the_next_pass(tmp_path: Path) -> None:
    """--max-attempts 1, through a proxy that turns the first 200 into a body that is not
    an image (billed: the service answered 200). J0 fails, retryably, billed. J1's 504
    (not billed) is deferred, so a second pass follows. Before, it sent J0 again: paid
    twice in one run with one attempt allowed."""
    import aiohttp
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    m = make_project(tmp_path, images=1, prompts=1, seeds=2)
    fingerprints = job_fingerprints(m)
    out = tmp_path / "out"
    async with emulated(script=(200, 504), billed_504_share=0.0) as served, \
            aiohttp.ClientSession() as session:  # fmt: skip
        posts = [0]

        async def proxy(request: web.Request) -> web.Response:
            answer = await forward(session, request, served.root)
            if request.method == "POST":
                posts[0] += 1
                if posts[0] == 1 and answer.status == 200:
                    return answer.response(b"<html>an error page from a proxy</html>")
            return answer.response()

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            fake = FakeSleep()
            result = await batchgen.run_async(
                m, out=out, api_base=str(server.make_url("")).rstrip("/") + "/v1",
                api_key=served.api_key, history_base=served.history_base, max_attempts=1,
                concurrency=1, sleep=fake, clock=fake.clock,
            )  # fmt: skip
        finally:
            await server.close()
        spent = served.stats.spent
    statuses = [(r["job_id"][:6], r["status"]) for r in lines(out) if r.get("job_id")]
    assert result.spent == pytest.approx(spent)
    assert sorted(served.stats.charges.get(fp, 0) for fp in fingerprints.values()) == [0, 1], (
        statuses, result.failed, result.succeeded)  # fmt: skip


async def test_a_shard_leaves_its_siblings_ledger_to_it(tmp_path: Path) -> None:
    """Shard 2/2 was killed with a request in flight (billed). Before, shard 1/2's
    settlement took every free ledger of --out, shard 2's too, and downloaded its image
    to recovered/{job_id}.jpg: its targets are shard 1's jobs only, so not where the
    manifest puts it. Now shard 1 settles its own ledger only; shard 2's next run
    downloads its image to its output path."""
    from batchgen import outputs
    from tests.test_settle import send

    m = make_project(tmp_path, images=2, prompts=2, seeds=2)
    out = tmp_path / "out"
    job, body = _crash_in_shard_2(tmp_path, m, out)
    async with emulated() as served:
        assert await send(served, body) == 200  # billed; the killed shard never heard
        first = await run(m, served, out, shard="1/2", sleep=FakeSleep())
        assert first.settlement is None or first.settlement.recovered == 0
        assert not (out / "recovered").exists()
        second = await run(m, served, out, shard="2/2", sleep=FakeSleep())
    assert second.settlement is not None and second.settlement.recovered == 1
    assert (out / outputs.final_path(job.output, "jpg")).is_file()
    assert (first.stopped, second.stopped) == (None, None)
    assert charged(served, job_fingerprints(m)) == Counter({1: 8})  # none paid twice


async def test_a_504_found_not_billed_gives_its_budget_back(tmp_path: Path) -> None:
    """--max-cost of two prices; J0's 504 was not billed: the next pass may still pay
    for J0 and the run finishes."""
    m = make_project(tmp_path, images=1, prompts=1, seeds=2)
    fingerprints = job_fingerprints(m)
    out = tmp_path / "out"
    async with emulated(script=(504,), billed_504_share=0.0) as served:
        result = await run(m, served, out, concurrency=1, sleep=FakeSleep(),
                           max_cost=2 * api.PRICE_USD)  # fmt: skip
        spent = served.stats.spent
    assert result.stopped is None, result.stopped
    assert done_jobs(out) == set(fingerprints)
    assert result.spent == pytest.approx(spent)


@pytest.mark.parametrize("expire_first", [False, True])
async def test_two_billed_504s_of_one_job_are_settled_once(
    tmp_path: Path, expire_first: bool
) -> None:
    """Both of a job's attempts were billed 504s (--no-reconcile); the next run fetches
    one image (the second, when the first's output has expired) and settles the other
    billed: the report's money is the service's, nothing possibly billed."""
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    fingerprints = job_fingerprints(m)
    out = tmp_path / "out"
    async with emulated(script=(504, 504), billed_504_share=1.0) as served:
        first = await run(m, served, out, concurrency=2, sleep=FakeSleep(), max_attempts=2,
                          reconcile=False)  # fmt: skip
        assert first.failed == 1, first
        if expire_first:
            record = next(iter(served.app[STATE].records.oldest_first()))
            record.finished_at = time.time() - 8 * 86400
        result = await run(m, served, out, sleep=FakeSleep())
        spent = served.stats.spent
    assert charged(served, fingerprints) == Counter({2: 1})
    assert done_jobs(out) == set(fingerprints)
    summary = batchgen.report(out)
    assert (summary.spent, summary.possibly_billed) == (pytest.approx(spent), 0)
    assert result.settlement is not None and result.settlement.recovered == 1


def _crash_in_shard_2(tmp_path: Path, m: Path, out: Path) -> tuple[Any, bytes]:
    """A killed shard 2/2's `started` line, for one of its jobs, and the body it sent."""
    from batchgen import grid, manifest
    from batchgen import shard as shards
    from tests.test_settle import a_crash

    job = next(j for j in grid.expand(manifest.load(m)) if shards.shard_of(j.job_id, 2) == 2)
    return a_crash(out, m, job=job, ledger_name="ledger.shard-2-of-2.jsonl")


async def test_a_sibling_shards_unknown_attempt_does_not_leave_this_shard_unsettled(
    tmp_path: Path,
) -> None:
    """Shard 2/2 was killed with a request in flight whose row is still PENDING. Shard
    1/2 runs and finishes every one of its jobs; but its settlement took shard 2's free
    ledger too, and the unknown attempt there was counted as this run's held-back job:
    exit 3 (UNSETTLED), though nothing of shard 1 was left. Now it is shard 2's."""
    from tests.test_settle import send

    m = make_project(tmp_path, images=2, prompts=2, seeds=2)
    out = tmp_path / "out"
    job, body = _crash_in_shard_2(tmp_path, m, out)
    async with emulated() as served:
        assert await send(served, body) == 200
        (record,) = list(served.app[STATE].records.oldest_first())
        record.finished_at = time.time() + 1e6  # PENDING
        result = await run(m, served, out, shard="1/2", sleep=FakeSleep())
    mine = {j for j in done_jobs(out)}
    assert job.job_id not in mine
    assert result.succeeded == result.plan.to_run
    assert (result.held_back, result.stopped) == (0, None), (result.held_back, result.stopped)


class RowLateUntilPass2:
    """A run's event listener for three jobs at --concurrency 1: from the second request
    on (`then` is called there), the first request's history row (J0's) shows nothing
    final, so the settlement after pass 1 holds J0; once J1 starts again in pass 2, the
    row shows its end, for the settlement after pass 2 to decide."""

    def __init__(self, state: Any, *, then: Callable[[], None] | None = None) -> None:
        self.state, self.then = state, then
        self.starts: list[str] = []
        self.hidden: dict[str, float | None] = {}
        self.done = False

    def __call__(self, event: batchgen.Event) -> None:
        if not isinstance(event, batchgen.JobStarted):
            return
        self.starts.append(event.job_id)
        if len(self.starts) == 2:  # J0's 504 is in: its row PENDING for now
            (record,) = list(self.state.records.oldest_first())
            self.hidden[record.request_id] = record.finished_at
            record.finished_at = time.time() + 1e6
            if self.then is not None:
                self.then()
        starts = self.starts
        if len(set(starts)) == 3 and starts[-1] == starts[1] and not self.done:
            for record in self.state.records.oldest_first():  # J1 in pass 2: J0's row ends
                if record.request_id in self.hidden:
                    record.finished_at = self.hidden[record.request_id]
            self.done = True
