"""`--out s3://bucket/prefix`: images, ledger segments, lease, compaction, gallery, faults.

Against a real S3 protocol on loopback: moto's server, started here (a session fixture),
with `tests/s3server.Proxy` in front where a test needs to count requests or make PUTs
fail. No Docker, no network.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import batchgen
from batchgen.errors import InputError, LockedError
from batchgen.stops import StopReason
from batchgen.store import segments
from batchgen.store.lease import Lease
from batchgen.store.ledgers import covering, read_ledgers
from batchgen.store.location import Location, is_url, location_arg
from batchgen.store.objects import Conflict, Store
from tests.processes import batchgen as batchgen_process
from tests.processes import emulator_process
from tests.runs import FakeSleep, emulated, job_fingerprints, make_project, run
from tests.s3server import Fault, aws_env, make_bucket, moto_server, objects, proxy


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with moto_server() as endpoint, aws_env(endpoint):
        yield endpoint


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    return make_bucket(s3_endpoint)


def child_env(endpoint: str, **more: str) -> dict[str, str]:
    from tests.s3server import CREDENTIALS

    return {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, **more}


def ledger_lines(endpoint: str, bucket: str, prefix: str) -> list[dict[str, object]]:
    found = objects(endpoint, bucket, prefix + "/")
    names = [key.rsplit("/", 1)[1] for key in found if ".jsonl.d/" in key]
    keys = {key.rsplit("/", 1)[1]: key for key in found if ".jsonl.d/" in key}
    data = b"".join(found[keys[name]] for name, _, _ in covering(names))
    return [json.loads(line) for line in data.splitlines()]


# -- a whole run ----------------------------------------------------------------------


async def test_a_run_into_s3_lands_every_image_and_its_ledger(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    m = make_project(tmp_path)  # 12 jobs
    url = f"s3://{bucket}/night"
    async with emulated() as served:
        result = await run(m, served, url, concurrency=4)
        again = await run(m, served, url)
    assert result.succeeded == 12 and result.stopped is None and result.out == url
    assert again.succeeded == 0 and again.skipped_done == 12 and again.requests == 0
    stored = objects(s3_endpoint, bucket, "night/")
    images = {key for key in stored if key.endswith(".jpg")}
    lines = ledger_lines(s3_endpoint, bucket, "night")
    recorded = {f"night/{r['output']}" for r in lines if r["status"] == "succeeded"}
    assert len(images) == 12 and images == recorded
    assert not any(key.endswith(".lease") for key in stored)  # released
    segs = [key for key in stored if ".jsonl.d/" in key]
    assert len(segs) == 1 and "-" in segs[0].rsplit("/", 1)[1]  # compacted on a clean finish
    summary = batchgen.report(url)
    assert (summary.succeeded, summary.jobs, summary.runs) == (12, 12, 2)
    assert summary.spent == pytest.approx(result.spent) == pytest.approx(12 * 0.063)
    assert summary.requests == result.requests == 12
    assert not await asyncio.to_thread(Path(bucket).exists)  # nothing landed locally


async def test_report_and_plan_and_inspect_and_gallery_read_the_store(
    tmp_path: Path, s3_endpoint: str, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchgen.cli import main

    m = make_project(tmp_path, images=2, prompts=1, seeds=2)
    url = f"s3://{bucket}/p"
    async with emulated() as served:
        result = await run(m, served, url)
    plan = await asyncio.to_thread(batchgen.plan, m, out=url)
    assert (plan.jobs, plan.done, plan.to_run) == (4, 4, 0)
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["report", url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["succeeded"] == 4 and data["spent"] == pytest.approx(result.spent)
    image = next(k for k in objects(s3_endpoint, bucket, "p/") if k.endswith(".jpg"))
    assert await asyncio.to_thread(main, ["inspect", f"s3://{bucket}/{image}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == "prompt 0"
    assert await asyncio.to_thread(main, ["gallery", url]) == 0
    assert f"{url}/gallery.html" in capsys.readouterr().out
    stored = objects(s3_endpoint, bucket, "p/")
    page = stored["p/gallery.html"].decode()
    thumbs = [k for k in stored if k.startswith("p/thumbs/")]
    assert len(thumbs) == 4 + 2  # outputs and source images
    assert 'src="thumbs/' in page and 'href="p0/' in page and "s3://" not in page
    again = await asyncio.to_thread(main, ["gallery", url])  # made once: no new thumbnails
    assert again == 0 and [k for k in objects(s3_endpoint, bucket, "p/thumbs/")] == thumbs


def test_a_missing_backend_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchgen.cli import main

    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    code = main(["run", str(m), "--out", "gs://bucket/x", "--api-key-file", str(m)])
    assert code == 2
    assert "gs:// needs batchgen[gcs]: pip install 'batchgen[gcs]'" in capsys.readouterr().err
    with pytest.raises(InputError, match="needs batchgen"):
        batchgen.report("az://container/x")


def test_plain_paths_and_file_urls_stay_local(tmp_path: Path) -> None:
    assert not is_url(str(tmp_path)) and not is_url(f"file://{tmp_path}")
    assert location_arg(f"file://{tmp_path}") == tmp_path
    assert location_arg("s3://b/p/") == "s3://b/p"


# -- the store's conditional writes -----------------------------------------------------


async def test_moto_honours_if_none_match_and_if_match(bucket: str) -> None:
    """What the fallbacks are for: this S3 (moto 5.x) supports both conditions."""
    store = await Store.open(Location.parse(f"s3://{bucket}/c"))
    try:
        assert store.exclusive  # s3fs's _pipe_file(mode="create"): If-None-Match: *
        await store.create(f"{bucket}/c/a", b"one")
        with pytest.raises(Conflict):
            await store.create(f"{bucket}/c/a", b"two")
        assert await store.get(f"{bucket}/c/a") == b"one"
        tag = await store.create_versioned(f"{bucket}/c/lease", b"x")
        new = await store.replace(f"{bucket}/c/lease", b"y", tag)
        with pytest.raises(Conflict):
            await store.replace(f"{bucket}/c/lease", b"z", tag)  # If-Match on a stale tag
        found = await store.read_versioned(f"{bucket}/c/lease")
        assert found is not None and found[0] == b"y" and found[1] == new
        assert found[2] is not None and -5 < found[2] < 5  # age by the store's clock
    finally:
        await store.close()


async def test_without_exclusive_create_the_fallback_still_refuses_a_taken_segment(
    bucket: str,
) -> None:
    store = await Store.open(Location.parse(f"s3://{bucket}/f"))
    store.exclusive = False  # as a backend without mode="create" is driven
    try:
        await store.create(f"{bucket}/f/a", b"one")
        with pytest.raises(Conflict):
            await store.create(f"{bucket}/f/a", b"two")
    finally:
        await store.close()


async def test_two_writers_can_never_both_write_segment_n(bucket: str) -> None:
    location = Location.parse(f"s3://{bucket}/w")
    store = await Store.open(location)
    try:
        first = segment_writer(store)
        second = segment_writer(store)
        async with first, second:  # both numbered from the same listing: both want 1
            await first.write({"job_id": None, "status": "run"})
            with pytest.raises(batchgen.LedgerError, match="another run"):
                await second.write({"job_id": None, "status": "run"})
            assert second.failed is not None
    finally:
        await store.close()


def segment_writer(store: Store) -> segments.SegmentWriter:
    return segments.SegmentWriter(store, "ledger.jsonl", store.location.folder)


async def test_readers_take_a_merged_segment_over_the_parts_it_covers(bucket: str) -> None:
    location = Location.parse(f"s3://{bucket}/m")
    store = await Store.open(location)
    line = b'{"v":1,"ts":"2026-12-01T00:00:00.000Z","job_id":"%d","status":"interrupted"}\n'
    try:
        for n in (1, 2, 3):
            await store.put(location.key(f"ledger.jsonl.d/{n:06d}.jsonl"), line % n)
        await store.put(location.key("ledger.jsonl.d/000001-000002.jsonl"), line % 1 + line % 2)
        listing = await store.listing(location.root)
        (stored,) = await read_ledgers(store, listing)
        assert [n for n, _ in stored.ledger_lines()] == [1, 2, 3]
        assert b"".join(text for _, text in stored.ledger_lines()) == line % 1 + line % 2 + line % 3
        writer = segment_writer(store)
        async with writer:
            assert writer._next == 4  # numbering goes on after the merged range
        assert await writer.compact() == 4  # parts 1, 2, 3 and the partial merge
        names = [k.rsplit("/", 1)[1] for k in await store.listing(location.key("ledger.jsonl.d"))]
        assert names == ["000001-000003.jsonl"]
    finally:
        await store.close()


async def test_a_reader_racing_a_compaction_reads_the_merged_segment(bucket: str) -> None:
    location = Location.parse(f"s3://{bucket}/race")
    store = await Store.open(location)
    line = b'{"v":1,"ts":"2026-12-01T00:00:00.000Z","job_id":"%d","status":"interrupted"}\n'
    try:
        for n in (1, 2):
            await store.put(location.key(f"ledger.jsonl.d/{n:06d}.jsonl"), line % n)
        stale = await store.listing(location.root)  # listed, then another run merges
        await store.put(location.key("ledger.jsonl.d/000001-000002.jsonl"), line % 1 + line % 2)
        await store.remove([location.key(f"ledger.jsonl.d/{n:06d}.jsonl") for n in (1, 2)])
        (stored,) = await read_ledgers(store, stale)
        assert b"".join(text for _, text in stored.ledger_lines()) == line % 1 + line % 2
    finally:
        await store.close()


# -- the lease ------------------------------------------------------------------------


async def test_a_second_run_on_the_same_shard_refuses_while_the_lease_lives(
    tmp_path: Path, bucket: str
) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=2)
    url = f"s3://{bucket}/lock"
    store = await Store.open(Location.parse(url))
    lease = Lease(store, f"{bucket}/lock/ledger.shard-1-of-2.jsonl.lease", term_s=30)
    await lease.acquire("x")
    try:
        async with emulated() as served:
            with pytest.raises(LockedError, match=r"in use by pid \d+"):
                await run(m, served, url, shard="1/2")
            other = await run(m, served, url, shard="2/2")  # another shard's lease: runs
            assert other.stopped is None
            assert served.stats.as_json()["requests_total"] == other.requests
    finally:
        await lease.release()
        await store.close()


async def test_a_dead_holders_lease_expires_and_is_taken_over(tmp_path: Path, bucket: str) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    url = f"s3://{bucket}/dead"
    store = await Store.open(Location.parse(url))
    try:
        dead = Lease(store, f"{bucket}/dead/ledger.jsonl.lease", term_s=1)
        await dead.acquire("x")
        assert dead._task is not None
        dead._task.cancel()  # it stops renewing, as a killed pod does
        async with emulated() as served:
            began = time.monotonic()
            result = await run(m, served, url, wait_lock=10)
        assert result.succeeded == 1 and time.monotonic() - began >= 1.0
    finally:
        await store.close()


async def test_a_holder_that_loses_its_lease_stops_sending(tmp_path: Path, bucket: str) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)
    url = f"s3://{bucket}/lost"
    stolen = asyncio.Event()

    async def thief() -> None:
        store = await Store.open(Location.parse(url))
        try:
            while not stolen.is_set():
                found = await store.read_versioned(f"{bucket}/lost/ledger.jsonl.lease")
                if found is not None:
                    try:
                        await store.replace(f"{bucket}/lost/ledger.jsonl.lease", b"{}", found[1])
                    except Conflict:  # renewed between the read and the write: again
                        continue
                    stolen.set()
                await asyncio.sleep(0.01)
        finally:
            await store.close()

    os.environ["BATCHGEN_LEASE_SECONDS"] = "1"
    try:
        async with emulated(latency=0.2) as served:
            task = asyncio.create_task(thief())
            result = await run(m, served, url, concurrency=1)
            await task
    finally:
        del os.environ["BATCHGEN_LEASE_SECONDS"]
    assert result.stopped is not None and result.stopped.reason is StopReason.WRITE_FAILURE
    assert "lease" in result.stopped.message and result.succeeded < 8


# -- faults -----------------------------------------------------------------------------


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segments, "PUT_BACKOFF_S", 0.01)


async def test_failing_puts_are_retried(
    tmp_path: Path, s3_endpoint: str, bucket: str, fast_retries: None
) -> None:
    m = make_project(tmp_path, images=2, prompts=1, seeds=2)
    url = f"s3://{bucket}/flaky"
    with proxy(s3_endpoint) as front:
        os.environ["AWS_ENDPOINT_URL"] = front.url
        try:
            front.faults += [
                Fault("PUT", ".jpg", 503, times=3),
                Fault("PUT", ".jsonl.d/", 500, times=2),
            ]
            async with emulated() as served:
                result = await run(m, served, url)
        finally:
            os.environ["AWS_ENDPOINT_URL"] = s3_endpoint
    assert front.injected == 5
    assert result.succeeded == 4 and result.stopped is None and result.requests == 4
    assert batchgen.report(url).succeeded == 4


async def test_an_image_put_that_keeps_failing_is_recorded_unwritten_and_stops_the_run(
    tmp_path: Path, s3_endpoint: str, bucket: str, fast_retries: None
) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)
    url = f"s3://{bucket}/full"
    with proxy(s3_endpoint) as front:
        os.environ["AWS_ENDPOINT_URL"] = front.url
        try:
            front.faults.append(Fault("PUT", "/p1/", 503))  # every image of p1, for good
            async with emulated() as served:
                result = await run(m, served, url, concurrency=1)
        finally:
            os.environ["AWS_ENDPOINT_URL"] = s3_endpoint
    assert result.stopped is not None and result.stopped.reason is StopReason.WRITE_FAILURE
    assert result.unwritten == 1 and "cannot write s3://" in result.stopped.message
    lines = ledger_lines(s3_endpoint, bucket, "full")
    unwritten = [r for r in lines if r["status"] == "unwritten"]
    assert len(unwritten) == 1 and unwritten[0]["billed"] == "billed"
    summary = batchgen.report(url)
    assert summary.unwritten == 1 and summary.spent == pytest.approx(result.spent)


async def test_an_unwritten_image_on_a_store_is_fetched_by_the_next_run_not_paid_again(
    tmp_path: Path, s3_endpoint: str, bucket: str, fast_retries: None
) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)  # 8 jobs
    fingerprints = job_fingerprints(m)
    url = f"s3://{bucket}/lost"
    async with emulated() as served:
        with proxy(s3_endpoint) as front:
            os.environ["AWS_ENDPOINT_URL"] = front.url
            try:
                front.faults.append(Fault("PUT", "/p1/", 503))  # every image of p1, for good
                first = await run(m, served, url, concurrency=1)
            finally:
                os.environ["AWS_ENDPOINT_URL"] = s3_endpoint
        assert first.stopped is not None and first.unwritten == 1
        (lost,) = [
            r for r in ledger_lines(s3_endpoint, bucket, "lost") if r["status"] == "unwritten"
        ]
        second = await run(m, served, url, concurrency=1)
        charges = served.stats.as_json()["charges"]
    assert second.stopped is None and second.settlement is not None
    assert second.settlement.recovered == 1 and second.requests == 8 - 5
    assert {job: charges.get(fp, 0) for job, fp in fingerprints.items()} == dict.fromkeys(
        fingerprints, 1
    )  # every job paid once: the unwritten one fetched from the history, not sent again
    lines = ledger_lines(s3_endpoint, bucket, "lost")
    (fetched,) = [r for r in lines if r["job_id"] == lost["job_id"] and r["status"] == "succeeded"]
    assert fetched["recovered"] is True and fetched["request_id"] == lost["request_id"]
    assert fetched["cost"] == 0.0  # its money was counted with the unwritten line
    stored = objects(s3_endpoint, bucket, "lost/")
    assert len(stored[f"lost/{fetched['output']}"]) == fetched["bytes"]
    assert {r["job_id"] for r in lines if r["status"] == "succeeded"} == set(fingerprints)
    summary = batchgen.report(url)
    assert summary.succeeded == 8 and summary.unwritten == 0
    assert summary.spent == pytest.approx(8 * 0.063) and summary.possibly_billed == 0


async def test_billed_504s_into_a_store_are_fetched_within_the_run_not_paid_again(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    """15% of answers lost after billing: the runner defers them; between its passes the
    history says billed, and their images are fetched and PUT, as on disk."""
    m = make_project(tmp_path, images=4, prompts=3, seeds=3)  # 36 jobs
    fingerprints = job_fingerprints(m)
    url = f"s3://{bucket}/night"
    async with emulated(fault_504=0.15, billed_504_share=1.0, seed=11) as served:
        result = await run(m, served, url, sleep=FakeSleep())
        charges = served.stats.as_json()["charges"]
        lost = served.stats.by_status.get(504, 0)
        spent = served.stats.spent
    assert lost >= 3, "the seed should lose a few answers"
    assert {job: charges.get(fp, 0) for job, fp in fingerprints.items()} == dict.fromkeys(
        fingerprints, 1
    )
    lines = ledger_lines(s3_endpoint, bucket, "night")
    recovered = [r for r in lines if r.get("recovered")]
    assert len(recovered) == lost and result.settlement is not None
    stored = objects(s3_endpoint, bucket, "night/")
    assert all(len(stored[f"night/{r['output']}"]) == r["bytes"] for r in recovered)
    assert result.succeeded == len(fingerprints) and result.possibly_billed == 0
    assert result.spent == pytest.approx(spent)
    summary = batchgen.report(url)
    assert summary.spent == pytest.approx(spent) and summary.possibly_billed == 0


async def test_a_200_cut_off_on_the_way_into_a_store_is_fetched_not_paid_again(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    """Every answer cut off halfway (billed): each job's image is fetched by its request
    id between the passes and PUT, as on disk; none is paid twice."""
    m = make_project(tmp_path, images=1, prompts=1, seeds=3)
    fingerprints = job_fingerprints(m)
    url = f"s3://{bucket}/cut"
    async with emulated(fault_cut=1.0) as served:
        result = await run(m, served, url, concurrency=2, sleep=FakeSleep())
        charges = served.stats.as_json()["charges"]
        spent = served.stats.spent
    assert {job: charges.get(fp, 0) for job, fp in fingerprints.items()} == dict.fromkeys(
        fingerprints, 1
    )
    assert (result.succeeded, result.stopped) == (3, None)
    lines = ledger_lines(s3_endpoint, bucket, "cut")
    recovered = [r for r in lines if r.get("recovered")]
    stored = objects(s3_endpoint, bucket, "cut/")
    assert len(recovered) == 3
    assert all(len(stored[f"cut/{r['output']}"]) == r["bytes"] for r in recovered)
    assert result.spent == pytest.approx(spent) and result.possibly_billed == 0
    assert batchgen.report(url).spent == pytest.approx(spent)


async def test_on_a_store_a_job_failed_in_pass_1_is_not_sent_again_in_pass_2(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    """As on disk: --max-attempts 1; J0's 500 fails it (retryably), J1's 504 (not billed)
    is deferred. Before, the second pass sent J0 again and counted it twice."""
    m = make_project(tmp_path, images=1, prompts=1, seeds=2)
    url = f"s3://{bucket}/night"
    async with emulated(script=(500, 504), billed_504_share=0.0) as served:
        result = await run(m, served, url, max_attempts=1, concurrency=1, sleep=FakeSleep())
    started = Counter(r["job_id"] for r in ledger_lines(s3_endpoint, bucket, "night")
                      if r["status"] == "started")  # fmt: skip
    counted = result.succeeded + result.failed + result.not_run + result.held_back
    assert (sorted(started.values()), counted) == ([1, 1], 2), (started, result.succeeded,
                                                                 result.failed)  # fmt: skip


async def test_a_lost_answer_the_history_cannot_tell_yet_is_held_back_not_resent(
    tmp_path: Path, bucket: str
) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=2)  # 2 jobs
    fingerprints = job_fingerprints(m)
    url = f"s3://{bucket}/held"
    # a billed 504 whose row will not show in this test: its verdict stays unknown
    async with emulated(script=[504], billed_504_share=1.0, history_lag=3600) as served:
        began = time.monotonic()
        result = await run(m, served, url, concurrency=1, history_lag=600)
        charges = served.stats.as_json()["charges"]
    assert time.monotonic() - began < 10  # too long to wait for: held back, not waited out
    assert result.held_back == 1 and result.succeeded == 1
    assert result.stopped is not None and result.stopped.reason is StopReason.UNSETTLED
    assert "1 job left for the next run" in result.stopped.message
    assert sorted(charges.get(fp, 0) for fp in fingerprints.values()) == [1, 1]  # none twice
    assert batchgen.report(url).possibly_billed == pytest.approx(0.063)


async def test_a_v2_run_into_a_store_settles_its_lost_submit_answers(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    """`--api v2` on a store: each request id in a segment before it is polled; a submit
    answer lost after queueing is settled from the history (fetched and PUT), not sent
    again."""
    m = make_project(tmp_path, images=3, prompts=2, seeds=2)  # 12 jobs
    fingerprints = job_fingerprints(m)
    url = f"s3://{bucket}/queued"
    async with emulated(v2_submit_504_share=0.3, seed=4) as served:
        result = await run(m, served, url, sleep=FakeSleep(), api="v2")
        charges = served.stats.as_json()["charges"]
        lost = served.stats.v2_by_status.get(504, 0)
        spent = served.stats.spent
    assert lost >= 2, "the seed should lose a few submissions"
    assert {job: charges.get(fp, 0) for job, fp in fingerprints.items()} == dict.fromkeys(
        fingerprints, 1
    )
    lines = ledger_lines(s3_endpoint, bucket, "queued")
    order = [(r["job_id"], r["status"]) for r in lines if r.get("job_id")]
    polled = {job for job, status in order if status == "submitted"}
    assert len(polled) == len(fingerprints) - lost
    for job in polled:
        assert order.index((job, "submitted")) < order.index((job, "succeeded"))
    assert len([r for r in lines if r.get("recovered")]) == lost
    assert result.succeeded == len(fingerprints) and result.possibly_billed == 0
    assert result.spent == pytest.approx(spent) == batchgen.report(url).spent


async def test_upload_images_is_refused_on_a_store_before_anything_is_sent(
    tmp_path: Path, bucket: str
) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    async with emulated() as served:
        with pytest.raises(InputError, match="--upload-images"):
            await run(m, served, f"s3://{bucket}/up", upload_images=True)
        assert served.stats.as_json()["billed_total"] == 0


async def test_a_ledger_that_cannot_be_written_stops_the_run_and_says_what_was_paid(
    tmp_path: Path, s3_endpoint: str, bucket: str, fast_retries: None
) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)
    url = f"s3://{bucket}/down"
    with proxy(s3_endpoint) as front:
        os.environ["AWS_ENDPOINT_URL"] = front.url
        try:
            async with emulated(latency=0.1) as served:

                def fail_after_first(event: object) -> None:
                    if type(event).__name__ == "JobFinished" and not front.faults:
                        front.faults.append(Fault("PUT", ".jsonl.d/", 503))  # for good

                result = await run(m, served, url, concurrency=2, on_event=fail_after_first)
                charged = served.stats.as_json()["billed_total"]
        finally:
            os.environ["AWS_ENDPOINT_URL"] = s3_endpoint
    assert result.stopped is not None and result.stopped.reason is StopReason.WRITE_FAILURE
    assert "cannot write the ledger" in result.stopped.message
    # every paid image is counted: recorded, or reported unwritten (unrecorded) by the run
    assert result.succeeded + result.unwritten == charged and result.unwritten >= 1
    assert result.spent == pytest.approx(charged * 0.063)
    assert result.requests - charged <= 2  # nothing sent after the failure but what was in flight


# -- real processes -------------------------------------------------------------------


def segment_successes(endpoint: str, bucket: str, prefix: str) -> int:
    try:
        return sum(1 for r in ledger_lines(endpoint, bucket, prefix) if r["status"] == "succeeded")
    except Exception:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("api", ["v1", "v2"])
def test_kill_9_then_a_rerun_from_elsewhere_lands_every_job_and_pays_none_again(
    tmp_path: Path, s3_endpoint: str, bucket: str, api: str
) -> None:
    """A rescheduled pod: killed mid-run, rerun from another working directory with an
    empty $HOME. The requests the kill cut are settled from the request history (v2: by
    their recorded ids first): their images fetched and PUT, none of them paid again."""
    m = make_project(tmp_path / "project", images=4, prompts=3, seeds=4)  # 48 jobs
    fingerprints = job_fingerprints(m)
    url = f"s3://{bucket}/k9{api}"
    concurrency = 4
    with emulator_process("--latency", "0.2") as emu:
        env = child_env(s3_endpoint, SEGMIND_API_KEY=emu.key, SEGMIND_API_BASE=emu.url,
                        SEGMIND_HISTORY_BASE=emu.history_base,
                        BATCHGEN_LEASE_SECONDS="2")  # fmt: skip
        args = ("run", str(m), "--out", url, "--concurrency", str(concurrency), "--no-progress",
                "--api", api, "--typical-latency", "0.2", "--history-lag", "2")  # fmt: skip
        first = batchgen_process(*args, env=env, cwd=tmp_path / "project")
        deadline = time.monotonic() + 60
        while segment_successes(s3_endpoint, bucket, f"k9{api}") < 8:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        time.sleep(0.5)  # what was in flight ends (and is billed) at the service
        before = emu.stats()
        cut = sum(before["charges"].values()) - segment_successes(s3_endpoint, bucket, f"k9{api}")
        elsewhere, home = tmp_path / "elsewhere", tmp_path / "home"
        elsewhere.mkdir()
        home.mkdir()
        began = time.monotonic()
        rerun = batchgen_process(*args, "--wait-lock", "30", env={**env, "HOME": str(home)},
                                 cwd=elsewhere)  # fmt: skip
        _, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err
        assert "the last run was cut" in err
        time.sleep(0.5)
        charges = emu.stats()["charges"]
    stored = objects(s3_endpoint, bucket, f"k9{api}/")
    lines = ledger_lines(s3_endpoint, bucket, f"k9{api}")
    done = {r["job_id"] for r in lines if r["status"] == "succeeded"}
    recovered = [r for r in lines if r.get("recovered")]
    paid = Counter({job: charges.get(fp, 0) for job, fp in fingerprints.items()})
    again = sum(paid.values()) - len(fingerprints)
    print(f"\nkill -9 of a {api} store run: {cut} paid and not recorded at the kill, "
          f"{len(recovered)} fetched from the service by the rerun, {again} paid again; "
          f"the rerun took {time.monotonic() - began:.1f}s, the dead lease's 2 s included")  # fmt: skip
    assert done == set(fingerprints)
    assert all(f"k9{api}/{r['output']}" in stored for r in lines if r["status"] == "succeeded")
    assert all(paid[job] == 1 for job in fingerprints), paid  # every job paid once: none again
    assert len(recovered) == cut  # each image paid and not recorded was fetched, not resent
    summary = batchgen.report(url)
    assert summary.succeeded == len(fingerprints) and summary.possibly_billed == 0
    assert summary.spent == pytest.approx(sum(charges.values()) * 0.063)
    assert not list(elsewhere.iterdir()) and not list(home.iterdir())  # nothing local


@pytest.mark.slow
def test_three_shard_processes_into_one_prefix(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    m = make_project(tmp_path, images=3, prompts=3, seeds=2)  # 18 jobs
    url = f"s3://{bucket}/shards"
    with emulator_process("--latency", "0.2") as emu:
        env = child_env(s3_endpoint, SEGMIND_API_KEY=emu.key, SEGMIND_API_BASE=emu.url)
        shards = [
            batchgen_process("run", str(m), "--out", url, "--shard", "auto", "--shard-count", "3",
                             "--rpm-total", "1800", "--no-progress",
                             env={**env, "JOB_COMPLETION_INDEX": str(i)})
            for i in (0, 1, 2)
        ]  # fmt: skip
        results = [process.communicate(timeout=90) for process in shards]
        for process, (_, stderr) in zip(shards, results, strict=True):
            assert process.returncode == 0, stderr
        stats = emu.stats()
        assert stats["billed_total"] == 18 and set(stats["charges"].values()) == {1}
        again = batchgen_process("run", str(m), "--out", url, "--no-progress", env=env)
        _, stderr = again.communicate(timeout=60)
        assert again.returncode == 0, stderr
        assert emu.stats()["requests_total"] == 18  # unsharded rerun: nothing to redo
    stored = objects(s3_endpoint, bucket, "shards/")
    ledgers = {key.split("/")[1] for key in stored if ".jsonl.d/" in key}
    assert ledgers == {"ledger.jsonl.d", *(f"ledger.shard-{i}-of-3.jsonl.d" for i in (1, 2, 3))}
    assert len([k for k in stored if k.endswith(".jpg") and "/thumbs/" not in k]) == 18
    assert "shards/gallery.html" in stored  # each run refreshed the sheet on the store
    plan = batchgen.plan(m, out=url)
    assert (plan.jobs, plan.done) == (18, 18)
    report = batchgen_process("report", url, "--json", env=env)
    data = json.loads(report.communicate(timeout=30)[0])
    assert data["succeeded"] == 18 and data["spent"] == pytest.approx(18 * 0.063)


@pytest.mark.slow
def test_two_processes_on_one_shard_the_second_exits_3(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    m = make_project(tmp_path, images=3, prompts=3, seeds=2)
    url = f"s3://{bucket}/twice"
    with emulator_process("--latency", "0.5") as emu:
        env = child_env(s3_endpoint, SEGMIND_API_KEY=emu.key, SEGMIND_API_BASE=emu.url)
        args = ("run", str(m), "--out", url, "--concurrency", "2", "--no-progress")
        first = batchgen_process(*args, env=env)
        try:
            deadline = time.monotonic() + 30
            while not any(k.endswith(".lease") for k in objects(s3_endpoint, bucket, "twice/")):
                assert time.monotonic() < deadline and first.poll() is None
                time.sleep(0.05)
            second = batchgen_process(*args, env=env)
            _, err = second.communicate(timeout=60)
            assert second.returncode == 3, err
            assert f"{url}/ledger.jsonl is in use by pid {first.pid}" in err
            assert "nothing sent" in err
            first.send_signal(signal.SIGTERM)
        finally:
            if first.poll() is None:
                first.send_signal(signal.SIGTERM)
            first.communicate(timeout=60)
        assert first.returncode == 3


def test_a_store_that_cannot_be_reached_or_written_is_exit_2_with_nothing_sent(
    tmp_path: Path, s3_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchgen.cli import main

    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    key = tmp_path / "key"
    key.write_text("k")
    args = ["run", str(m), "--api-key-file", str(key), "--api-base", "http://127.0.0.1:9/v1"]
    assert main([*args, "--out", "s3://no-such-bucket-here/x"]) == 2
    err = capsys.readouterr().err
    assert "s3://no-such-bucket-here/x: cannot write the store" in err and "nothing sent" in err
    os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # nothing listens there
    try:
        assert main([*args, "--out", "s3://b/x"]) == 2
    finally:
        os.environ["AWS_ENDPOINT_URL"] = s3_endpoint
    assert "s3://b/x: cannot write the store" in capsys.readouterr().err


def test_reconcile_of_a_store_says_a_store_run_settles_itself(
    bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchgen.cli import main

    assert main(["reconcile", f"s3://{bucket}/x", "--api-base", "http://127.0.0.1:9/v1"]) == 2
    assert "settles its ledger itself" in capsys.readouterr().err


async def test_the_budget_holds_on_a_store_as_on_disk(tmp_path: Path, bucket: str) -> None:
    """A store's started line is awaited, so the price is reserved before it: the cap
    holds, and a worker whose price fit is not stopped by another's budget stop."""
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)
    async with emulated() as served:
        result = await run(m, served, f"s3://{bucket}/cap", concurrency=4, max_cost=0.15)
        billed = served.stats.as_json()["billed_total"]
    assert result.stopped is not None and result.stopped.reason is StopReason.BUDGET
    assert result.succeeded == billed == result.requests == 2 and result.spent <= 0.15
    assert batchgen.report(f"s3://{bucket}/cap").requests == 2


async def test_the_lease_without_s3s_conditions_falls_back_to_read_compare_write(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Store, "is_s3", property(lambda self: False))
    store = await Store.open(Location.parse(f"s3://{bucket}/nocond"))
    store.exclusive = False
    try:
        first = Lease(store, f"{bucket}/nocond/ledger.jsonl.lease", term_s=30)
        await first.acquire("s3://x/ledger.jsonl")
        with pytest.raises(LockedError, match="in use by pid"):
            await Lease(store, f"{bucket}/nocond/ledger.jsonl.lease", term_s=30).acquire("x")
        found = await store.read_versioned(f"{bucket}/nocond/ledger.jsonl.lease")
        assert found is not None and found[2] is None  # no server clock: the holder's own
        await store.put(f"{bucket}/nocond/ledger.jsonl.lease", b"{}")  # someone else's now
        with pytest.raises(Conflict):
            await store.replace(f"{bucket}/nocond/ledger.jsonl.lease", b"{}", found[1])
        await first.release()
    finally:
        await store.close()
