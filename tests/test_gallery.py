"""The contact sheet, from ledgers alone: cells, links, thumbnails, merging, escaping, and
the filters in a real browser (skipped, loudly, where Chromium is missing)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from urllib.parse import urlencode

import pytest
from PIL import Image

from batchgen import api, gallery, grid, ledger, manifest
from batchgen.cli import main
from tests.browser import Browser, find_chromium
from tests.helpers import make_image, write
from tests.runs import emulated, run

HOSTILE = "<script>window.__pwned = 1</script> \"quotes\" & 'ticks' </textarea>"


def project(root: Path) -> Path:
    for i in range(3):
        make_image(root / "photos" / f"p{i}.jpg", colour=i * 60)
    return write(
        root / "m.yaml",
        f"""
        grid:
          image_file: [photos/]
          prompt: ["a calm lake", {json.dumps(HOSTILE)}]
          seed: [101, 202]
        """,
    )


@pytest.fixture
async def out(tmp_path: Path) -> Path:
    """12 jobs (3 photos x 2 prompts x 2 seeds); the emulator fails the first with a 400."""
    target, manifest = tmp_path / "out", project(tmp_path)
    with contextlib.chdir(tmp_path):  # the ledger names the manifest as given: "m.yaml"
        async with emulated(script=[400]) as served:
            await run(manifest.relative_to(tmp_path), served, target, concurrency=1)
    return target


def cells(html: str) -> list[str]:
    return re.findall(r'<td class="cell (\w+)"', html)


def hostile_successes(page: Path) -> int:
    html = page.read_text(encoding="utf-8")
    return len(re.findall(r'class="cell succeeded"[^>]*data-prompt="&lt;script', html))


def thumbs(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (folder / "thumbs").iterdir()}


async def test_every_job_is_a_cell_and_every_link_resolves(out: Path) -> None:
    page = gallery.write_gallery(ledger.ledgers_in(out))
    html = page.read_text(encoding="utf-8")
    assert page == out / "gallery.html"
    assert sorted(cells(html)) == ["failed"] + ["succeeded"] * 11
    assert "12 jobs · 11 succeeded · 1 failed · 0 pending · $0.69 spent" in html
    assert re.search(r'class="cell failed"[^>]*>.*?HTTP 400: ', html)
    assert html.count("<tr data-image=") == 3 and html.count('loading="lazy"') == 11 + 3
    headings = re.findall(r'<th data-col="\d+" title="([^"]*)"', html)
    assert headings[:2] == ["a calm lake · seed 101", "a calm lake · seed 202"]
    links = re.findall(r'(?:href|src)="([^"]+)"', html)
    assert len(links) == 11 * 2 + 3  # image and thumbnail per success, and each source photo
    for link in links:
        assert not link.startswith(("http:", "https:", "/", "file:")) and (out / link).is_file()
    for thumb in (out / "thumbs").iterdir():
        with Image.open(thumb) as image:
            assert image.format == "JPEG" and max(image.size) <= gallery.THUMB_PX


async def test_prompts_are_escaped_everywhere(out: Path) -> None:
    html = gallery.write_gallery(ledger.ledgers_in(out)).read_text(encoding="utf-8")
    assert "<script>window" not in html and "</textarea>" not in html
    assert html.count("<script") == 1 and html.count("</script>") == 1  # the page's own
    escaped = "&lt;script&gt;window.__pwned = 1&lt;/script&gt; &quot;quotes&quot; &amp; &#x27;ticks"
    assert html.count(f'data-prompt="{escaped}') == 6  # in attribute values, quotes too
    assert f'<option value="{escaped}' in html


async def test_thumbnails_are_made_once_and_remade_when_missing(out: Path) -> None:
    gallery.write_gallery(ledger.ledgers_in(out))
    first = thumbs(out)
    assert len(first) == 11 + 3  # every image, and every source photo
    gallery.write_gallery(ledger.ledgers_in(out))  # again, as after a resume
    assert thumbs(out) == first
    gone = sorted(first)[0]
    (out / "thumbs" / gone).unlink()
    gallery.write_gallery(ledger.ledgers_in(out))
    again = thumbs(out)
    assert again.keys() == first.keys() and {k for k in first if again[k] != first[k]} == {gone}
    gallery.write_gallery(ledger.ledgers_in(out), thumb_size=16)  # another size: other names
    assert len(list((out / "thumbs").glob("*-16.jpg"))) == 11 + 3
    with Image.open(next((out / "thumbs").glob("*-16.jpg"))) as small:
        assert max(small.size) == 16  # the emulator's images are 32 pixels wide


async def test_a_success_in_any_ledger_wins(out: Path, tmp_path: Path) -> None:
    (out / "ledger.jsonl").rename(out / "ledger-a.jsonl")
    async with emulated() as served:  # the failed job again, into a new ledger.jsonl
        await run(tmp_path / "m.yaml", served, out, retry_failed=True)
    for order in (ledger.ledgers_in(out), ledger.ledgers_in(out)[::-1]):
        html = gallery.write_gallery(order).read_text(encoding="utf-8")
        assert cells(html) == ["succeeded"] * 12, order


async def test_a_job_started_and_never_finished_is_pending(out: Path) -> None:
    path = out / "ledger.jsonl"
    text = path.read_text(encoding="utf-8").splitlines(keepends=True)
    last = max(i for i, line in enumerate(text) if '"status":"succeeded"' in line)
    path.write_text("".join(text[:last] + text[last + 1 :]), encoding="utf-8")  # a crash
    html = gallery.write_gallery([path]).read_text(encoding="utf-8")
    assert sorted(cells(html)) == ["failed"] + ["pending"] + ["succeeded"] * 10
    assert "1 pending" in html


async def test_sources_found_from_anywhere_and_only_if_unchanged(
    out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    make_image(tmp_path / "photos" / "p1.jpg", colour=7)  # edited since it was sent
    html = gallery.write_gallery(ledger.ledgers_in(out), elsewhere / "sheet.html").read_text()
    sources = re.findall(r'<th class="source" data-source="\d+" title="([^"]*)">(<img )?', html)
    assert sorted((name, bool(img)) for name, img in sources) == [
        ("photos/p0.jpg", True), ("photos/p1.jpg", False), ("photos/p2.jpg", True)
    ]  # fmt: skip
    for link in re.findall(r'(?:href|src)="([^"]+)"', html):
        assert link.startswith("../out/") or link.startswith("thumbs/"), link
        assert (elsewhere / link).is_file()


async def test_gallery_command_takes_folders_and_files(
    out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(out / "ledger.jsonl", out / "ledger-shard-0-of-2.jsonl")
    assert main(["gallery", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"gallery     {out / 'gallery.html'}"
    assert main(["gallery", str(out / "ledger.jsonl"), "-o", str(tmp_path / "g.html")]) == 0
    assert (tmp_path / "g.html").is_file()
    capsys.readouterr()
    assert main(["gallery", str(tmp_path / "photos")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"batchgen: {tmp_path / 'photos'}: no ledger there (looked for ledger*.jsonl)"
    )


@pytest.mark.slow
async def test_filters_in_a_real_browser(out: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(
            "BROWSER TEST SKIPPED: chromium is not installed "
            "(`make browser` installs Debian's package when it can)"
        )
    page = gallery.write_gallery(ledger.ledgers_in(out))
    shown = "document.getElementById('shown').textContent"
    visible = "document.querySelectorAll('td.cell:not(.off)').length"
    async with Browser(chromium) as browser:
        tab = await browser.open(page.resolve().as_uri())
        assert await browser.evaluate(tab, "document.querySelectorAll('td.cell').length") == 12
        assert await browser.evaluate(tab, shown) == "12 shown"
        assert await browser.evaluate(tab, "typeof window.__pwned") == "undefined"
        await browser.evaluate(tab, "Array.from(document.images).forEach(i => i.loading = 'eager')")
        loaded = "Array.from(document.images).filter(i => i.complete && i.naturalWidth).length"
        await browser.wait_for(tab, f"{loaded} === 14")  # every thumbnail decodes
        await browser.screenshot(tab, out / "all.png")
        await browser.click(tab, "button[data-status=failed]")
        assert await browser.evaluate(tab, shown) == "1 shown"
        assert await browser.evaluate(tab, visible) == 1
        assert await browser.evaluate(tab, "location.hash") == "#status=failed"
        assert await browser.evaluate(tab, "document.querySelectorAll('tr.gone').length") == 2
        await browser.screenshot(tab, out / "failed.png")
        hash_ = "#" + urlencode({"status": "succeeded", "prompt": HOSTILE})
        tab = await browser.open(page.resolve().as_uri() + hash_)  # a shared, filtered link
        assert await browser.evaluate(tab, "document.getElementById('prompt').value") == HOSTILE
        assert await browser.evaluate(tab, visible) == hostile_successes(page)
    with Image.open(out / "failed.png") as shot:
        assert shot.width == 1280 and shot.height > 600


# -- the axes: derived seeds by slot, what varies and nothing else --------------------------


def seeded(
    image: str, prompt: str, seed: int | None, model: str = api.MODEL, **more: object
) -> gallery.Cell:
    """A job as a ledger records it (defaults filled in, a local image by path and digest)."""
    params: dict[str, object] = {
        **api.DEFAULTS, "image_file": {"path": image, "sha256": image * 8},
        "prompt": prompt, **more, "model": model,
    }  # fmt: skip
    if seed is not None:
        params["seed"] = seed
    return gallery.Cell(f"{image}-{prompt}-{seed}-{sorted(more.items())}", params=params)


def derived(image: str, prompt: str, count: int, **more: object) -> list[gallery.Cell]:
    """The jobs `seed: {count: N}` makes, their seeds derived as grid.py derives them."""
    request = {
        **api.DEFAULTS, "image_file": {"sha256": image * 8}, "prompt": prompt, **more,
    }  # fmt: skip
    return [
        seeded(image, prompt, seed, **more) for seed in grid.derive_seeds(api.MODEL, request, count)
    ]


def headings(layout: gallery.Layout) -> list[str]:
    return [layout.heading(range(1, len(layout.axes)), col) for col in layout.columns()]


def test_derived_seeds_are_columns_by_slot_in_any_ledger_order() -> None:
    jobs = [c for i in "abc" for p in ("fox", "owl") for c in derived(i, p, 3)]
    assert len({c.params["seed"] for c in jobs}) == 18  # every seed differs: no shared values
    shuffled = [c for i in range(0, 18, 3) for c in jobs[i : i + 3][::-1]]  # slot 3 ran first
    for order in (jobs, shuffled):
        layout = gallery.layout(order)
        assert [a.name for a in layout.axes] == ["image_file", "prompt", "seed"]
        assert layout.axes[2].labels == ("seed #1", "seed #2", "seed #3")
        assert len(layout.columns()) == 6  # prompt x seed slot, not one column per seed
        assert headings(layout)[:3] == ["fox · seed #1", "fox · seed #2", "fox · seed #3"]
        for cell in order:  # each seed in the slot the grid derived it for
            request = {k: v for k, v in cell.params.items() if k not in ("seed", "model")}
            request["image_file"] = {"sha256": cell.params["image_file"]["sha256"]}
            slot = grid.derive_seeds(api.MODEL, request, 3).index(cell.params["seed"])
            assert layout.keys[cell.job_id][2] == slot
    half_run = [jobs[1], jobs[5]]  # only slot 2 of one group and slot 3 of another so far
    assert gallery.layout(half_run).axes[2].labels == ("seed #2", "seed #3")


def test_explicit_seeds_are_columns_by_value_and_unique_ones_by_rank() -> None:
    shared = [seeded(i, p, s) for i in "ab" for p in ("fox", "owl") for s in (202, 101)]
    layout = gallery.layout(shared[:4] + shared[5:])  # b's fox 202 not started yet
    assert headings(layout) == [
        "fox · seed 202",
        "fox · seed 101",
        "owl · seed 202",
        "owl · seed 101",
    ]
    assert layout.keys[shared[5].job_id] == (1, 0, 1)  # b's 101 in a's 101 column all the same
    rows = [seeded(i, "fox", s) for i, s in (("a", 4711), ("a", 815), ("b", 3003), ("b", 999))]
    layout = gallery.layout(rows)  # a CSV's rows, each its own seed: ranked, no staircase
    assert headings(layout) == ["seed #1", "seed #2"]
    assert [layout.keys[c.job_id] for c in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_only_what_varies_is_an_axis_and_unset_is_never_null() -> None:
    grid_jobs = [c for i in "ab" for c in derived(i, "fox", 2, style_type="ANIME")]
    jobs = [
        *grid_jobs,
        seeded("a", "a rocket", 4242, color_palette={"name": "EMBER"}),
        seeded("b", "a latte", None, color_palette={"members": [
            {"color_hex": "#6B4226", "color_weight": 0.6}]}),
    ]  # fmt: skip
    layout = gallery.layout(jobs)
    assert [a.name for a in layout.axes] == [
        "image_file",
        "prompt",
        "seed",
        "color_palette",
        "style_type",
    ]  # fmt: skip  (resolution, image weight... never vary: no axis, no heading)
    assert headings(layout) == [
        "fox · seed #1 · style type ANIME",
        "fox · seed #2 · style type ANIME",
        "a rocket · seed 4242 · color palette EMBER · style type GENERAL",
        "a latte · color palette #6B4226 0.6 · style type GENERAL",
    ]
    assert layout.heading([3], [2]) == "color palette not set"  # alone, as a column of its own
    one = [seeded("a", "fox", 101)]
    assert gallery.layout(one).axes == (gallery.Axis("image_file", ("a",)),)


def test_the_readme_grid_has_a_column_per_prompt_seed_slot_and_style() -> None:
    loaded = manifest.load(Path(__file__).parent.parent / "jobs" / "grid.yaml")
    jobs = [
        gallery.Cell(j.job_id, params={**grid.describe(j.params), "model": loaded.model})
        for j in grid.expand(loaded)
    ]
    layout = gallery.layout(jobs)
    assert len(jobs) == 74 and len(layout.columns()) == 3 * 3 * 2 + 2  # + the two explicit jobs
    text = " ".join(headings(layout))
    assert "null" not in text and "None" not in text and "seed #3 · style type ANIME" in text


def derived_project(root: Path) -> Path:
    for i in range(3):
        make_image(root / "photos" / f"p{i}.jpg", colour=i * 60)
    return write(
        root / "d.yaml",
        """
        grid:
          image_file: [photos/]
          prompt: ["a calm lake", "a stormy sea"]
          seed: {count: 3}
        """,
    )


@pytest.fixture
async def derived_out(tmp_path: Path) -> Path:
    """18 jobs (3 photos x 2 prompts x 3 derived seeds), all succeeded."""
    target, manifest_path = tmp_path / "dout", derived_project(tmp_path)
    with contextlib.chdir(tmp_path):
        async with emulated() as served:
            await run(manifest_path.relative_to(tmp_path), served, target)
    return target


async def test_a_derived_seed_sheet_has_a_full_row_per_image(derived_out: Path) -> None:
    html = gallery.write_gallery(ledger.ledgers_in(derived_out)).read_text(encoding="utf-8")
    heads = re.findall(r'<th data-col="\d+" title="([^"]*)"', html)
    assert heads == [f"a {p} · seed #{k}" for p in ("calm lake", "stormy sea") for k in (1, 2, 3)]
    assert html.count("<tr data-image=") == 3 and 'class="empty"' not in html
    assert len(re.findall(r'<div class="cap">seed \d+</div>', html)) == 18
    sheet = html.split("<script>")[0]  # all that came from the ledgers (the script has a null)
    assert "null" not in sheet and "None" not in sheet
    assert '<select id="across"><option value="">prompt \N{MULTIPLICATION SIGN} seed<' in html


@pytest.mark.slow
async def test_derived_seed_sheet_and_its_axis_choice_in_a_real_browser(derived_out: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("BROWSER TEST SKIPPED: chromium is not installed")
    page = gallery.write_gallery(ledger.ledgers_in(derived_out))
    heads = "Array.from(document.querySelectorAll('#grid thead th[data-col]'), t => t.textContent)"
    full = (
        "Array.from(document.querySelectorAll('#grid tbody tr'), r => "
        "r.querySelectorAll('td.cell').length + '/' + r.querySelectorAll('td').length)"
    )
    async with Browser(chromium) as browser:
        tab = await browser.open(page.resolve().as_uri())
        default = await browser.evaluate(tab, heads)
        assert default == [
            f"a {p} · seed #{k}" for p in ("calm lake", "stormy sea") for k in (1, 2, 3)
        ]
        assert await browser.evaluate(tab, full) == ["6/6"] * 3  # every row filled
        text = await browser.evaluate(tab, "document.getElementById('grid').innerText")
        assert "null" not in text and "None" not in text and text.count("seed ") == 6 + 18
        await browser.choose(tab, "#across", "seed")
        assert await browser.evaluate(tab, heads) == ["seed #1", "seed #2", "seed #3"]
        assert await browser.evaluate(tab, full) == ["3/3"] * 6  # image x prompt down the side
        assert await browser.evaluate(tab, "location.hash") == "#across=seed"
        side = "Array.from(document.querySelectorAll('#grid tbody th'), t => t.textContent)"
        sides = await browser.evaluate(tab, side)  # the image and the prompt down the side
        assert sides[:2] == ["photos/p0.jpga calm lake", "photos/p0.jpga stormy sea"]
        await browser.click(tab, "button[data-status=succeeded]")  # the filters still apply
        assert await browser.evaluate(tab, "location.hash") == "#status=succeeded&across=seed"
        assert await browser.evaluate(tab, "document.getElementById('shown').textContent") == (
            "18 shown"
        )
        await browser.reload(tab)  # a reload keeps the choice (the filter too)
        assert await browser.evaluate(tab, "document.getElementById('across').value") == "seed"
        assert await browser.evaluate(tab, heads) == ["seed #1", "seed #2", "seed #3"]
        assert await browser.evaluate(tab, "location.hash") == "#status=succeeded&across=seed"
        tab = await browser.open(page.resolve().as_uri() + "#across=seed")  # so does a link
        assert await browser.evaluate(tab, heads) == ["seed #1", "seed #2", "seed #3"]
        await browser.choose(tab, "#across", "image_file")
        assert await browser.evaluate(tab, heads) == [f"photos/p{i}.jpg" for i in range(3)]
        await browser.choose(tab, "#across", "")  # and back: the server's own layout
        assert await browser.evaluate(tab, heads) == default
        assert await browser.evaluate(tab, "location.hash") in ("", "#")
        wide = await browser.open(page.resolve().as_uri())  # scrolled: headings stay in view
        where = (
            "(function () { var w = document.getElementById('wrap'); w.scrollTo(500, 300);"
            " var box = w.getBoundingClientRect(), top = document.querySelector("
            "'#grid thead th[data-col]').getBoundingClientRect(), side = document.querySelector("
            "'#grid tbody th.source').getBoundingClientRect();"
            " return [w.scrollLeft > 0 && w.scrollTop > 0, Math.round(top.top - box.top),"
            " Math.round(side.left - box.left)]; })()"
        )
        await browser.evaluate(wide, "document.body.style.height = '500px'")  # room to scroll
        assert await browser.evaluate(wide, where) == [True, 0, 0]
