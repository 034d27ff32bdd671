"""Money on disk: paid images are never overwritten by another job, never lost when a
write fails, and a killed run's leftovers are cleaned up by the next one."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from batchgen import grid, manifest
from batchgen.batch import BatchResult
from batchgen.cli import main
from batchgen.grid import Job
from batchgen.stops import StopReason
from tests.helpers import make_image, write
from tests.processes import batchgen, emulator_process, wait_for_lines
from tests.runs import emulated, lines, make_project, run, run_jobs

DEAD_API = "http://127.0.0.1:9/v1"  # discard port: a request sent there would fail loudly


def two_manifests(root: Path) -> tuple[Path, Path]:
    for i in range(2):
        make_image(root / "photos" / f"p{i}.jpg", colour=i * 60)
    template = "{image}.{ext}"
    a = write(root / "a.yaml", f"""
        output: "{template}"
        grid: {{image_file: [photos/], prompt: ["a fox"], seed: [101]}}
        """)  # fmt: skip
    b = write(root / "b.yaml", f"""
        output: "{template}"
        grid: {{image_file: [photos/], prompt: ["a cat"], seed: [101]}}
        """)  # fmt: skip
    return a, b


def run_in_emulator(m: Path, out: Path, runs: int = 1, **config: Any) -> BatchResult:
    """`runs` in-process runs against one emulator; the last one's result."""

    async def go() -> BatchResult:
        async with emulated(**config) as served:
            for _ in range(runs):
                result = await run(m, served, out, concurrency=1)
        return result

    return asyncio.run(go())


def test_a_second_manifest_never_overwrites_the_first_ones_paid_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = two_manifests(tmp_path)
    out = tmp_path / "out"
    assert run_in_emulator(a, out).succeeded == 2
    images = {p: p.read_bytes() for p in out.glob("*.jpg")}
    assert len(images) == 2
    ledger_before = (out / "ledger.jsonl").read_bytes()

    assert main(["plan", str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("would overwrite") == 2
    assert "a.yaml" in err and "b.yaml" in err and "{job_id}" in err

    monkeypatch.setenv("SEGMIND_API_KEY", "k")
    monkeypatch.setenv("SEGMIND_API_BASE", DEAD_API)
    assert main(["run", str(b), "--out", str(out), "--no-progress"]) == 2
    assert "would overwrite" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.glob("*.jpg")} == images
    assert (out / "ledger.jsonl").read_bytes() == ledger_before  # nothing sent, nothing written


def test_the_same_manifest_resumes_over_its_own_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = two_manifests(tmp_path)
    out = tmp_path / "out"
    again = run_in_emulator(a, out, runs=2)
    assert (again.succeeded, again.skipped_done) == (0, 2)
    monkeypatch.setenv("SEGMIND_API_KEY", "k")
    monkeypatch.setenv("SEGMIND_API_BASE", DEAD_API)
    assert main(["run", str(a), "--out", str(out), "--no-progress"]) == 0


def test_a_rerun_with_jobs_failed_for_good_exits_1_and_says_how_to_rerun_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=2)
    out = tmp_path / "out"
    first = run_in_emulator(m, out, script=(400,))
    assert (first.succeeded, first.failed) == (1, 1)
    monkeypatch.setenv("SEGMIND_API_KEY", "k")
    monkeypatch.setenv("SEGMIND_API_BASE", DEAD_API)
    assert main(["run", str(m), "--out", str(out), "--no-progress"]) == 1
    stdout = capsys.readouterr().out
    assert "1 failed before, skipped" in stdout and "--retry-failed" in stdout


async def test_a_path_outside_out_is_recorded_unwritten_not_lost(tmp_path: Path) -> None:
    """The writer's last line of defence: a path that escapes --out is never written,
    and the paid image is recorded as such (validation refuses it before sending)."""
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    job = next(grid.expand(manifest.load(m)))
    escaping = Job(job.job_id, job.params, "../escape.{ext}")
    out = tmp_path / "out"
    async with emulated() as served:
        result = await run_jobs(m, served, out, [escaping])
        assert served.stats.billed_total == 1
    assert result.totals.unwritten == 1 and result.totals.stopped is not None
    assert result.totals.stopped.reason is StopReason.WRITE_FAILURE
    assert "escapes the output folder" in result.totals.stopped.message
    assert result.totals.spent == pytest.approx(0.063)
    assert not (tmp_path / "escape.jpg").exists()
    job_lines = [line for line in lines(out) if line.get("job_id")]
    assert [line["status"] for line in job_lines] == ["started", "unwritten"]
    assert job_lines[1]["billed"] == "billed" and job_lines[1]["request_id"]


@pytest.mark.slow
def test_a_run_after_a_kill_removes_the_killed_runs_temp_files(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)  # 8 jobs
    out = tmp_path / "out"
    with emulator_process("--latency", "1.0", "--latency-jitter", "0") as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        killed = batchgen("run", str(m), "--out", str(out), "--concurrency", "2", env=env)
        wait_for_lines(out / "ledger.jsonl", "started", 1)
        mine = out / "p0" / ".lost.jpg.ledger.part"  # as a kill between write and rename leaves
        theirs = out / "p0" / ".other.jpg.ledger.shard-1-of-2.part"  # a live shard's
        for path in (mine, theirs):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"half an image")
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=10)
        again = batchgen("run", str(m), "--out", str(out), "--no-progress", env=env)
        _, stderr = again.communicate(timeout=60)
        assert again.returncode == 0, stderr
    assert not mine.exists() and theirs.exists()
    assert not [p for p in out.rglob("*.ledger.part")]
