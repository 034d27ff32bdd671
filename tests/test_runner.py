"""`run` against the bundled emulator: outcomes a user relies on (files, ledger, charges)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

import batchgen
from batchgen import ledger, summaries
from batchgen.cli import main
from batchgen.errors import InputError
from batchgen.stops import StopReason
from tests.helpers import make_image, write
from tests.runs import FakeSleep, emulated, job_fingerprints, lines, make_project, run


async def test_every_job_succeeds_once_with_its_file_and_ledger_lines(tmp_path: Path) -> None:
    m = make_project(tmp_path)
    out = tmp_path / "out"
    async with emulated() as served:
        result = await run(m, served, out, concurrency=4)
        stats = served.stats
    assert result.succeeded == 12 and result.failed == 0 and not result.stopped
    records = lines(out)
    statuses = Counter(r["status"] for r in records)
    assert statuses == {"run": 1, "started": 12, "succeeded": 12, "run_end": 1}
    for record in records:
        assert record["v"] == 1 and record["ts"].endswith("Z") and "job_id" in record
    for record in (r for r in records if r["status"] == "succeeded"):
        data = (out / record["output"]).read_bytes()
        assert data[:3] == b"\xff\xd8\xff" and record["output"].endswith(".jpg")
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        assert record["bytes"] == len(data) and record["cost"] == pytest.approx(0.063)
        assert record["params"]["image_file"]["sha256"]  # the image by its digest ...
        assert "data" not in record["params"]["image_file"]  # ... never its bytes
        assert "x-request-id" in record["headers"]
    assert stats.billed_total == 12 and not stats.double_charged()
    assert not list(out.rglob("*.part"))  # no temp file left behind


async def test_transient_faults_recover_without_sleeping(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    sleep = FakeSleep()
    async with emulated(script=[502, 504, 500, 200], billed_504_share=0.0) as served:
        # the runner's own retries: with settlement, a 502/504 would wait for the history
        result = await run(m, served, out, sleep=sleep, concurrency=1, reconcile=False)
    assert result.succeeded == 1 and result.requests == 4
    retries = [r for r in lines(out) if r["status"] == "retry"]
    assert [r["http_status"] for r in retries] == [502, 504, 500]
    assert [r["billed"] for r in retries] == ["maybe", "maybe", "no"]
    assert result.possibly_billed == pytest.approx(2 * 0.063)
    assert len(sleep.pauses) == 3 and all(0 <= p <= 4 for p in sleep.pauses)


async def test_gives_up_after_max_attempts_and_resumes_later(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    async with emulated(script=[500, 500, 500]) as served:
        first = await run(m, served, out, sleep=FakeSleep(), max_attempts=3)
        assert first.failed == 1 and first.requests == 3
        failed = [r for r in lines(out) if r["status"] == "failed"]
        assert failed[0]["retryable"] is True and failed[0]["attempts"] == 3
        second = await run(m, served, out, sleep=FakeSleep())
    assert second.succeeded == 1  # retryable failures are retried on resume


async def test_a_429_storm_slows_the_pool_and_does_not_use_up_attempts(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    sleep = FakeSleep()
    async with emulated(script=[429] * 8) as served:
        result = await run(m, served, out, sleep=sleep, max_attempts=2, rpm=6000)
    assert result.succeeded == 1 and result.throttled == 8
    # with a fixed --rpm, the pool-wide cool-down grows while the 429s continue
    assert sleep.pauses[:4] == [2.0, 4.0, 8.0, 16.0]


async def test_a_real_rate_limit_is_survived(tmp_path: Path) -> None:
    """The pacer's fixed rate and the emulator's bucket on one injected clock: the
    spacing is slept on it, not really waited for."""
    m = make_project(tmp_path, images=3, prompts=2, seeds=2)
    out = tmp_path / "out"
    sleep = FakeSleep()
    limit = {"rate_limit_rpm": 1200, "rate_burst": 2, "retry_after": True}
    async with emulated(**limit, clock=sleep.clock) as served:
        result = await run(m, served, out, sleep=sleep, concurrency=8, rpm=1200)
        stats = served.stats
    assert result.succeeded == 12
    assert stats.billed_total == 12 and not stats.double_charged()
    # 12 requests at 1,200 a minute span 11 spacings of the injected clock (a 429 or two
    # from requests still on the wire while it jumps are waited out, as Retry-After says)
    assert sleep.now >= 11 * 60 / 1200 * 0.99 and result.throttled <= 2, sleep.pauses


async def test_a_400_fails_that_job_only(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=1, seeds=2)
    out = tmp_path / "out"
    async with emulated(script=[400]) as served:
        result = await run(m, served, out, concurrency=1, sleep=FakeSleep())
    assert (result.succeeded, result.failed) == (3, 1)
    failed = [r for r in lines(out) if r["status"] == "failed"]
    assert failed[0]["http_status"] == 400 and failed[0]["retryable"] is False
    summary = summaries.summarize([out / ledger.DEFAULT_NAME])
    assert summary.failed == 1 and summary.succeeded == 3


@pytest.mark.parametrize(
    ("setting", "reason", "kind"),
    [
        ({"key": "wrong-key"}, "refused (HTTP 401)", StopReason.AUTH),
        ({"model": "no-such-model"}, "not found (HTTP 404)", StopReason.NOT_FOUND),
        ({"credits": 0.1}, "insufficient credits (HTTP 406)", StopReason.CREDITS),
    ],
)
async def test_run_stopping_answers_stop_after_few_requests(
    tmp_path: Path, setting: dict[str, object], reason: str, kind: StopReason
) -> None:
    m = make_project(tmp_path, images=3, prompts=4, seeds=4)  # 48 jobs
    if "model" in setting:
        text = m.read_text()
        m.write_text(f"model: {setting['model']}\n{text}")
    out = tmp_path / "out"
    credits = setting.get("credits")
    async with emulated(**({"credits": credits} if credits else {})) as served:
        key = setting.get("key")
        result = await run(m, served, out, key=str(key) if key else None, concurrency=4)
        requests = served.stats.requests_total
    assert result.stopped is not None and reason in result.stopped.message
    assert result.stopped.reason is kind
    assert requests <= 4 + 1 + 4  # the pool stops at once: no new requests after the answer
    assert result.failed == 0  # not the jobs' fault: the next run does them
    statuses = Counter(r["status"] for r in lines(out))
    assert statuses["failed"] == 0 and statuses["interrupted"] >= 1


async def test_max_cost_is_never_exceeded(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=3, prompts=2, seeds=2)
    out = tmp_path / "out"
    async with emulated(latency=0.05) as served:
        result = await run(m, served, out, concurrency=6, max_cost=0.2)
        billed = served.stats.billed_total
    assert billed == 3 and result.spent <= 0.2
    assert result.stopped is not None
    assert result.stopped.reason is StopReason.BUDGET
    assert "--max-cost" in result.stopped.message


async def test_editing_the_manifest_runs_only_new_jobs(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=1, seeds=2)
    out = tmp_path / "out"
    async with emulated() as served:
        await run(m, served, out)
        assert served.stats.requests_total == 4
        write(m, m.read_text().replace('prompt: ["prompt 0"]', 'prompt: ["prompt 0", "new one"]'))
        again = await run(m, served, out)
        assert served.stats.requests_total == 8
        assert again.skipped_done == 4 and again.succeeded == 4
        assert not served.stats.double_charged()


async def test_resume_after_a_torn_line_and_a_lost_file(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=1, seeds=2)
    out = tmp_path / "out"
    async with emulated() as served:
        await run(m, served, out)
        done = [r for r in lines(out) if r["status"] == "succeeded"]
        (out / done[0]["output"]).unlink()  # a lost output is redone, not trusted
        with (out / "ledger.jsonl").open("ab") as handle:
            handle.write(b'{"v":1,"job_id":"abc","sta')  # a crash mid-write
        again = await run(m, served, out)
        fps = job_fingerprints(m)
        charges = served.stats.charges
    assert again.succeeded == 1 and again.skipped_done == 3
    assert charges[fps[done[0]["job_id"]]] == 2  # only the lost one was paid again
    assert sum(charges.values()) == 5
    assert all(line.strip() for line in (out / "ledger.jsonl").read_text().splitlines())


async def test_inspect_reads_back_what_run_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    async with emulated() as served:
        await run(m, served, out)
    done = next(r for r in lines(out) if r["status"] == "succeeded")
    assert main(["inspect", str(out / done["output"]), "--json"]) == 0
    embedded = json.loads(capsys.readouterr().out)
    assert embedded["job_id"] == done["job_id"]
    assert (embedded["prompt"], embedded["seed"]) == ("prompt 0", 101)
    assert embedded["model"] == "ideogram-turbo-img-2-img"
    assert embedded["source"] == "photos/p0.jpg"


async def test_an_edited_template_may_not_write_over_another_jobs_image(tmp_path: Path) -> None:
    """Run 1 writes job A to cat.jpg. The template then changes, and in run 2 job B
    would write cat.jpg: A's paid image would be overwritten (and A paid again on the
    next resume). The plan pass refuses it before anything is sent."""
    make_image(tmp_path / "p.jpg", colour=10)

    def manifest(template: str, jobs: list[tuple[str, str]]) -> Path:
        entries = "".join(
            f'\n  - {{image_file: p.jpg, prompt: "{p}", negative_prompt: "{n}", seed: 101}}'
            for p, n in jobs
        )
        return write(tmp_path / "m.yaml", f'output: "{template}"\njobs:{entries}\n')

    async def run_command(path: Path) -> batchgen.RunResult:
        out = tmp_path / "out"
        return await batchgen.run_async(
            path, out=out, api_base=served.url, api_key=served.api_key, concurrency=1
        )

    async with emulated() as served:
        await run_command(manifest("{prompt}.{ext}", [("cat", "dog")]))
        image = (tmp_path / "out" / "cat.jpg").read_bytes()
        with pytest.raises(InputError, match=r"would overwrite .*cat\.jpg"):
            await run_command(manifest("{negative_prompt}.{ext}", [("x", "cat"), ("cat", "dog")]))
        assert served.stats.requests_total == 1
    assert (tmp_path / "out" / "cat.jpg").read_bytes() == image
