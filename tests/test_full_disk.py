"""A paid image is never silently lost when writing fails: real full disks (a small
tmpfs) and real read-only folders (bind mounts), against `batchgen run` processes."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from batchgen import ledger
from tests.mounts import read_only, small_tmpfs
from tests.processes import batchgen, emulator_process, wait_for_lines
from tests.runs import make_project

pytestmark = pytest.mark.slow


def fill(disk: Path) -> None:
    """Take every free byte of `disk`, as another program on the machine might."""
    with (disk / "filler").open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC


def statuses(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in ledger.read(path):
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    return counts


def report(*paths: Path) -> dict[str, object]:
    process = batchgen("report", *map(str, paths), "--json")
    stdout, _ = process.communicate(timeout=30)
    summary: dict[str, object] = json.loads(stdout)
    return summary


def test_a_disk_that_fills_mid_run_stops_the_run_and_loses_no_paid_image(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=4, prompts=5, seeds=2)  # 40 jobs
    book = tmp_path / "ledger.jsonl"  # the ledger on another disk: every line fits
    with (
        small_tmpfs(tmp_path / "disk", size="12m") as disk,
        emulator_process("--latency", "0.3", "--image-scale", "0.25") as emu,
    ):
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        run = batchgen("run", str(m), "--out", str(disk), "--ledger", str(book),
                       "--concurrency", "4", "--no-progress", env=env)  # fmt: skip
        wait_for_lines(book, "succeeded", 4)
        fill(disk)
        stdout, stderr = run.communicate(timeout=60)
        billed = emu.stats()["billed_total"]
        spent = emu.stats()["spent"]
    assert run.returncode == 3, stderr
    assert "Traceback" not in stderr
    assert "No space left on device" in stdout and str(disk) in stdout
    assert "spent       $" in stdout and "unwritten" in stdout
    counts = statuses(book)
    assert counts.get("unwritten", 0) >= 1
    assert counts["succeeded"] + counts["unwritten"] == billed < 40  # every paid image accounted
    summary = report(book)
    assert summary["spent"] == pytest.approx(spent)
    assert summary["unwritten"] == counts["unwritten"]


def test_a_full_disk_holding_the_ledger_too_ends_with_a_summary_not_a_traceback(
    tmp_path: Path,
) -> None:
    m = make_project(tmp_path, images=4, prompts=5, seeds=2)
    with (
        small_tmpfs(tmp_path / "disk", size="12m") as disk,
        emulator_process("--latency", "0.3", "--image-scale", "0.25") as emu,
    ):
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        run = batchgen("run", str(m), "--out", str(disk), "--concurrency", "4",
                       "--no-progress", env=env)  # fmt: skip
        wait_for_lines(disk / "ledger.jsonl", "succeeded", 4)
        fill(disk)
        stdout, stderr = run.communicate(timeout=60)
        billed = emu.stats()["billed_total"]
        counts = statuses(disk / "ledger.jsonl")  # before the tmpfs goes away
    assert run.returncode == 3, stderr
    assert "Traceback" not in stderr and "No space left on device" in stdout
    assert f"over {billed} requests" in stdout  # the summary tells what was paid
    assert 4 <= counts["succeeded"] <= billed


def test_a_read_only_subfolder_is_reported_with_the_money_spent(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)  # p0/ and p1/, 4 jobs each
    out = tmp_path / "out"
    (tmp_path / "frozen").mkdir()
    with (
        read_only(tmp_path / "frozen", out / "p1"),
        emulator_process("--latency", "0.1") as emu,
    ):
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        run = batchgen("run", str(m), "--out", str(out), "--concurrency", "1",
                       "--no-progress", env=env)  # fmt: skip
        stdout, stderr = run.communicate(timeout=60)
        spent = emu.stats()["spent"]
    assert run.returncode == 3, stderr
    assert "Read-only file system" in stdout and "p1" in stdout and "Traceback" not in stderr
    summary = report(out)
    assert summary["spent"] == pytest.approx(spent) and spent > 0
    assert summary["unwritten"] == 1  # the first failed write stops the run


def test_a_read_only_out_is_a_one_line_error_and_nothing_is_sent(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    (tmp_path / "src").mkdir()
    with (
        read_only(tmp_path / "src", tmp_path / "out") as out,
        emulator_process() as emu,
    ):
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        run = batchgen("run", str(m), "--out", str(out), env=env)
        _, stderr = run.communicate(timeout=60)
        assert emu.stats()["requests_total"] == 0
    assert run.returncode == 2
    assert stderr.strip().splitlines()[-1].startswith("batchgen: ")
    assert "Read-only file system" in stderr
    assert "Traceback" not in stderr


def test_an_out_without_room_for_the_first_images_is_refused_before_sending(
    tmp_path: Path,
) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)
    with small_tmpfs(tmp_path / "disk", size="2m") as disk, emulator_process() as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        run = batchgen("run", str(m), "--out", str(disk), env=env)
        _, stderr = run.communicate(timeout=60)
        assert emu.stats()["requests_total"] == 0
    assert run.returncode == 2
    assert "MB free" in stderr and "nothing sent" in stderr and "Traceback" not in stderr
