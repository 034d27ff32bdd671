"""`--api v2` against the bundled emulator: submit, record the id, poll, download. Every job
charged once, polls a small multiple of images, FAILED for good and free, lost submissions
and crashes settled (by polling the recorded id while its record lives, else the history)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import batchgen
from batchgen import api, grid, ledger, manifest, queue_client, summaries
from batchgen.emulator import RunningEmulator
from batchgen.emulator.v2 import FAILED_MESSAGE
from batchgen.errors import InputError
from batchgen.images import EncodedImages, LocalImage
from batchgen.settle import queued as settle_queued
from tests.hostile import forward
from tests.runs import FakeSleep, emulated, job_fingerprints, lines, make_project, run


def charged(served: RunningEmulator, fingerprints: dict[str, str]) -> Counter[int]:
    """How many jobs were charged 0, 1, 2... times."""
    return Counter(served.stats.charges.get(fp, 0) for fp in fingerprints.values())


def done_jobs(out: Path) -> set[str]:
    state = ledger.load_state(ledger.ledgers_in(out))
    return {job for job in state.records if state.is_done(job)}


@dataclass
class ScaledTime:
    """Real time run `1/scale` times faster, shared by batchgen and the emulator: an 11 s
    image takes 0.11 s at scale 0.01, and a 1-2 s poll interval 10-20 ms, so polls per
    image are what they would be at full speed."""

    scale: float = 0.01
    began: float = field(default_factory=time.monotonic)
    wall_began: float = field(default_factory=time.time)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds * self.scale)

    def clock(self) -> float:
        return (time.monotonic() - self.began) / self.scale

    def wall(self) -> float:
        return self.wall_began + (time.time() - self.wall_began) / self.scale


def test_the_v2_base_replaces_a_trailing_v1() -> None:
    assert queue_client.v2_base("https://api.segmind.com/v1") == "https://api.segmind.com/v2"
    assert queue_client.v2_base("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v2"
    assert queue_client.v2_base("https://proxy.example/segmind") is None
    assert queue_client.output_url(["https://x/a.jpg", "https://x/b.jpg"]) == "https://x/a.jpg"
    assert queue_client.output_url("not a url") is None
    assert queue_client.valid_request_id("../etc") is None


async def test_a_base_without_v1_is_bad_input_for_v2(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    with pytest.raises(InputError, match="ending in /v1"):
        await batchgen.run_async(m, out=tmp_path / "out", api_key="k",
                                 api_base="http://127.0.0.1:1/segmind", api="v2")  # fmt: skip


async def test_a_v2_run_lands_every_image_charged_once_polling_little(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=3, prompts=2, seeds=2)  # 12 jobs
    fingerprints = job_fingerprints(m)
    out = tmp_path / "out"
    scaled = ScaledTime()
    async with emulated(latency=api.TYPICAL_LATENCY_S, sleep=scaled.sleep,
                        wall_clock=scaled.wall) as served:  # fmt: skip
        result = await batchgen.run_async(
            m, out=out, api_base=served.url, api_key=served.api_key, api="v2", concurrency=4,
            sleep=scaled.sleep, clock=scaled.clock,
        )  # fmt: skip
        stats = served.stats
        assert stats.requests_total == 0 and stats.v2_submits == 12  # v2 only
        assert charged(served, fingerprints) == Counter({1: 12})
        polls_per_image = stats.polls / 12
    assert result.succeeded == 12 and result.failed == 0 and result.stopped is None
    assert result.requests == 12  # submissions; polls are not requests
    assert result.spent == pytest.approx(12 * api.PRICE_USD)
    assert done_jobs(out) == set(fingerprints)
    print(f"\nv2 at the typical latency: {polls_per_image:.2f} polls per image")
    assert polls_per_image <= 3
    records = lines(out)
    statuses = Counter(r["status"] for r in records)
    assert statuses == {"run": 1, "started": 12, "submitted": 12, "succeeded": 12, "run_end": 1}
    submitted = {r["job_id"]: r for r in records if r["status"] == "submitted"}
    for record in records:
        assert list(record)[:4] == ["v", "ts", "job_id", "status"]  # the fast scan's order
        if record["status"] == "succeeded":
            assert record["request_id"] == submitted[record["job_id"]]["request_id"]
            assert record["cost"] == pytest.approx(api.PRICE_USD)  # metrics.cost
            assert (out / record["output"]).read_bytes()[:3] == b"\xff\xd8\xff"
    # the id is durable before the first poll: `submitted` precedes the outcome
    order = [(r["job_id"], r["status"]) for r in records if r.get("job_id")]
    for job in fingerprints:
        assert order.index((job, "submitted")) < order.index((job, "succeeded"))
    summary = batchgen.report(out)
    assert summary.spent == pytest.approx(served.stats.spent) and summary.possibly_billed == 0


async def test_failed_requests_fail_for_good_and_are_not_billed(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=1, seeds=2)
    out = tmp_path / "out"
    async with emulated(v2_fail=1.0) as served:
        result = await run(m, served, out, sleep=FakeSleep(), api="v2")
        assert served.stats.billed_total == 0 and served.stats.v2_failed == 4
        assert result.failed == 4 and result.spent == 0 and result.possibly_billed == 0
        failed = [r for r in lines(out) if r["status"] == "failed"]
        assert {(r["http_status"], r["retryable"], r["billed"]) for r in failed} == {
            (422, False, "no")
        }
        assert {r["error"] for r in failed} == {FAILED_MESSAGE}  # the service's words
        again = await run(m, served, out, sleep=FakeSleep(), api="v2")
        assert again.skipped_failed == 4 and served.stats.v2_submits == 4  # nothing sent
    summary = batchgen.report(out)
    assert summary.failed == 4 and summary.spent == 0 and summary.possibly_billed == 0


async def test_a_lost_submit_answer_is_settled_not_paid_twice(tmp_path: Path) -> None:
    """A 504 after the request was queued: it completes and bills; the runner does not
    submit it again, settlement finds its row by its body and downloads the image."""
    m = make_project(tmp_path, images=3, prompts=2, seeds=2)
    fingerprints = job_fingerprints(m)
    out = tmp_path / "out"
    async with emulated(v2_submit_504_share=0.3, seed=4) as served:
        result = await run(m, served, out, sleep=FakeSleep(), api="v2")
        lost = served.stats.v2_by_status.get(504, 0)
        assert lost >= 2, "the seed should lose a few submissions"
        assert charged(served, fingerprints) == Counter({1: 12})
        assert done_jobs(out) == set(fingerprints)
        recovered = [r for r in lines(out) if r.get("recovered")]
        assert len(recovered) == lost
        summary = batchgen.report(out)
        assert summary.spent == pytest.approx(served.stats.spent)
        assert summary.possibly_billed == 0
    assert result.succeeded == 12 and result.possibly_billed == 0
    assert result.spent == pytest.approx(served.stats.spent)


def v2_url(served: RunningEmulator) -> str:
    base = queue_client.v2_base(served.url)
    assert base is not None
    return base


async def submit_and_crash(served: RunningEmulator, out: Path, m: Path, index: int = 0) -> str:
    """What a run killed after its `submitted` line leaves: the request queued at the
    service (it will complete and bill), and its id in the ledger, no outcome."""
    loaded = manifest.load(m)
    job = list(grid.expand(loaded))[index]
    image = job.params["image_file"]
    assert isinstance(image, LocalImage)
    body = api.encode_request(job.params, b'"' + EncodedImages().get(image) + b'"')
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{v2_url(served)}/{api.MODEL}",
            data=body,
            headers={"x-api-key": served.api_key, "Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 200
        request_id = str((await response.json())["request_id"])
    write_crash(out, m, job, request_id)
    return job.job_id


def write_crash(out: Path, m: Path, job: grid.Job, request_id: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base = {"v": 1, "ts": ledger.timestamp(), "job_id": job.job_id}
    with (out / "ledger.jsonl").open("ab") as handle:
        handle.write(ledger.encode({"v": 1, "ts": ledger.timestamp(), "job_id": None,
                                    "status": "run", "manifest": str(m),
                                    "model": api.MODEL}))  # fmt: skip
        handle.write(ledger.encode({**base, "status": "started", "attempt": 1,
                                    "price": api.PRICE_USD,
                                    "params": grid.describe(job.params)}))  # fmt: skip
        handle.write(ledger.encode({**base, "status": "submitted", "attempt": 1,
                                    "request_id": request_id}))  # fmt: skip


async def test_a_submitted_job_is_possibly_billed_until_settled(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    async with emulated() as served:
        await submit_and_crash(served, out, m)
    summary = summaries.summarize(ledger.ledgers_in(out))
    assert summary.possibly_billed == pytest.approx(api.PRICE_USD)
    assert summary.not_finished == 1 and summary.spent == 0
    assert ledger.load_state(ledger.ledgers_in(out)).open_attempts() == 1


async def test_a_crash_after_submitted_is_resumed_by_polling_the_recorded_id(
    tmp_path: Path,
) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=2)
    fingerprints = job_fingerprints(m)
    out = tmp_path / "out"
    async with emulated(latency=0.3) as served:
        crashed = await submit_and_crash(served, out, m)  # still processing at the resume
        result = await run(m, served, out, api="v2", history_lag=0, typical_latency=0.3)
        assert served.stats.v2_submits == 2  # the crashed one was not sent again
        assert charged(served, fingerprints) == Counter({1: 2})
        assert result.settlement is not None
        assert (result.settlement.recovered, result.settlement.polled) == (1, 1)
        assert result.settlement.history_calls == 0  # no history needed
    assert done_jobs(out) == set(fingerprints)
    (polled,) = [r for r in lines(out) if r.get("polled")]
    assert polled["job_id"] == crashed and polled["status"] == "succeeded"
    assert polled["request_id"] and polled["cost"] == pytest.approx(api.PRICE_USD)
    summary = batchgen.report(out)
    assert summary.spent == pytest.approx(served.stats.spent) and summary.possibly_billed == 0


async def test_a_resume_waits_for_queued_requests_on_the_injected_clock(
    tmp_path: Path,
) -> None:
    """A request still processing at the resume is polled every 1-2 s for up to
    `QUEUE_WAIT_S`, measured by the clock the injected sleep moves: with a fake one the
    wait is over at once, a few dozen polls, not back-to-back polls for 30 s of real
    time."""
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    fake = FakeSleep()
    async with emulated(latency=3600) as served:  # processing throughout
        await submit_and_crash(served, out, m)
        began = time.monotonic()
        result = await run(m, served, out, api="v2", history_lag=0, sleep=fake)
        took = time.monotonic() - began
        polls = served.stats.polls
    assert result.held_back == 1 and result.requests == 0  # nothing sent again
    most = settle_queued.QUEUE_WAIT_S / queue_client.POLL_MIN_S + 2
    assert polls <= most, f"{polls} polls: the wait was not on the injected clock"
    assert sum(fake.pauses) >= settle_queued.QUEUE_WAIT_S - queue_client.POLL_MAX_S
    assert took < settle_queued.QUEUE_WAIT_S / 3


async def test_a_crash_resumed_with_v1_still_polls_the_recorded_id(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    fingerprints = job_fingerprints(m)
    out = tmp_path / "out"
    async with emulated() as served:
        await submit_and_crash(served, out, m)
        result = await run(m, served, out, history_lag=0)  # the default api: v1
        assert served.stats.requests_total == 0  # nothing sent
        assert charged(served, fingerprints) == Counter({1: 1})
    assert result.settlement is not None and result.settlement.polled == 1


async def test_a_resume_after_the_records_expired_settles_from_the_history(
    tmp_path: Path,
) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=2)
    fingerprints = job_fingerprints(m)
    out = tmp_path / "out"
    async with emulated(record_ttl=0.3) as served:
        crashed = await submit_and_crash(served, out, m)
        await asyncio.sleep(0.5)  # the record is gone: its URLs answer 404
        result = await run(m, served, out, api="v2", history_lag=0, typical_latency=0.01)
        assert served.stats.v2_submits == 2
        assert charged(served, fingerprints) == Counter({1: 2})
        assert result.settlement is not None
        assert (result.settlement.recovered, result.settlement.polled) == (1, 0)
        assert result.settlement.history_calls >= 1
    assert done_jobs(out) == set(fingerprints)
    (recovered,) = [r for r in lines(out) if r.get("recovered")]
    assert recovered["job_id"] == crashed and not recovered.get("polled")
    summary = batchgen.report(out)
    assert summary.spent == pytest.approx(served.stats.spent) and summary.possibly_billed == 0


async def test_a_crashed_request_that_failed_fails_for_good_on_resume(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    async with emulated(v2_fail=1.0) as served:
        await submit_and_crash(served, out, m)
        result = await run(m, served, out, api="v2", history_lag=0, sleep=FakeSleep())
        assert served.stats.v2_submits == 1 and served.stats.billed_total == 0
    assert result.settlement is not None and result.settlement.failed == 1
    assert result.skipped_failed == 1
    summary = batchgen.report(out)
    assert summary.failed == 1 and summary.possibly_billed == 0 and summary.spent == 0


async def test_a_429_on_submit_is_a_throttle(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    async with emulated(script=[429, 429]) as served:
        result = await run(m, served, out, sleep=FakeSleep(), api="v2", max_attempts=1)
        assert result.succeeded == 1 and result.throttled == 2
        assert served.stats.billed_total == 1


def _options(records: list[dict[str, Any]]) -> dict[str, Any]:
    (run_line,) = [r for r in records if r["status"] == "run"]
    options: dict[str, Any] = run_line["options"]
    return options


async def test_the_run_line_says_which_api(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    async with emulated() as served:
        await run(m, served, out, sleep=FakeSleep(), api="v2")
    assert _options(lines(out))["api"] == "v2"


async def test_a_lost_v2_request_settled_failed_in_run_is_counted_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """v2: the run loses track of a queued request (deferred); the in-run settlement
    polls its id and finds it FAILED, so the job fails for good. The result must say
    failed == 1 (exit 1), not 0 succeeded / 0 failed / 0 not run with stopped None."""
    make_project(tmp_path, images=1, prompts=1, seeds=1)
    # the run's own give-up time, made zero (a timing seam, as FakeSleep is): the
    # request is lost at its first poll, and the settlement after the pass polls it
    monkeypatch.setattr(queue_client, "GIVE_UP_AFTER_S", 0.0)
    holder: dict[str, object] = {}

    async def gated(_: float) -> None:  # the emulator works until the run's poll is in
        while holder["served"].stats.polls < 2:  # type: ignore[attr-defined]  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    async with emulated(v2_fail=1.0, latency=1.0, sleep=gated) as served:
        holder["served"] = served
        result = await run(tmp_path / "m.yaml", served, tmp_path / "out", sleep=FakeSleep(),
                           api="v2", typical_latency=0.5)  # fmt: skip
    statuses = [r["status"] for r in lines(tmp_path / "out")]
    assert "failed" in statuses, statuses  # the ledger: failed for good
    assert (result.succeeded, result.not_run, result.stopped) == (0, 0, None)
    assert result.failed == 1  # it was 0: the CLI exited 0 for a failed job


async def test_a_v2_output_cut_off_on_the_way_is_fetched_again_not_paid_again(
    tmp_path: Path,
) -> None:
    """--api v2 through a proxy that cuts every output download halfway (a CDN hop, a
    proxy). The request COMPLETED and was billed, and its id is in the ledger. Before,
    the job was submitted again, paid each time (6 charges, then failed); now the cut
    download leaves it to settlement, whose download by the row's URL goes around
    the proxy: paid once."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    fingerprints = job_fingerprints(m)
    out = tmp_path / "out"
    async with emulated() as served, aiohttp.ClientSession() as session:
        origin = [""]

        async def proxy(request: web.Request) -> web.StreamResponse:
            answer = await forward(session, request, served.root)
            body, status, kind = answer.body, answer.status, answer.content_type
            if request.path.startswith("/outputs/") and status == 200:
                cut = web.StreamResponse(status=200, headers={"Content-Type": kind})
                cut.content_length = len(body)
                await cut.prepare(request)
                await cut.write(body[: len(body) // 2])
                assert request.transport is not None
                request.transport.close()
                return cut
            if request.path.startswith("/v2/requests/"):  # its output URL: through us
                body = body.replace(served.root.encode(), origin[0].encode())
            return web.Response(status=status, body=body, content_type=kind)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        origin[0] = str(server.make_url("")).rstrip("/")
        try:
            fake = FakeSleep()
            result = await batchgen.run_async(
                m, out=out, api_base=origin[0] + "/v1", api_key=served.api_key,
                history_base=served.history_base, api="v2", sleep=fake, clock=fake.clock,
            )  # fmt: skip
        finally:
            await server.close()
        spent = served.stats.spent
    assert [served.stats.charges.get(fp, 0) for fp in fingerprints.values()] == [1]
    assert (result.succeeded, result.stopped) == (1, None), result.stopped
    assert result.spent == pytest.approx(spent)
    assert batchgen.report(out).spent == pytest.approx(spent)


async def test_a_held_job_its_poll_finished_is_not_held_when_the_history_then_fails(
    tmp_path: Path,
) -> None:
    """X: queued by a killed run, still processing when this run starts: held back.
    Y: this run loses track of its queued request (404 at its first poll): deferred.
    Z: its submission is answered 504 (queued, no id): deferred, for the history.
    The settlement after the pass polls X's and Y's ids (both COMPLETED: downloaded),
    then the history, needed for Z, does not answer. Before, X was still counted held
    back ("2 jobs left ... 1 held back"), though its image was in place."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from batchgen.emulator.state import STATE

    m = make_project(tmp_path, images=1, prompts=1, seeds=3)
    out = tmp_path / "out"
    release = asyncio.Event()

    async def gated(_: float) -> None:
        await release.wait()

    async with emulated(latency=1.0, sleep=gated) as served, aiohttp.ClientSession() as session:
        x_job = await submit_and_crash(served, out, m, index=0)  # X processing, gated
        served.app[STATE].script.extend([200, 504])  # Y queued; Z queued, its answer lost
        x_id = next(r["request_id"] for r in lines(out) if r["status"] == "submitted")
        history_down, polled = [False], [0]

        async def proxy(request: web.Request) -> web.StreamResponse:
            if request.path.startswith("/inference-request") and history_down[0]:
                return web.Response(status=503, text="history down")
            if (
                request.path.startswith("/v2/requests/")
                and history_down[0]
                and not request.path.endswith(x_id)
                and polled[0] == 0
            ):
                polled[0] += 1  # Y's first poll: lost track of it
                release.set()  # from now on the emulator finishes what it has
                return web.json_response({"error": "not found"}, status=404)
            return (await forward(session, request, served.root)).response()

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        origin = str(server.make_url("")).rstrip("/")

        def history_goes_down(event: batchgen.Event) -> None:
            if isinstance(event, batchgen.JobStarted):
                history_down[0] = True  # after the settlement before the run held X

        try:
            fake = FakeSleep()
            result = await batchgen.run_async(
                m, out=out, api_base=origin + "/v1", api_key=served.api_key,
                history_base=origin, api="v2", sleep=fake, clock=fake.clock,
                on_event=history_goes_down, concurrency=1,
            )  # fmt: skip
        finally:
            release.set()
            await server.close()
    state = ledger.load_state(ledger.ledgers_in(out))
    assert state.is_done(x_job)  # X's image is in place
    assert result.stopped is not None and result.not_run == 1  # Z waits for the history
    assert result.held_back == 0, result.stopped.message
