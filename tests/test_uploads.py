"""`--upload-images`: each local image uploaded once, its URL sent instead of its base64,
cached under --out; job ids, plans and ledgers unchanged by the flag."""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import batchgen
from batchgen import api, grid, manifest, uploads
from batchgen.cli import main
from batchgen.emulator import fingerprint
from batchgen.images import LocalImage
from batchgen.planning import ImageTally, UploadFigures, upload_lines
from batchgen.stops import StopReason
from tests import processes
from tests.helpers import make_image, write
from tests.processes import emulator_process
from tests.runs import FakeSleep, emulated, lines, make_project, run


def cached_urls(out: Path) -> dict[str, str]:
    data = json.loads((out / uploads.CACHE_NAME).read_text())
    (urls,) = data["assets"].values()  # one storage base
    return dict(urls)


def url_fingerprints(manifest_path: Path, urls: dict[str, str]) -> set[str]:
    """The fingerprints of the jobs' requests with each local image sent as its URL."""
    found = set()
    for job in grid.expand(manifest.load(manifest_path)):
        image = job.params["image_file"]
        assert isinstance(image, LocalImage)
        body = api.encode_request(job.params, json.dumps(urls[image.sha256]).encode())
        found.add(fingerprint(json.loads(body)))
    return found


def job_lines(out: Path) -> list[dict[str, Any]]:
    return [r for r in lines(out) if r.get("status") == "succeeded"]


async def test_a_run_uploads_each_image_once_and_sends_urls(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=3, prompts=2, seeds=2)  # 12 jobs, 3 images
    out = tmp_path / "out"
    seen: list[batchgen.Event] = []
    async with emulated() as served:
        result = await run(m, served, out, upload_images=True, on_event=seen.append)
        assert (result.succeeded, result.failed, result.stopped, result.uploaded) == (
            12, 0, None, 3
        )  # fmt: skip
        stats = served.stats
        assert (stats.uploads, stats.assets_uploaded, stats.requests_total) == (1, 3, 12)
        urls = cached_urls(out)
        assert len(urls) == 3 and all(
            u.startswith(served.storage_base + "/assets/") for u in urls.values()
        )
        # every request carried its image's URL (the emulator resolved its own assets)
        assert set(stats.charges) == url_fingerprints(m, urls)
        assert Counter(stats.charges.values()) == Counter({1: 12})
    assert all((out / r["output"]).is_file() for r in job_lines(out))
    for record in job_lines(out):  # the ledger keeps the image as without the flag
        image = record["params"]["image_file"]
        assert set(image) == {"path", "sha256"} and image["sha256"] in urls
    (event,) = [e for e in seen if isinstance(e, batchgen.ImagesUploaded)]
    assert (event.uploaded, event.cached) == (3, 0)
    assert event.bytes == sum(p.stat().st_size for p in (tmp_path / "photos").iterdir())


async def test_a_rerun_and_a_second_night_upload_nothing_new(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=3, prompts=2, seeds=2)
    out = tmp_path / "out"
    async with emulated() as served:
        await run(m, served, out, upload_images=True)
        again = await run(m, served, out, upload_images=True)
        assert (again.requests, again.uploaded, served.stats.uploads) == (0, 0, 1)
        # the next night: a new prompt, the same photos: new jobs, no new upload
        text = m.read_text().replace('"prompt 1"', '"prompt 1", "a new prompt"')
        m.write_text(text)
        night = await run(m, served, out, upload_images=True)
        assert (night.succeeded, night.skipped_done, night.uploaded) == (6, 12, 0)
        assert (served.stats.uploads, served.stats.assets_uploaded) == (1, 3)
        assert set(served.stats.charges) == url_fingerprints(m, cached_urls(out))


async def test_job_ids_ledgers_and_plans_are_the_same_with_and_without_the_flag(
    tmp_path: Path,
) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)
    plain, uploaded = tmp_path / "plain", tmp_path / "uploaded"
    async with emulated() as served:
        await run(m, served, plain)
        await run(m, served, uploaded, upload_images=True)
        assert served.stats.uploads == 1

    def jobs_of(out: Path) -> dict[str, Any]:
        return {r["job_id"]: (r["output"], r["params"]) for r in job_lines(out)}

    assert jobs_of(plain) == jobs_of(uploaded) and len(jobs_of(plain)) == 8
    for out in (plain, uploaded):
        with_flag = batchgen.plan(m, out=out, upload_images=True).as_dict()
        without = batchgen.plan(m, out=out).as_dict()
        assert with_flag.pop("uploads")["images"] == 0  # nothing left to run
        assert without.pop("uploads") is None
        assert with_flag == without and without["done"] == 8
    # a batch done without the flag is done with it, and the other way round
    assert batchgen.plan(m, out=plain, upload_images=True).to_run == 0


async def test_only_the_images_of_jobs_still_to_run_are_uploaded(tmp_path: Path) -> None:
    for i in range(3):
        make_image(tmp_path / "photos" / f"p{i}.jpg", colour=i * 40)
    m = write(tmp_path / "m.yaml", "grid: {image_file: [photos/p0.jpg], prompt: [a, b]}\n")
    out = tmp_path / "out"
    async with emulated() as served:
        await run(m, served, out)  # p0 done without the flag
        write(m, "grid: {image_file: [photos/], prompt: [a, b]}\n")
        plan = batchgen.plan(m, out=out, upload_images=True, api_base=served.url)
        assert plan.uploads is not None and (plan.uploads.images, plan.uploads.new) == (2, 2)
        result = await run(m, served, out, upload_images=True)
        assert (result.succeeded, result.skipped_done, result.uploaded) == (4, 2, 2)
        assert served.stats.assets_uploaded == 2


def test_plan_says_what_it_would_upload_and_save(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = make_project(tmp_path, images=3, prompts=2, seeds=2)
    sizes = [p.stat().st_size for p in sorted((tmp_path / "photos").iterdir())]
    plan = batchgen.plan(m, out=tmp_path / "out", upload_images=True)  # no network
    assert plan.uploads is not None
    figures = plan.uploads
    b64 = [uploads.base64_size(size) for size in sizes]
    assert (figures.images, figures.new, figures.new_bytes) == (3, 3, sum(sizes))
    assert (figures.requests, figures.base64_bytes) == (12, 4 * sum(b64))
    prefix = len("data:image/jpeg;base64,")
    assert figures.saved_bytes == 4 * sum(b64) - sum(b + prefix for b in b64)
    assert batchgen.plan(m).uploads is None  # only when asked
    assert main(["plan", str(m), "--upload-images"]) == 0
    text = capsys.readouterr().out
    assert "upload     3 images, 0.0 MB, once, to public asset URLs" in text
    assert "saves      0.0 MB of base64 not sent (12 requests carry a URL instead of" in text
    assert main(["plan", str(m), "--upload-images", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["uploads"]["new"] == 3


def test_the_plan_lines_for_a_big_image_and_for_a_cache() -> None:
    big = UploadFigures(images=1, new=1, new_bytes=5_000_000, requests=1000,
                        base64_bytes=1000 * 6_666_668, saved_bytes=999 * 6_666_668)  # fmt: skip
    assert upload_lines(big) == [
        "upload     1 image, 5.0 MB, once, to public asset URLs",
        "saves      6,660.0 MB of base64 not sent (1,000 requests carry a URL instead of "
        "6,666.7 MB)",
    ]
    cached = UploadFigures(images=3, new=0, new_bytes=0, requests=6, base64_bytes=60,
                           saved_bytes=60)  # fmt: skip
    assert upload_lines(cached)[0] == "upload     nothing new: 3 images uploaded before"


async def test_plan_counts_cached_images_as_uploaded_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = make_project(tmp_path, images=2, prompts=1, seeds=1)
    out = tmp_path / "out"
    async with emulated() as served:
        await run(m, served, out, upload_images=True)
        m.write_text(m.read_text().replace('"prompt 0"', '"prompt 0", "new"'))
        plan = batchgen.plan(m, out=out, upload_images=True, api_base=served.url)
        assert plan.uploads is not None and (plan.uploads.images, plan.uploads.new) == (2, 0)
        other = batchgen.plan(m, out=out, upload_images=True, storage_base="http://elsewhere")
        assert other.uploads is not None and other.uploads.new == 2  # cached per storage


def test_batches_are_bounded_in_bytes(tmp_path: Path) -> None:
    images = [LocalImage(tmp_path / f"{i}.jpg", f"{i}.jpg", f"{i:064x}", 3000, "jpeg")
              for i in range(5)]  # fmt: skip
    each = uploads.data_url_size(images[0])
    assert each == len("data:image/jpeg;base64,") + 4000
    groups = list(uploads.batches(images, max_bytes=2 * each))
    assert [len(g) for g in groups] == [2, 2, 1]
    assert [len(g) for g in uploads.batches(images, max_bytes=1)] == [1] * 5  # one alone
    assert sum(1 for _ in uploads.batches([])) == 0


async def test_batched_uploads_against_the_emulator(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=3, prompts=1, seeds=1)
    needed = ImageTally()
    for job in grid.expand(manifest.load(m)):
        needed.add(job.params["image_file"])
    async with emulated() as served:
        done = await uploads.upload_images(
            needed.needed.values(), api_key=served.api_key, base=served.storage_base,
            out=tmp_path / "out", max_batch_bytes=1,
        )  # fmt: skip
        assert (done.uploaded, done.calls, served.stats.uploads) == (3, 3, 3)
        again = await uploads.upload_images(
            needed.needed.values(), api_key=served.api_key, base=served.storage_base,
            out=tmp_path / "out",
        )  # fmt: skip
        assert (again.uploaded, again.cached, again.calls, again.urls) == (0, 3, 0, done.urls)


def test_an_answer_may_name_its_urls_either_way() -> None:
    urls = ["https://images.segmind.com/assets/a.jpg"]
    for name in ("file_urls", "urls"):
        assert uploads._urls_of(json.dumps({name: urls}).encode(), 1, "B") == urls
    for bad in ({"file_urls": []}, {"file_urls": ["not a url"]}, [], {"other": urls}):
        with pytest.raises(uploads.UploadError, match="without 1 http"):
            uploads._urls_of(json.dumps(bad).encode(), 1, "B")


def test_a_broken_cache_file_means_uploading_again(tmp_path: Path) -> None:
    (tmp_path / uploads.CACHE_NAME).write_text("{not json")
    assert uploads.known(tmp_path, "http://x") == {}
    uploads.remember(tmp_path, "http://x/", {"d" * 64: "http://x/assets/1.jpg"})
    assert uploads.known(tmp_path, "http://x") == {"d" * 64: "http://x/assets/1.jpg"}
    assert uploads.digests_by_url([tmp_path]) == {"http://x/assets/1.jpg": "d" * 64}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_storage_stops_the_run_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    m = make_project(tmp_path, images=2, prompts=1, seeds=1)
    sleep = FakeSleep()
    async with emulated() as served:
        result = await run(
            m, served, tmp_path / "out", upload_images=True, sleep=sleep,
            storage_base=f"http://127.0.0.1:{_closed_port()}",
        )  # fmt: skip
        assert served.stats.requests_total == 0
    assert result.stopped is not None and result.stopped.reason is StopReason.UPLOAD
    assert "cannot be reached" in result.stopped.message
    assert "nothing sent" in result.stopped.message
    assert (result.not_run, result.succeeded) == (2, 0)
    assert sleep.pauses == list(uploads.RETRY_DELAYS_S)  # tried again, then gave up


async def test_a_refused_key_on_upload_names_no_key(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    async with emulated() as served:
        result = await run(m, served, tmp_path / "out", key="wrong-key-xyz",
                           upload_images=True, reconcile=False)  # fmt: skip
        assert (served.stats.requests_total, served.stats.uploads) == (0, 0)
    assert result.stopped is not None and result.stopped.reason is StopReason.UPLOAD
    assert "HTTP 401: the API key was refused" in result.stopped.message
    assert "wrong-key-xyz" not in result.stopped.message
    assert not (tmp_path / "out" / uploads.CACHE_NAME).exists()


async def test_a_bad_storage_base_is_a_usage_error(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    async with emulated() as served:
        with pytest.raises(batchgen.InputError, match="--storage-base 'ftp://x'"):
            await run(m, served, tmp_path / "out", upload_images=True, storage_base="ftp://x")


async def test_billed_504s_of_url_requests_are_settled_not_paid_again(tmp_path: Path) -> None:
    """The request history holds the URL as sent: settlement maps it back to the digest."""
    m = make_project(tmp_path, images=3, prompts=3, seeds=3)  # 27 jobs
    out = tmp_path / "out"
    async with emulated(fault_504=0.2, billed_504_share=1.0, seed=11) as served:
        result = await run(m, served, out, upload_images=True, sleep=FakeSleep())
        lost = served.stats.by_status.get(504, 0)
        assert lost >= 2, "the seed should lose a few answers"
        assert Counter(served.stats.charges.values()) == Counter({1: 27})  # none paid twice
        assert result.succeeded == 27 and result.possibly_billed == 0
    assert sum(1 for r in lines(out) if r.get("recovered")) == lost


def test_help_says_asset_urls_are_public(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--upload-images upload each local image once" in text
    assert "Off by default: asset URLs are PUBLIC" in text
    assert "--storage-base URL" in text and "$SEGMIND_STORAGE_BASE" in text


@pytest.mark.slow
def test_the_cli_uploads_once_and_exits_3_when_it_cannot(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=1)
    with emulator_process() as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        ok = processes.batchgen("run", str(m), "--out", str(tmp_path / "out"),
                                "--upload-images", "--no-progress", env=env)  # fmt: skip
        out, err = ok.communicate(timeout=60)
        assert ok.returncode == 0, err
        assert "uploaded 2 images" in err and "public asset URLs" in err
        assert (emu.stats()["uploads"], emu.stats()["requests_total"]) == (1, 4)
        bad = processes.batchgen("run", str(m), "--out", str(tmp_path / "other"),
                                 "--upload-images", "--no-progress", "--storage-base",
                                 f"http://127.0.0.1:{_closed_port()}", env=env)  # fmt: skip
        out, err = bad.communicate(timeout=60)
        assert bad.returncode == 3, out + err
        assert "cannot upload the input images" in out and "nothing sent" in out
        assert "--upload-images --storage-base" in out  # the resume hint keeps them
        assert emu.stats()["requests_total"] == 4
