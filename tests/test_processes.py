"""`batchgen run` as a real process: killed, interrupted, keyless; the key never leaks."""

from __future__ import annotations

import json
import random
import signal
import time
import urllib.parse
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from batchgen import grid, ledger, manifest
from batchgen.cli import main
from tests.processes import batchgen, emulator_process, killed_mid_run, wait_for_lines
from tests.runs import job_fingerprints, make_project

pytestmark = pytest.mark.slow


def ledger_state(out: Path) -> tuple[set[str], set[str]]:
    """(jobs recorded as succeeded, jobs with an attempt open: maybe in flight at a kill)."""
    succeeded: set[str] = set()
    open_attempts: set[str] = set()
    for record in ledger.read(out / "ledger.jsonl"):
        job = record.get("job_id")
        if record["status"] == "started":
            open_attempts.add(job)
        elif job is not None:
            open_attempts.discard(job)
            if record["status"] == "succeeded":
                succeeded.add(job)
    return succeeded, open_attempts


def test_sigkill_mid_run_then_resume_never_pays_twice_for_finished_work(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=4, prompts=3, seeds=2)  # 24 jobs
    out = tmp_path / "out"
    fingerprints = job_fingerprints(m)
    rng = random.Random(7)
    charged_when_recorded: dict[str, int] = {}  # job -> its charges once its success was on disk
    in_flight_at_kills = kills = 0
    with emulator_process("--latency", "0.4", "--latency-jitter", "0.5") as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        for _ in range(3):
            killed_mid_run("run", str(m), "--out", str(out), "--concurrency", "4", env=env,
                           ledger=out / "ledger.jsonl", successes=len(charged_when_recorded) + 1,
                           delay=rng.uniform(0.0, 0.6))  # fmt: skip
            kills += 1
            succeeded, open_attempts = ledger_state(out)
            charges = emu.stats()["charges"]
            for job in succeeded - set(charged_when_recorded):
                charged_when_recorded[job] = charges[fingerprints[job]]
            in_flight_at_kills += len(open_attempts)
        final = batchgen("run", str(m), "--out", str(out), "--no-progress", env=env)
        _, stderr = final.communicate(timeout=60)
        assert final.returncode == 0, stderr
        assert "batchgen: the last run was cut: " in stderr  # killed: it says what it found
        charges = emu.stats()["charges"]
    jobs = list(grid.expand(manifest.load(m)))
    succeeded, open_attempts = ledger_state(out)
    assert succeeded == {job.job_id for job in jobs} and not open_attempts
    images = [p for p in out.rglob("*.jpg") if "thumbs" not in p.relative_to(out).parts]
    assert len(images) == len(jobs)  # one image per job (beside the ledger and the gallery)
    # once a success is recorded, that job is never charged again
    assert {
        job: charges[fingerprints[job]] for job in charged_when_recorded
    } == charged_when_recorded
    double = sum(count - 1 for count in charges.values() if count > 1)
    assert double <= in_flight_at_kills  # only requests cut by a kill were paid twice
    print(
        f"\ncrash test: {len(jobs)} jobs, {kills} SIGKILLs, {len(charged_when_recorded)} recorded "
        f"before a kill and never charged again, {in_flight_at_kills} requests in flight at the "
        f"kills, {double} charged twice (all of them cut by a kill)"
    )


def test_sigint_drains_in_flight_requests_and_exits_3(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=4, prompts=2, seeds=2)  # 16 jobs
    out = tmp_path / "out"
    with emulator_process("--latency", "1.0", "--latency-jitter", "0") as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        run = batchgen("run", str(m), "--out", str(out), "--concurrency", "4", env=env)
        wait_for_lines(out / "ledger.jsonl", "started", 4)
        run.send_signal(signal.SIGINT)
        stdout, stderr = run.communicate(timeout=30)
        assert run.returncode == 3, stderr
        assert "interrupted by SIGINT" in stdout and "resume" in stdout
        succeeded, open_attempts = ledger_state(out)
        assert len(succeeded) >= 4 and not open_attempts  # in flight finished and recorded
        end = [r for r in ledger.read(out / "ledger.jsonl") if r["status"] == "run_end"]
        assert "SIGINT" in end[-1]["stopped"]
        again = batchgen("run", str(m), "--out", str(out), env=env)
        again.communicate(timeout=60)
        assert again.returncode == 0
        assert emu.stats()["billed_total"] == 16


def test_a_second_sigint_aborts_at_once_and_records_what_it_cut(tmp_path: Path) -> None:
    """At 20 s a request, the second Ctrl-C used to wait 17 s (the producer, blocked on
    a full queue, held the cancellation up) and left 89 of 100 jobs counted as 16."""
    m = make_project(tmp_path, images=5, prompts=5, seeds=4)  # 100 jobs
    out = tmp_path / "out"
    with emulator_process("--latency", "20", "--latency-jitter", "0") as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        run = batchgen(
            "run", str(m), "--out", str(out), "--concurrency", "8", "--rpm", "600", env=env
        )
        wait_for_lines(out / "ledger.jsonl", "started", 8)
        time.sleep(0.3)
        run.send_signal(signal.SIGINT)
        time.sleep(0.3)
        second = time.monotonic()
        run.send_signal(signal.SIGINT)
        stdout, stderr = run.communicate(timeout=30)
        took = time.monotonic() - second
    assert run.returncode == 3, stderr
    assert took < 2.0, f"the second SIGINT took {took:.1f} s"  # not the 20 s requests
    assert "Traceback" not in stderr and "aborted by a second signal" in stdout
    records = list(ledger.read(out / "ledger.jsonl"))
    started = [r for r in records if r["status"] == "started"]
    cut = [r for r in records if r["status"] == "interrupted"]
    assert len(started) == 8 and {r["job_id"] for r in cut} == {r["job_id"] for r in started}
    assert all((r["billed"], r["cost"]) == ("maybe", 0.063) for r in cut)
    _, open_attempts = ledger_state(out)
    assert not open_attempts  # every request in flight has its outcome: cut, maybe billed
    finished = sum(r["status"] in ("succeeded", "failed", "unwritten") for r in records)
    assert f"not run     {100 - finished:,} (the next run does them)" in stdout
    assert "$0.50 possibly billed" in stdout  # 8 cut requests at $0.063


def test_a_short_outage_is_ridden_out(tmp_path: Path) -> None:
    """The service stops for 3 s mid-run (terminated, then started again on the same
    port): the pool waits, probing, and finishes; nothing is paid twice. It used to
    spend the retry budget in a second and stop (exit 3)."""
    m = make_project(tmp_path, images=5, prompts=4, seeds=2)  # 40 jobs
    out = tmp_path / "out"
    fingerprints = job_fingerprints(m)
    options = ("--latency", "0.2", "--latency-jitter", "0")
    with emulator_process(*options) as first:
        port = str(urllib.parse.urlsplit(first.url).port)
        env = {"SEGMIND_API_KEY": first.key, "SEGMIND_API_BASE": first.url}
        run = batchgen("run", str(m), "--out", str(out), "--concurrency", "4", "--no-progress",
                       env=env)  # fmt: skip
        wait_for_lines(out / "ledger.jsonl", "succeeded", 8)
        down = time.time()
        first.process.terminate()  # it finishes what it is answering, then says who paid
        final = first.process.communicate(timeout=30)[0].strip().splitlines()[-1]
        before = json.loads(final)["final_stats"]
        time.sleep(max(0.0, down + 3.0 - time.time()))
        with emulator_process(*options, "--port", port) as second:
            up = time.time()
            stdout, stderr = run.communicate(timeout=120)
            after = second.stats()
    assert run.returncode == 0, stdout + stderr
    charges = Counter(before["charges"]) + Counter(after["charges"])
    assert charges == Counter(fingerprints.values())  # every job charged once
    records = list(ledger.read(out / "ledger.jsonl"))
    assert sum(r["status"] == "succeeded" for r in records) == 40

    def sent_at(record: dict[str, object]) -> float:
        return datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00")).timestamp()

    during = [r for r in records if r["status"] == "started" and down <= sent_at(r) <= up]
    probes = [r for r in during if r.get("probe")]
    # the failures before the breaker opened (4 in a row; the streak starts over on each
    # answer to what the stopping service finished), a free resend each for the
    # kept-alive connections it closed, then probes only
    assert len(during) - len(probes) <= 3 * 4 and 1 <= len(probes) <= 4, during
    outage = [r for r in records if r["status"] == "retry" and r.get("outage")]
    assert outage and all(r["billed"] == "no" for r in outage)  # never reached: not billed
    print(f"\noutage test: {len(during)} requests in the {up - down:.1f} s outage, "
          f"{len(probes)} of them probes")  # fmt: skip


def test_missing_key_is_a_clear_error_before_any_work(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    run = batchgen("run", str(m), "--out", str(tmp_path / "out"))
    _, stderr = run.communicate(timeout=30)
    assert run.returncode == 2
    assert "SEGMIND_API_KEY is not set" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_the_key_never_appears_in_anything_written(tmp_path: Path) -> None:
    secret = "sk-SECRET-9f8e7d6c5b4a"
    wrong = "sk-WRONG-0a1b2c3d4e5f"
    m = make_project(tmp_path, images=2, prompts=1, seeds=2)
    texts: list[str] = []
    with emulator_process("--script", "502,400", key=secret) as emu:
        for key, out in ((secret, tmp_path / "out"), (wrong, tmp_path / "out-wrong")):
            env = {"SEGMIND_API_KEY": key, "SEGMIND_API_BASE": emu.url}
            for args in (["run", str(m), "--out", str(out)], ["report", str(out)],
                         ["run", "--help"], ["plan", str(m), "--out", str(out), "--list"]):  # fmt: skip
                process = batchgen(*args, env=env)
                texts += process.communicate(timeout=60)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("utf-8", "replace"))
    everything = "\n".join(texts)
    assert "HTTP 400" in everything and "refused (HTTP 401)" in everything  # both runs happened
    assert secret not in everything and wrong not in everything


def test_report_merges_ledgers_and_groups_failures(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=1, seeds=2)
    out = tmp_path / "out"
    with emulator_process("--script", "400") as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        run = batchgen("run", str(m), "--out", str(out), "--concurrency", "1", env=env)
        stdout, _ = run.communicate(timeout=60)
    assert run.returncode == 1 and "HTTP 400" in stdout
    report = batchgen("report", str(out), "--json")
    summary = json.loads(report.communicate(timeout=30)[0])
    assert report.returncode == 1
    assert (summary["succeeded"], summary["failed"]) == (3, 1)
    assert list(summary["failures"].values()) == [1]
    assert Counter(j["retryable"] for j in summary["failed_jobs"]) == {False: 1}
    assert summary["spent"] == pytest.approx(3 * 0.063)


def _bytes_read() -> int:
    """What this process has read so far (Linux's /proc/self/io `rchar`)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")
def test_a_resume_reads_each_finished_image_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` checks finished outputs in its plan pass and again as it feeds the
    workers; a big resume must not read every image twice to do so."""
    m = make_project(tmp_path, images=3, prompts=2, seeds=2)
    out = tmp_path / "out"
    with emulator_process("--image-scale", "0.5") as emu:
        monkeypatch.setenv("SEGMIND_API_KEY", emu.key)
        monkeypatch.setenv("SEGMIND_API_BASE", emu.url)
        assert main(["run", str(m), "--out", str(out), "--no-progress"]) == 0
        images = [p for p in out.rglob("*.jpg") if "thumbs" not in p.parts]
        size = sum(p.stat().st_size for p in images)
        before = _bytes_read()
        assert main(["run", str(m), "--out", str(out), "--no-progress"]) == 0
        read = _bytes_read() - before
        assert emu.stats()["requests_total"] == len(images) == 12
    assert "12 already done" in capsys.readouterr().err
    assert size <= read < 1.5 * size, (read, size)  # each image once, plus ledger and inputs
