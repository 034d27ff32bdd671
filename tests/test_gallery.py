"""The contact sheet, from ledgers alone: cells, links, escaping, filters in a real browser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from batchgen import gallery, ledger
from tests.browser import Browser, find_chromium
from tests.helpers import make_image, write
from tests.runs import emulated, run

HOSTILE = "<script>window.__pwned = 1</script> \"quotes\" & 'ticks'"


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
    m = project(tmp_path)
    target = tmp_path / "out"
    async with emulated(script=[400]) as served:
        await run(m, served, target, concurrency=1)
    return target


async def test_gallery_shows_every_job_with_escaped_text(out: Path) -> None:
    page = gallery.write_gallery(ledger.ledgers_in(out))
    html = page.read_text()
    assert page == out / "gallery.html"
    assert html.count('class="cell succeeded"') == 11 and html.count('class="cell failed"') == 1
    assert "<script>window.__pwned" not in html and "&lt;script&gt;window.__pwned" in html
    assert html.count("<script>") == 1  # only the page's own filter code
    assert "12 jobs · 11 succeeded · 1 failed" in html
    for link in re.findall(r'(?:href|src)="([^"]+)"', html):
        assert not link.startswith(("http:", "https:", "/")) and (out / link).exists(), link
    thumbs = sorted((out / "thumbs").iterdir())
    assert len(thumbs) == 11 + 3  # every image, and every source photo
    stamps = [t.stat().st_mtime_ns for t in thumbs]
    gallery.write_gallery(ledger.ledgers_in(out))  # again, as after a resume
    assert [t.stat().st_mtime_ns for t in sorted((out / "thumbs").iterdir())] == stamps


async def test_gallery_in_a_real_browser(out: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("BROWSER TEST SKIPPED: chromium is not installed (make test installs it "
                    "with apt-get when it can)")  # fmt: skip
    page = gallery.write_gallery(ledger.ledgers_in(out))
    async with Browser(chromium) as browser:
        tab = await browser.open(page.resolve().as_uri())
        assert await browser.evaluate(tab, "document.querySelectorAll('td.cell').length") == 12
        assert (
            await browser.evaluate(tab, "document.getElementById('shown').textContent")
            == "12 shown"
        )
        assert await browser.evaluate(tab, "typeof window.__pwned") == "undefined"
        loaded = "Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"
        await browser.evaluate(tab, "Array.from(document.images).forEach(i => i.loading = 'eager')")
        await browser.screenshot(tab, out / "gallery-all.png")
        assert await browser.evaluate(tab, loaded) >= 1
        await browser.evaluate(tab, "document.querySelector('button[data-status=failed]').click()")
        assert (
            await browser.evaluate(tab, "document.getElementById('shown').textContent") == "1 shown"
        )
        assert (
            await browser.evaluate(
                tab, "document.querySelectorAll('td.cell:not(.filtered)').length"
            )
            == 1
        )
        assert await browser.evaluate(tab, "location.hash") == "#status=failed&prompt=&image="
        await browser.screenshot(tab, out / "gallery-failed.png")
    assert (out / "gallery-failed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
