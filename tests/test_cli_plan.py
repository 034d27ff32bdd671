"""`batchgen plan`: figures, listing, and errors that are not tracebacks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from batchgen import gallery, ledger, planning
from batchgen.cli import main
from tests.helpers import make_image, write
from tests.runs import emulated, run


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for i in range(3):
        make_image(tmp_path / "photos" / f"p{i}.jpg", colour=i)
    write(
        tmp_path / "m.yaml",
        """
        price: 0.05
        grid:
          image_file: [photos/]
          prompt: [one, two]
          seed: [101, 202]
        """,
    )
    return tmp_path


def plan_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["plan", *args, "--json"]) == 0
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return result


def test_plan_counts_done_jobs_from_the_ledger(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = str(project / "m.yaml")
    fresh = plan_json(capsys, m, "--out", str(project / "out"))
    assert fresh["jobs"] == 12 and fresh["done"] == 0 and fresh["to_run"] == 12
    assert fresh["estimated_cost"] == pytest.approx(0.60)
    assert main(["plan", m, "--list"]) == 0
    jobs = [json.loads(row) for row in capsys.readouterr().out.splitlines()]
    assert len(jobs) == 12 and "sha256" in jobs[0]["params"]["image_file"]
    assert "data" not in json.dumps(jobs[0])  # image bytes are never listed

    out = project / "out"
    out.mkdir()
    (out / "a.jpg").write_bytes(b"x")
    lines = [
        ledger.encode({"v": 1, "ts": "t", "job_id": jobs[0]["job_id"], "status": "succeeded",
                       "output": "a.jpg", "bytes": 1, "sha256": hashlib.sha256(b"x").hexdigest()}),
        ledger.encode({"v": 1, "ts": "t", "job_id": jobs[1]["job_id"], "status": "failed", "retryable": False}),
        ledger.encode({"v": 1, "ts": "t", "job_id": jobs[2]["job_id"], "status": "succeeded",
                       "output": "missing.jpg", "bytes": 1, "sha256": "0" * 64}),
    ]  # fmt: skip
    (out / "ledger.jsonl").write_bytes(b"".join(lines))
    again = plan_json(capsys, m, "--out", str(out))
    assert (again["done"], again["failed"], again["to_run"]) == (1, 1, 10)
    assert again["missing"] == 1  # succeeded, but missing.jpg is not there: paid again
    assert again["estimated_cost"] == pytest.approx(0.50)
    retry = plan_json(capsys, m, "--ledger", str(out / "ledger.jsonl"), "--retry-failed")
    assert retry["to_run"] == 11


def test_plan_estimates_time(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figures = plan_json(capsys, str(project / "m.yaml"), "--rpm", "6", "--concurrency", "50")
    assert figures["estimated_seconds"] == 120  # 12 jobs at 6 per minute
    assert main(["plan", str(project / "m.yaml"), "--concurrency", "4"]) == 0
    text = capsys.readouterr().out
    assert "jobs       12" in text and "time       about 33s" in text


def test_bad_manifest_exits_2_without_traceback(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(
        project / "bad.yaml", "grid:\n  image_file: [photos/]\n  prompt: [x]\n  seed: [5]\n"
    )
    assert main(["plan", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4: seed 5 is out of range 100..999999" in err


def test_missing_manifest_and_bad_flags(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(project / "nope.yaml")]) == 2
    assert "cannot read manifest" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["plan", str(project / "m.yaml"), "--rpm", "-3"])
    assert caught.value.code == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "m.yaml", "--concurrency", "0"], "argument --concurrency: 0 must be at least 1"),
        (["plan", "m.yaml", "--rpm", "fast"], "argument --rpm: 'fast' is not a number"),
        (["run", "m.yaml", "--max-cost", "-1"], "argument --max-cost: -1 must be 0 or more"),
        (["run", "m.yaml", "--rpm", "inf"], "argument --rpm: inf must be a finite number"),
        (["emulator", "--fail-502", "2"], "argument --fail-502: 2 must be between 0 and 1"),
        (["emulator", "--latency", "-1"], "argument --latency: -1 must be 0 or more"),
        (["emulator", "--image-scale", "0"], "argument --image-scale: 0 must be in (0, 1]"),
    ],
)
def test_bad_numbers_in_options_say_which_and_why(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert message in err


async def test_outputs_and_thumbnails_are_never_read_back_as_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i, name in enumerate(["a.jpg", "b.jpg", "sub/c.jpg"]):
        make_image(tmp_path / "imgs" / name, colour=i * 100)
    m = write(
        tmp_path / "m.yaml",
        """
        grid:
          image_file: ["imgs/**/*.jpg"]
          prompt: [night]
          seed: [101, 202]
        """,
    )
    out = tmp_path / "imgs" / "results"
    first = plan_json(capsys, str(m), "--out", str(out))
    assert first["jobs"] == 6 and first["skipped"] == []

    async with emulated() as served:  # last night's batch, written inside the input tree
        result = await run(m, served, out)
    assert result.succeeded == 6
    gallery.write_gallery(ledger.ledgers_in(out))  # and its thumbnails, in out/thumbs/
    picked_up = sorted(out.rglob("*.jpg"))
    assert len(picked_up) > 6 and any(p.parent.name == "thumbs" for p in picked_up)

    again = plan_json(capsys, str(m), "--out", str(out))
    assert (again["jobs"], again["done"], again["to_run"]) == (6, 6, 0)
    assert again["skipped"] == [
        {"folder": str(out), "reason": "output folder", "files": len(picked_up)}
    ]
    assert main(["plan", str(m), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    line = f"skipped    {len(picked_up)} input files under the output folder {out} "
    assert line + "(outputs are never inputs)" in text and "jobs       6" in text
    assert main(["plan", str(m), "--out", str(out), "--list"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6

    # without --out, the folder is still known for what it is: it holds a ledger
    alone = plan_json(capsys, str(m))
    assert alone["jobs"] == 6
    assert alone["skipped"] == [
        {"folder": "imgs/results", "reason": "ledger folder", "files": len(picked_up)}
    ]

    # a file named directly is the user's choice, even under the output folder
    named = picked_up[0].relative_to(tmp_path).as_posix()
    direct = write(tmp_path / "direct.yaml", f"jobs: [{{image_file: {named}, prompt: x}}]\n")
    assert plan_json(capsys, str(direct), "--out", str(out))["jobs"] == 1

    # a glob that picks only outputs says so, instead of "matches no file"
    only = write(
        tmp_path / "only.yaml", "grid: {image_file: ['imgs/results/**/*.jpg'], prompt: [x]}\n"
    )
    assert main(["plan", str(only), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "matches no file once outputs are left out" in err
    assert f"under the output folder {out} (outputs are never inputs)" in err


def test_plan_says_which_limit_binds(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The runner's model: min(rpm, in flight / latency), 11 s an image, 10 in flight."""
    assert planning.estimate_seconds(2000, concurrency=None, rpm=50) == 40 * 60
    assert planning.estimate_bound(concurrency=None, rpm=50) == (
        "your 50/min limit binds (10 in flight would allow 54/min)"
    )
    assert planning.estimate_seconds(1100, concurrency=None, rpm=None) == 1210  # 10 per 11 s
    assert planning.estimate_bound(concurrency=None, rpm=1200).startswith(
        "the service's 10 in flight binds (54/min at 11 s an image, under your 1200/min"
    )
    assert planning.estimate_bound(concurrency=4, rpm=None).startswith("--concurrency 4 binds")
    assert main(["plan", str(project / "m.yaml"), "--rpm", "6"]) == 0
    text = capsys.readouterr().out
    assert (
        "time       about 2m 00s: your 6/min limit binds (10 in flight would allow 54/min)" in text
    )
    figures = plan_json(capsys, str(project / "m.yaml"))
    assert figures["estimated_seconds"] == 14  # 12 jobs, 10 at a time, 11 s each: 12 / (10/11)
    assert figures["estimate_bound"].startswith("the service's 10 in flight binds")
