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

from batchgen import gallery, ledger
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
    sources = re.findall(r'<th class="source" title="([^"]*)">(<img )?', html)
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
