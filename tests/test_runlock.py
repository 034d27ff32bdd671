"""The run lock, with real processes: overlapping runs on one ledger never pay twice."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen import ledger, runlock
from batchgen.cli import main
from tests.processes import batchgen, emulator_process, wait_for_lines
from tests.runs import job_fingerprints, make_project

pytestmark = pytest.mark.slow

HOST = socket.gethostname()


def wait_until(ready: Callable[[], bool], what: str, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"never saw {what}")
        time.sleep(0.02)


def holder_pid(lock: Path) -> int | None:
    """The pid the lock file names, None when there is none (yet, or any more)."""
    try:
        return int(json.loads(lock.read_text())["pid"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def first_to_exit(runs: list[subprocess.Popen[str]], *, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for index, run in enumerate(runs):
            if run.poll() is not None:
                return index
        time.sleep(0.02)
    raise TimeoutError("no run exited")


def succeeded_jobs(path: Path) -> set[str]:
    return {r["job_id"] for r in ledger.read(path) if r["status"] == "succeeded"}


def test_two_runs_started_together_one_refuses_and_no_job_is_paid_twice(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)  # 8 jobs, about 4 s one at a time
    out = tmp_path / "out"
    fingerprints = job_fingerprints(m)
    with emulator_process("--latency", "0.5", "--latency-jitter", "0") as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        args = ("run", str(m), "--out", str(out), "--concurrency", "1", "--no-progress")
        began = time.monotonic()
        runs = [batchgen(*args, env=env), batchgen(*args, env=env)]
        loser_index = first_to_exit(runs)
        refused_after = time.monotonic() - began
        loser, winner = runs[loser_index], runs[1 - loser_index]
        assert winner.poll() is None  # refused while the other was still running
        loser_out, loser_err = loser.communicate(timeout=10)
        _, winner_err = winner.communicate(timeout=60)
        stats = emu.stats()
    assert loser.returncode == 3, loser_err
    assert (
        f"batchgen: {out / 'ledger.jsonl'} is in use by pid {winner.pid} on {HOST} since "
        in loser_err
    )
    assert loser_err.rstrip().endswith("(another batchgen run); nothing sent")
    assert "to run" not in loser_err and not loser_out  # no plan read, no report printed
    assert winner.returncode == 0, winner_err
    assert stats["charges"] == {fp: 1 for fp in fingerprints.values()}
    assert stats["requests_total"] == len(fingerprints) == 8
    runs_logged = [r for r in ledger.read(out / "ledger.jsonl") if r["status"] == "run"]
    assert len(runs_logged) == 1  # the refused run wrote nothing
    assert not runlock.lock_path(out / "ledger.jsonl").exists()  # removed by its holder
    print(f"\nrun lock: the second run refused after {refused_after:.2f}s, nothing sent")


def test_a_holder_killed_by_sigkill_leaves_no_stale_lock(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)
    out = tmp_path / "out"
    path = out / "ledger.jsonl"
    lock = runlock.lock_path(path)
    with emulator_process("--latency", "0.5", "--latency-jitter", "0") as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        args = ("run", str(m), "--out", str(out), "--concurrency", "2", "--no-progress")
        holder = batchgen(*args, env=env)
        wait_for_lines(path, "succeeded", 1)
        holder.kill()  # SIGKILL: no cleanup of any kind
        holder.communicate(timeout=10)
        assert holder_pid(lock) == holder.pid  # its file is left behind, but not its lock
        began = time.monotonic()
        again = batchgen(*args, env=env)  # --wait-lock 0: a stale lock would refuse it
        _, stderr = again.communicate(timeout=60)
        took = time.monotonic() - began
    assert again.returncode == 0, stderr
    assert "in use" not in stderr and "already done" in stderr
    assert len(succeeded_jobs(path)) == 8
    assert not lock.exists()
    print(f"\nrun lock: after a SIGKILL the next run took the lock at once, done in {took:.1f}s")


def test_wait_lock_queues_behind_the_holder_and_resumes_from_its_results(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)
    out = tmp_path / "out"
    lock = runlock.lock_path(out / "ledger.jsonl")
    fingerprints = job_fingerprints(m)
    with emulator_process("--latency", "0.5", "--latency-jitter", "0") as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        args = ("run", str(m), "--out", str(out), "--concurrency", "1", "--no-progress")
        first = batchgen(*args, env=env)
        wait_until(lambda: holder_pid(lock) == first.pid, "the first run holding the lock")
        second = batchgen(*args, "--wait-lock", "30", env=env)
        _, first_err = first.communicate(timeout=60)
        _, second_err = second.communicate(timeout=60)
        stats = emu.stats()
    assert first.returncode == 0, first_err
    assert second.returncode == 0, second_err
    assert f"in use by pid {first.pid} on {HOST}" in second_err
    assert "waiting up to 30s for it" in second_err  # it found the lock held, and waited
    assert "8 jobs, 8 already done, 0 to run" in second_err  # read after the first run ended
    assert stats["charges"] == {fp: 1 for fp in fingerprints.values()}
    assert stats["requests_total"] == 8


def test_shards_into_one_out_run_side_by_side(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)
    out = tmp_path / "out"
    fingerprints = job_fingerprints(m)
    locks = [runlock.lock_path(out / f"ledger.shard-{i}-of-2.jsonl") for i in (1, 2)]
    with emulator_process("--latency", "1.0", "--latency-jitter", "0") as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        runs = [
            batchgen("run", str(m), "--out", str(out), "--shard", f"{i}/2", "--concurrency", "1",
                     "--no-progress", env=env)
            for i in (1, 2)
        ]  # fmt: skip
        wait_until(
            lambda: [holder_pid(lock) for lock in locks] == [run.pid for run in runs],
            "both shards holding their locks at once",
        )
        results = [run.communicate(timeout=60) for run in runs]
        stats = emu.stats()
    for run, (_, stderr) in zip(runs, results, strict=True):
        assert run.returncode == 0, stderr
        assert "in use" not in stderr
    assert stats["charges"] == {fp: 1 for fp in fingerprints.values()}
    shard_ledgers = ledger.ledgers_in(out)
    assert [p.name for p in shard_ledgers] == [f"ledger.shard-{i}-of-2.jsonl" for i in (1, 2)]
    assert set().union(*map(succeeded_jobs, shard_ledgers)) == set(fingerprints)


def test_plan_and_report_work_while_a_run_holds_the_lock(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)
    out = tmp_path / "out"
    path = out / "ledger.jsonl"
    lock = runlock.lock_path(path)
    with emulator_process("--latency", "1.5", "--latency-jitter", "0") as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        holder = batchgen("run", str(m), "--out", str(out), "--concurrency", "1", env=env)
        try:
            wait_for_lines(path, "succeeded", 1)
            plan = batchgen("plan", str(m), "--out", str(out), "--json")
            report = batchgen("report", str(out), "--json")
            plan_out, plan_err = plan.communicate(timeout=60)
            report_out, report_err = report.communicate(timeout=60)
            assert holder.poll() is None and holder_pid(lock) == holder.pid  # still held
        finally:
            holder.kill()
            holder.communicate(timeout=10)
    assert plan.returncode == 0, plan_err
    assert json.loads(plan_out)["done"] >= 1
    assert report.returncode == 0, report_err
    assert json.loads(report_out)["succeeded"] >= 1


def test_a_refusal_reads_no_ledger_state_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before the resume state is read: a ledger that cannot be read (a corrupt
    middle line, exit 2 once read) is never looked at, and no request can be sent (the
    API base is a closed port)."""
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    path = out / "ledger.jsonl"
    out.mkdir()
    good = '{"v":1,"job_id":null,"status":"run"}\n'
    path.write_text(good + "not json\n" + good)
    monkeypatch.setenv("SEGMIND_API_KEY", "test-key-123")
    monkeypatch.setenv("SEGMIND_API_BASE", "http://127.0.0.1:9/v1")
    args = ["run", str(m), "--out", str(out), "--no-progress"]
    with runlock.hold(path):
        assert main(args) == 3
        err = capsys.readouterr().err
        began = time.monotonic()
        assert main([*args, "--wait-lock", "0.4"]) == 3
        waited = time.monotonic() - began
        waited_err = capsys.readouterr().err
        assert main(["demo", "--out", str(out)]) == 3  # the demo is a real run: it locks too
    assert err.startswith(f"batchgen: {path} is in use by pid ")
    assert err.endswith("(another batchgen run); nothing sent\n") and f"on {HOST} since " in err
    assert 0.4 <= waited < 3 and "waiting up to 0.4s" in waited_err
    assert waited_err.endswith("(another batchgen run); waited 0.4s, nothing sent\n")
    assert main(args) == 2  # unlocked, the ledger is read, and refused as corrupt
    assert "ledger.jsonl:2" in capsys.readouterr().err
