"""Shards: a partition of the jobs, one ledger each, merged back by resume and report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen import grid, ledger, manifest
from batchgen.cli import main
from batchgen.errors import InputError
from batchgen.shard import Shard, parse
from tests.processes import batchgen, emulator_process
from tests.runs import make_project


@pytest.fixture(scope="module")
def job_ids(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("shards")
    urls = [f"https://example.com/{i}.jpg" for i in range(40)]
    (folder / "m.yaml").write_text(json.dumps({"grid": {"image_file": urls, "prompt": ["a", "b"],
                                                        "seed": {"count": 5}}}))  # fmt: skip
    return [job.job_id for job in grid.expand(manifest.load(folder / "m.yaml"))]


@settings(max_examples=40, deadline=None)
@given(count=st.integers(min_value=1, max_value=16), take=st.integers(min_value=1, max_value=400))
def test_shards_partition_the_jobs(job_ids: list[str], count: int, take: int) -> None:
    jobs = job_ids[:take]
    owners = [[i for i in range(1, count + 1) if Shard(i, count).owns(job)] for job in jobs]
    assert all(len(owner) == 1 for owner in owners)  # union is everything, no overlap


def test_shards_are_balanced(job_ids: list[str]) -> None:
    sizes = [sum(Shard(i, 4).owns(job) for job in job_ids) for i in range(1, 5)]
    assert sum(sizes) == 400 and max(sizes) - min(sizes) < 60, sizes


@pytest.mark.parametrize(
    ("spec", "count", "environ", "expected"),
    [
        ("2/8", None, {}, Shard(2, 8)),
        (" 1 / 1 ", None, {}, Shard(1, 1)),
        ("auto", 5, {"JOB_COMPLETION_INDEX": "0"}, Shard(1, 5)),
        ("auto", 5, {"JOB_COMPLETION_INDEX": "4"}, Shard(5, 5)),
        ("auto", None, {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0"}, Shard(1, 3)),
        ("auto", None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"}, Shard(3, 3)),
        ("auto", 4, {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "1"}, Shard(2, 4)),
    ],
)  # fmt: skip
def test_parse_shard(
    spec: str, count: int | None, environ: dict[str, str], expected: Shard
) -> None:
    assert parse(spec, shard_count=count, environ=environ) == expected


@pytest.mark.parametrize(
    ("spec", "count", "environ", "message"),
    [
        ("0/4", None, {}, "shard 0 of 4 does not exist"),
        ("5/4", None, {}, "shard 5 of 4 does not exist"),
        ("two/4", None, {}, "must be I/N"),
        ("auto", None, {"JOB_COMPLETION_INDEX": "1"}, "pass --shard-count"),
        ("auto", 2, {"JOB_COMPLETION_INDEX": "2"}, "shard 3 of 2 does not exist"),
        ("auto", None, {"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_COUNT is not set"),
        ("auto", None, {"SLURM_ARRAY_TASK_ID": "x"}, "is not a whole number"),
        ("auto", 3, {}, "needs JOB_COMPLETION_INDEX"),
    ],
)
def test_bad_shards_are_clear_errors(
    spec: str, count: int | None, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        parse(spec, shard_count=count, environ=environ)


def test_plan_shows_the_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = make_project(tmp_path, images=3, prompts=3, seeds=3)
    assert main(["plan", str(m), "--shard-count", "3", "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert [s["shard"] for s in whole["shards"]] == [1, 2, 3]
    assert sum(s["jobs"] for s in whole["shards"]) == whole["jobs"] == 27
    for entry in whole["shards"]:
        assert main(["plan", str(m), "--shard", f"{entry['shard']}/3", "--json"]) == 0
        one = json.loads(capsys.readouterr().out)
        assert (one["jobs"], one["shard"]) == (entry["jobs"], f"{entry['shard']}/3")
    assert main(["plan", str(m), "--shard-count", "3"]) == 0
    assert "--shard 2/3" in capsys.readouterr().out


@pytest.mark.slow
def test_three_shard_processes_complete_every_job_exactly_once(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=3, prompts=3, seeds=2)  # 18 jobs
    out, single = tmp_path / "out", tmp_path / "single"
    with emulator_process("--latency", "0.2") as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        shards = [
            batchgen("run", str(m), "--out", str(out), "--shard", "auto", "--rpm-total", "1800",
                     env={**env, "SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_TASK_MIN": "1",
                          "SLURM_ARRAY_TASK_COUNT": "3"})
            for i in (1, 2, 3)
        ]  # fmt: skip
        for process in shards:
            _, stderr = process.communicate(timeout=60)
            assert process.returncode == 0, stderr
        stats = emu.stats()
        assert stats["billed_total"] == 18 and set(stats["charges"].values()) == {1}
        rerun = batchgen("run", str(m), "--out", str(out), env=env)  # unsharded: nothing to redo
        rerun.communicate(timeout=60)
        assert rerun.returncode == 0 and emu.stats()["requests_total"] == 18
    with emulator_process() as emu:
        env = {"SEGMIND_API_KEY": emu.key, "SEGMIND_API_BASE": emu.url}
        batchgen("run", str(m), "--out", str(single), env=env).communicate(timeout=60)
    names = sorted(p.name for p in out.glob("ledger*.jsonl"))
    assert names == ["ledger.jsonl", *(f"ledger.shard-{i}-of-3.jsonl" for i in (1, 2, 3))]
    runs = [r for r in ledger.read(out / "ledger.shard-2-of-3.jsonl") if r["status"] == "run"]
    assert runs[0]["options"]["rpm"] == 600 and runs[0]["options"]["shard"] == "2/3"

    def summary(folder: Path) -> dict[str, object]:
        process = batchgen("report", str(folder), "--json")
        data: dict[str, object] = json.loads(process.communicate(timeout=30)[0])
        return {k: data[k] for k in ("jobs", "succeeded", "failed", "spent", "possibly_billed")}

    assert summary(out) == summary(single) == {
        "jobs": 18, "succeeded": 18, "failed": 0, "spent": pytest.approx(18 * 0.063),
        "possibly_billed": 0.0,
    }  # fmt: skip
    outputs = sorted(p.relative_to(out) for p in out.rglob("*.jpg"))
    assert outputs == sorted(p.relative_to(single) for p in single.rglob("*.jpg"))
