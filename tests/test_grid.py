"""Expansion: sizes, identities and laziness."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen import api, grid, manifest
from tests.helpers import make_image, write

# YAML neither holds raw control characters nor joins JSON's surrogate-pair escapes
printable = st.characters(min_codepoint=32, max_codepoint=0xFFFF, exclude_categories=("Cs", "Cc"))
prompts = st.lists(
    st.text(printable, min_size=1, max_size=8).filter(str.strip),
    min_size=1,
    max_size=4,
    unique=True,
)
seeds = st.lists(st.integers(*api.SEED_RANGE), min_size=1, max_size=4, unique=True)
styles = st.lists(st.sampled_from(api.STYLE_TYPES), min_size=1, max_size=3, unique=True)
urls = st.lists(
    st.integers(0, 999).map(lambda n: f"https://example.com/{n}.jpg"),
    min_size=1,
    max_size=3,
    unique=True,
)


@settings(max_examples=60, deadline=None)
@given(prompts=prompts, seeds=seeds, styles=styles, urls=urls)
def test_grid_size_is_the_product_of_its_axes(
    tmp_path_factory: pytest.TempPathFactory,
    prompts: list[str],
    seeds: list[int],
    styles: list[str],
    urls: list[str],
) -> None:
    folder = tmp_path_factory.mktemp("m")
    body = {"grid": {"image_file": urls, "prompt": prompts, "seed": seeds, "style_type": styles}}
    m = folder / "m.yaml"
    m.write_text(json.dumps(body))  # JSON is YAML
    loaded = manifest.load(m)
    jobs = list(grid.expand(loaded))
    assert len(jobs) == loaded.size == len(prompts) * len(seeds) * len(styles) * len(urls)
    assert len({job.job_id for job in jobs}) == len(jobs)
    assert len({job.output for job in jobs}) == len(jobs)


BASE = {
    "image_file": "https://example.com/a.jpg",
    "prompt": "a fox",
    "seed": 101,
    **api.DEFAULTS,
}
CHANGES = {
    "image_file": "https://example.com/b.jpg",
    "prompt": "a fox ",
    "seed": 102,
    "style_type": "ANIME",
    "resolution": "RESOLUTION_1280_720",
    "image_weight": 51,
    "magic_prompt_option": "OFF",
    "negative_prompt": "",
    "color_palette": {"name": "EMBER"},
}


def test_ids_are_stable_and_change_with_any_field() -> None:
    first = grid.job_id(api.MODEL, BASE)
    assert first == grid.job_id(api.MODEL, dict(reversed(list(BASE.items()))))
    assert len(first) == 32
    seen = {first}
    for field, value in CHANGES.items():
        changed = grid.job_id(api.MODEL, {**BASE, field: value})
        assert changed not in seen, field
        seen.add(changed)
    assert grid.job_id("another-model", BASE) not in seen


def test_ids_are_stable_across_processes(tmp_path: Path) -> None:
    make_image(tmp_path / "p" / "cat.jpg")
    m = write(tmp_path / "m.yaml", "grid: {image_file: [p/], prompt: [x, y], seed: {count: 2}}\n")
    here = [job.job_id for job in grid.expand(manifest.load(m))]
    code = f"from batchgen import grid, manifest; print([j.job_id for j in grid.expand(manifest.load({str(m)!r}))])"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert repr(here) == there.stdout.strip()


def test_local_image_is_identified_by_its_bytes_not_its_path(tmp_path: Path) -> None:
    make_image(tmp_path / "one" / "cat.jpg", colour=1)
    make_image(tmp_path / "two" / "renamed.jpg", colour=1)
    make_image(tmp_path / "three" / "cat.jpg", colour=2)

    def ids(folder: str) -> str:
        m = write(tmp_path / f"{folder}.yaml", f"grid: {{image_file: [{folder}/], prompt: [x]}}\n")
        return next(grid.expand(manifest.load(m))).job_id

    assert ids("one") == ids("two")
    assert ids("one") != ids("three")


def test_defaults_do_not_change_identity(tmp_path: Path) -> None:
    plain = write(tmp_path / "a.yaml", "grid: {image_file: ['https://x.org/a.png'], prompt: [x]}\n")
    explicit = write(
        tmp_path / "b.yaml",
        "params: {style_type: GENERAL, image_weight: 50}\n"
        "grid: {image_file: ['https://x.org/a.png'], prompt: [x]}\n",
    )
    assert [j.job_id for j in grid.expand(manifest.load(plain))] == [
        j.job_id for j in grid.expand(manifest.load(explicit))
    ]


def test_output_paths_are_sanitised(tmp_path: Path) -> None:
    m = write(
        tmp_path / "m.yaml",
        """
        output: "{prompt}/{image}.{ext}"
        grid:
          image_file: ["https://example.com/x/..%2f..%2fetc.jpg"]
          prompt: ["../../etc/passwd", "a <b> & 'c' / d", "\u00e9t\u00e9 \u2603"]
        """,
    )
    for job in grid.expand(manifest.load(m)):
        parts = job.output.split("/")
        assert ".." not in parts and not job.output.startswith("/")
        assert all(part and part not in {".", ".."} for part in parts)
        assert len(parts) == 2


MILLION = textwrap.dedent(
    """
    import resource, sys, json
    from batchgen import grid, manifest
    from batchgen.ledger import LedgerState
    from batchgen.planning import make_plan
    m = manifest.load(sys.argv[1])
    plan = make_plan(manifest=m.display, model=m.model, price=m.price, axes={},
                     jobs=grid.expand(m), standing=LedgerState().standing)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"jobs": plan.jobs, "rss_mb": rss_mb}))
    """
)


@pytest.mark.slow
def test_a_million_job_plan_runs_in_bounded_memory(tmp_path: Path) -> None:
    urls = [f"https://example.com/{i}.jpg" for i in range(100)]
    body = {
        "grid": {
            "image_file": urls,
            "prompt": [f"prompt number {i}" for i in range(1000)],
            "seed": list(range(100, 110)),
        }
    }
    m = tmp_path / "million.yaml"
    m.write_text(json.dumps(body))
    done = subprocess.run(
        [sys.executable, "-c", MILLION, str(m)], capture_output=True, text=True, check=True
    )
    figures = json.loads(done.stdout)
    assert figures["jobs"] == 1_000_000
    # generous: the jobs themselves would take gigabytes; the dedup sets ~200 MB at most
    assert figures["rss_mb"] < 400, figures
