"""`import batchgen`: the public calls, as a user's code makes them."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import pytest

import batchgen
from batchgen import events
from tests.processes import emulator_process
from tests.runs import emulated, make_project


def test_the_package_exports_what_the_readme_promises() -> None:
    for name in ("plan", "run", "run_async", "report", "RunResult", "StopReason", "Plan"):
        assert name in batchgen.__all__ and hasattr(batchgen, name)
    assert (Path(batchgen.__file__).parent / "py.typed").exists()
    assert callable(batchgen.plan) and callable(batchgen.report)  # not the modules


def test_plan_needs_no_network_and_counts_what_a_run_would_do(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=3)
    plan = batchgen.plan(m, out=tmp_path / "out", rpm=50, concurrency=8)
    assert (plan.jobs, plan.done, plan.to_run) == (12, 0, 12)
    assert plan.estimated_cost == pytest.approx(12 * 0.063)
    assert plan.axes == {"image_file": 2, "prompt": 2, "seed": 3}
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    loaded = batchgen.load_manifest(m)  # an already loaded manifest works the same
    assert batchgen.plan(loaded).jobs == 12


async def test_run_async_in_a_running_loop_then_a_rerun_sends_nothing(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)
    out = tmp_path / "out"
    seen: list[events.Event] = []
    async with emulated() as served:
        first = await batchgen.run_async(
            m, out=out, api_base=served.url, api_key=served.api_key, on_event=seen.append
        )
        sent = served.stats.requests_total
        again = await batchgen.run_async(m, out=out, api_base=served.url, api_key=served.api_key)
        assert served.stats.requests_total == sent == 8  # the rerun sent nothing
    assert (first.succeeded, first.failed, first.stopped, first.spent) == (8, 0, None, 0.504)
    assert (again.succeeded, again.skipped_done, again.requests, again.spent) == (0, 8, 0, 0.0)
    assert isinstance(seen[0], events.RunPlanned) and seen[0].plan.to_run == 8
    finished = [e for e in seen if isinstance(e, events.JobFinished)]
    assert len(finished) == 8 and all(e.ok for e in finished)
    assert sum(isinstance(e, events.JobStarted) for e in seen) == 8
    summary = batchgen.report(out)
    assert (summary.succeeded, summary.spent) == (8, pytest.approx(first.spent))


def test_run_works_from_a_worker_thread(tmp_path: Path) -> None:
    """No signal handlers unless asked: a thread has no set_wakeup_fd."""
    m = make_project(tmp_path, images=1, prompts=2, seeds=2)
    results: list[batchgen.RunResult] = []
    errors: list[BaseException] = []
    with emulator_process() as emu:

        def work() -> None:
            try:
                results.append(batchgen.run(m, out=tmp_path / "out", api_base=emu.url,
                                            api_key=emu.key))  # fmt: skip
            except BaseException as err:
                errors.append(err)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join(timeout=60)
        assert emu.stats()["billed_total"] == 4
    assert not errors and results[0].succeeded == 4


async def test_run_inside_a_running_loop_runs_its_own_loop_in_a_thread(tmp_path: Path) -> None:
    """A notebook cell calls batchgen.run while its loop runs: it must not fail with
    'asyncio.run() cannot be called from a running event loop'."""
    m = make_project(tmp_path, images=1, prompts=1, seeds=2)
    with emulator_process() as emu:
        result = batchgen.run(m, out=tmp_path / "out", api_base=emu.url, api_key=emu.key)
    assert result.succeeded == 2 and asyncio.get_running_loop().is_running()


def test_bad_input_raises_input_error_and_sends_nothing(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    with pytest.raises(batchgen.InputError, match="SEGMIND_API_KEY is not set"):
        batchgen.run(m, out=tmp_path / "out")
    with pytest.raises(batchgen.InputError, match="not an http"):
        batchgen.run(m, out=tmp_path / "out", api_key="k", api_base="ftp://nowhere")
    assert not (tmp_path / "out").exists()


async def test_a_refused_confirmation_is_a_typed_stop_with_nothing_sent(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=2, seeds=1)
    asked: list[batchgen.Plan] = []

    def no(plan: batchgen.Plan) -> bool:
        asked.append(plan)
        return False

    async with emulated() as served:
        result = await batchgen.run_async(
            m, out=tmp_path / "out", api_base=served.url, api_key=served.api_key, confirm=no
        )
        assert served.stats.requests_total == 0
    assert asked[0].to_run == 2
    assert result.stopped is not None and result.stopped.reason is batchgen.StopReason.NOT_CONFIRMED
    assert result.requests == 0 and result.run_id is None


async def test_a_budget_stop_is_typed(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)
    async with emulated() as served:
        result = await batchgen.run_async(
            m, out=tmp_path / "out", api_base=served.url, api_key=served.api_key,
            max_cost=0.2, concurrency=2,
        )  # fmt: skip
    assert result.stopped is not None and result.stopped.reason is batchgen.StopReason.BUDGET
    assert result.spent <= 0.2 and result.succeeded == 3 and result.not_run == 5


def test_the_readmes_python_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text(encoding="utf-8")
    section = text.split("## From Python", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    shutil.copytree(root / "jobs", tmp_path / "jobs")
    monkeypatch.chdir(tmp_path)
    with emulator_process() as emu:
        monkeypatch.setenv("SEGMIND_API_KEY", emu.key)
        monkeypatch.setenv("SEGMIND_API_BASE", emu.url)
        exec(compile(example, "README.md", "exec"), {})
        billed = emu.stats()["billed_total"]
    printed = capsys.readouterr().out.splitlines()
    jobs = batchgen.plan(tmp_path / "jobs" / "grid.yaml").jobs
    assert printed[0].startswith(f"{jobs} 0 {jobs} $")
    assert printed[1] == f"{jobs} 0 0 {round(jobs * 0.063, 6)}" and billed == jobs
    assert batchgen.report(tmp_path / "results").succeeded == jobs


@pytest.mark.parametrize(("concurrency", "first"), [(None, 2), (8, 8)], ids=["default", "given"])
async def test_a_given_concurrency_is_the_first_window(
    tmp_path: Path, concurrency: int | None, first: int
) -> None:
    """Left out, the pool probes up from 2 in flight (a limit nobody stated); given, the
    run starts with that many in flight, as the user asked (and a fixed pool did)."""
    m = make_project(tmp_path, images=4, prompts=2, seeds=2)  # 16 jobs
    sent: list[float] = []  # when each request went, by the run's own events

    def on_event(event: events.Event) -> None:
        if isinstance(event, events.JobStarted):
            sent.append(time.monotonic())

    async with emulated(latency=0.5, latency_jitter=0.0) as served:
        result = await batchgen.run_async(
            m, out=tmp_path / "out", api_base=served.url, api_key=served.api_key,
            concurrency=concurrency, on_event=on_event,
        )  # fmt: skip
    assert result.succeeded == 16
    assert sum(t < sent[0] + 0.4 for t in sent) == first  # before any answer could come
