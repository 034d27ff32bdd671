"""Messages that tell the whole story: timestamped log lines, what a rerun found, a resume
hint that repeats the run's flags, and a question before a big bill on a terminal."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from batchgen import events, ledger
from batchgen.cli import build_parser, main
from batchgen.progress import Progress, stamped
from batchgen.stops import StopReason
from tests.processes import batchgen, emulator_process
from tests.runs import make_project

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"  # UTC, to the second


def test_log_lines_carry_a_utc_timestamp() -> None:
    assert stamped("batchgen: hi", now=1796090403.7) == "2026-12-01T02:00:03Z batchgen: hi"
    stream = io.StringIO()
    progress = Progress(bar=False, stream=stream, interval=0.0, total=3)
    progress(events.JobFinished(job_id="a", ok=True, cost=0.063))
    progress(events.RunStopping("the --max-cost budget of $0.10 is reached", StopReason.BUDGET))
    progress.close()
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(rf"{STAMP} batchgen: 1/3 ok 1 failed 0 \$0\.06", lines[0]), lines
    assert re.fullmatch(
        rf"{STAMP} batchgen: stopping: the --max-cost budget of \$0\.10 is reached; "
        "letting requests in flight finish",
        lines[1],
    ), lines


def job_ids(m: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["plan", str(m), "--list"]) == 0
    return [json.loads(row)["job_id"] for row in capsys.readouterr().out.splitlines()]


@pytest.mark.slow
def test_a_rerun_says_what_it_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)  # 8 jobs
    ids = job_ids(m, capsys)
    out = tmp_path / "out"
    out.mkdir()
    line = {"v": 1, "ts": "2026-12-01T02:00:00.000Z"}
    cut = [ledger.encode({**line, "job_id": None, "status": "run", "manifest": "m.yaml"})]
    cut += [ledger.encode({**line, "job_id": job, "status": "started"}) for job in ids[:5]]
    cut.append(
        ledger.encode({**line, "job_id": ids[5], "status": "succeeded", "output": "gone.jpg",
                       "cost": 0.063, "bytes": 10, "sha256": "0" * 64})
    )  # fmt: skip  # and no run_end: the machine died with 5 requests in flight
    (out / "ledger.jsonl").write_bytes(b"".join(cut))

    assert main(["plan", str(m), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        "missing    1 finished image is missing or changed on disk and will be paid again" in text
    )
    with emulator_process() as emu:
        monkeypatch.setenv("SEGMIND_API_KEY", emu.key)
        monkeypatch.setenv("SEGMIND_API_BASE", emu.url)
        assert main(["run", str(m), "--out", str(out), "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert re.search(rf"^{STAMP} batchgen: 8 jobs, 0 already done, 8 to run", err, re.M)
        assert re.search(rf"^{STAMP} batchgen: settled 5 requests: 5 not billed$", err, re.M)
        assert re.search(
            rf"^{STAMP} batchgen: the last run was cut: what it had in flight is settled "
            r"\(above\)$",
            err,
            re.M,
        ), err
        assert re.search(
            rf"^{STAMP} batchgen: 1 finished image is missing or changed on disk and will be "
            "paid again$",
            err,
            re.M,
        ), err
        assert main(["run", str(m), "--out", str(out), "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert "8 already done" in err and "cut" not in err and "missing" not in err
        plain = tmp_path / "plain"  # the same cut ledger, without the request history
        plain.mkdir()
        (plain / "ledger.jsonl").write_bytes(b"".join(cut))
        assert main(["run", str(m), "--out", str(plain), "--no-progress", "--no-reconcile"]) == 0
        assert re.search(
            rf"^{STAMP} batchgen: the last run was cut: 5 requests were in flight and may "
            "have been billed$",
            capsys.readouterr().err,
            re.M,
        )


def resume_line(stdout: str, name: str = "resume") -> list[str]:
    found = re.search(rf"^  {name} +(batchgen .*?)(?:   #.*)?$", stdout, re.M)
    assert found, stdout
    return shlex.split(found[1])


@pytest.mark.slow
def test_the_resume_hint_repeats_every_flag_that_shaped_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=1)
    out = tmp_path / "out"
    with emulator_process() as emu:
        key_file = tmp_path / "key"
        key_file.write_text(emu.key)
        argv = ["run", str(m), "--out", str(out), "--ledger", str(out / "mine.jsonl"),
                "--api-base", emu.url, "--api-key-file", str(key_file), "--concurrency", "1",
                "--rpm", "600", "--max-cost", "0.1", "--max-attempts", "3", "--timeout", "30.5",
                "--wait-lock", "2", "--confirm-above", "7", "--no-progress"]  # fmt: skip
        assert main(argv) == 3
        stdout = capsys.readouterr().out
        assert "the --max-cost budget of $0.10 is reached" in stdout
        words = resume_line(stdout)
        assert words[:2] == ["batchgen", "run"]
        resumed = build_parser().parse_args(words[1:])
        assert resumed.max_cost == 0.1 and resumed.rpm == 600
        assert vars(resumed) == vars(build_parser().parse_args(argv))
        assert "--retry-failed" not in stdout  # nothing failed

        # the defaults are left out, so the hint stays short
        plain = ["run", str(m), "--out", str(tmp_path / "plain"), "--api-base", emu.url,
                 "--api-key-file", str(key_file), "--max-cost", "0"]  # fmt: skip
        assert main(plain) == 3
        words = resume_line(capsys.readouterr().out)
        assert words[2:] == [str(m), "--out", str(tmp_path / "plain"), "--api-base", emu.url,
                             "--api-key-file", str(key_file), "--max-cost", "0"]  # fmt: skip


@pytest.mark.slow
def test_failures_for_good_point_at_retry_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=1)
    out = tmp_path / "out"
    with emulator_process("--script", "400") as emu:
        monkeypatch.setenv("SEGMIND_API_KEY", emu.key)
        monkeypatch.setenv("SEGMIND_API_BASE", emu.url)
        argv = ["run", str(m), "--out", str(out), "--concurrency", "1", "--rpm", "600"]
        assert main([*argv, "--no-progress"]) == 1
        stdout = capsys.readouterr().out
        retry = build_parser().parse_args(resume_line(stdout, "retry")[1:])
        assert retry.retry_failed and retry.rpm == 600 and retry.concurrency == 1
        assert main([*argv, "--no-progress"]) == 1  # the failure is skipped, and said so
        stdout = capsys.readouterr().out
        assert "(1 failed before, skipped)" in stdout
        assert "  resume  " not in stdout  # the same command would do nothing more
        assert resume_line(stdout, "retry")[-1] == "--retry-failed"
        assert main(resume_line(stdout, "retry")[1:]) == 0  # the 400 was scripted once
        assert emu.stats()["billed_total"] == 4


def test_jobs_left_for_settlement_exit_3_and_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that ran to its end but held a job back (its request may still be billed,
    and the history has no final word yet) did not finish: exit 3, as for any run a
    cron wrapper should simply run again, with the reason and the resume command."""
    m = make_project(tmp_path, images=1, prompts=1, seeds=2)
    out = tmp_path / "out"
    with emulator_process("--script", "504", "--billed-504-share", "1",
                          "--history-lag", "3600") as emu:  # fmt: skip
        monkeypatch.setenv("SEGMIND_API_KEY", emu.key)
        monkeypatch.setenv("SEGMIND_API_BASE", emu.url)
        argv = ["run", str(m), "--out", str(out), "--concurrency", "1", "--history-lag", "600"]
        assert main([*argv, "--no-progress"]) == 3
        stdout = capsys.readouterr().out
        assert "stopped early" in stdout and "1 job left for the next run" in stdout, stdout
        assert "  succeeded   1" in stdout and resume_line(stdout)[1:3] == ["run", str(m)]
        assert emu.stats()["billed_total"] == 2  # the 504 was billed once, never sent again


def expensive_project(root: Path) -> Path:
    """8 jobs at $1 each: above the default --confirm-above of $5."""
    m = make_project(root, images=2, prompts=2, seeds=2)
    m.write_text("price: 1.0\n" + m.read_text())
    return m


def run_on_a_terminal(*args: str, env: dict[str, str], answer: str | None) -> tuple[int, str, str]:
    """`batchgen run ARGS` with stdin on a pseudo-terminal; `answer` is typed once the
    question is on stderr (None: no question is expected, nothing is typed)."""
    master, slave = pty.openpty()
    process = batchgen("run", *args, env=env, stdin=slave)
    os.close(slave)
    seen = b""
    try:
        if answer is not None:
            assert process.stderr is not None
            deadline = time.monotonic() + 30
            while b"[y/N] " not in seen and time.monotonic() < deadline:
                ready, _, _ = select.select([process.stderr], [], [], 0.1)
                if ready:
                    chunk = os.read(process.stderr.fileno(), 4096)
                    assert chunk, seen  # the question came before stderr closed
                    seen += chunk
            os.write(master, answer.encode() + b"\n")
        stdout, stderr = process.communicate(timeout=60)
    finally:
        os.close(master)
    return process.returncode, stdout, seen.decode() + stderr


@pytest.mark.slow
def test_a_big_run_asks_first_on_a_terminal(tmp_path: Path) -> None:
    m = expensive_project(tmp_path)
    with emulator_process() as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        code, stdout, stderr = run_on_a_terminal(
            str(m), "--out", str(tmp_path / "no"), env=env, answer="n"
        )
        question = "batchgen: this will spend about $8.00 on 8 images; continue? [y/N] "
        assert question in stderr
        assert code == 2 and "nothing sent" in stderr and stdout == ""
        assert emu.stats()["requests_total"] == 0
        assert not (tmp_path / "no" / "ledger.jsonl").exists()

        code, _, stderr = run_on_a_terminal(
            str(m), "--out", str(tmp_path / "yes"), "--no-progress", env=env, answer="yes"
        )
        assert question in stderr and code == 0, stderr
        assert emu.stats()["requests_total"] == 8

        for skip in (["--yes"], ["--max-cost", "20"], ["--confirm-above", "8"]):
            out = tmp_path / f"skip-{skip[0].strip('-')}"
            code, _, stderr = run_on_a_terminal(
                str(m), "--out", str(out), "--no-progress", *skip, env=env, answer=None
            )
            assert code == 0 and "continue?" not in stderr, (skip, stderr)
        assert emu.stats()["requests_total"] == 8 * 4


@pytest.mark.slow
def test_without_a_terminal_it_never_asks(tmp_path: Path) -> None:
    m = expensive_project(tmp_path)
    with emulator_process() as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        process = batchgen(
            "run", str(m), "--out", str(tmp_path / "out"), env=env, stdin=subprocess.PIPE
        )
        _, stderr = process.communicate(input="n\n", timeout=60)  # cron: nobody to ask
        assert process.returncode == 0 and "continue?" not in stderr, stderr
        assert emu.stats()["requests_total"] == 8


def test_verbose_shows_each_request_and_never_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """-vv turns on the `batchgen` logger's debug lines on stderr; without it they stay off."""
    m = make_project(tmp_path, images=2, prompts=1, seeds=2)  # 4 jobs
    with emulator_process() as emu:
        monkeypatch.setenv("SEGMIND_API_KEY", emu.key)
        monkeypatch.setenv("SEGMIND_API_BASE", emu.url)
        assert main(["run", str(m), "--out", str(tmp_path / "quiet"), "--no-progress"]) == 0
        assert "POST " not in capsys.readouterr().err
        assert main(["run", str(m), "--out", str(tmp_path / "loud"), "--no-progress", "-vv"]) == 0
        err = capsys.readouterr().err
    posts = re.findall(r"^POST \S+/ideogram-turbo-img-2-img: HTTP 200 after [\d.]+ s", err, re.M)
    assert len(posts) == 4, err
    assert emu.key not in err
