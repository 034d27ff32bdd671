"""The HTML page: the sheet's rows and cells as markup, put into the page around them
(`page.html`: inline CSS and the filters' vanilla JS), and written with the thumbnails
it lacks. Every text that came from a manifest is escaped."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from batchgen import durable, summaries
from batchgen.gallery.axes import Axis, Layout, layout, title
from batchgen.gallery.cells import ROW_KEY, Cell, canon, collect, seed_of, source_of
from batchgen.gallery.thumbs import THUMB_PX, Thumbs, wanted


def write_gallery(
    ledgers: Sequence[Path], out_file: Path | None = None, *, thumb_size: int = THUMB_PX
) -> Path:
    """Write the contact sheet (default `gallery.html` beside the first ledger) and the
    thumbnails it lacks; return its path. Raises LedgerError for a corrupt ledger."""
    if not ledgers:
        raise ValueError("no ledger to make a gallery from")
    out_file = out_file or ledgers[0].parent / "gallery.html"
    cells, manifest_dirs = collect(ledgers)
    thumbs = Thumbs(out_file.parent / "thumbs", thumb_size)
    search = [*manifest_dirs, *(p.parent for p in ledgers)]
    thumbs.make(wanted(cells.values(), thumbs, search))
    page = _Page(thumbs, out_file.parent).render(cells, summaries.summarize(ledgers))
    durable.write_atomic(out_file, page.encode("utf-8"))
    return out_file


def href(target: Path, base: Path) -> str:
    """A relative link from the gallery's folder: the sheet moves with its folder."""
    return quote(Path(os.path.relpath(target, base)).as_posix())


def attr(value: object) -> str:
    """Text made safe for HTML, quotes included: fit for element text and attributes."""
    return escape(str(value), quote=True)


@dataclass(frozen=True)
class _Page:
    thumbs: Thumbs
    base: Path

    def render(self, cells: dict[str, Cell], summary: summaries.Summary) -> str:
        """The default sheet: a row per source image, a column per combination of the
        other axes. The page's script lays the same cells out again when another axis
        is picked to go across (from the axes listed in `#axes`)."""
        jobs = list(cells.values())
        grid_ = layout(jobs)
        cols = grid_.columns()
        index = {col: i for i, col in enumerate(cols)}
        rows: dict[int, dict[int, Cell]] = {}
        for cell in jobs:
            key = grid_.keys[cell.job_id]
            rows.setdefault(key[0], {})[index[key[1:]]] = cell
        across = range(1, len(grid_.axes))
        heads = []
        for i, col in enumerate(cols):
            text = attr(grid_.heading(across, col))
            heads.append(f'<th data-col="{i}" title="{text}"><div>{text}</div></th>')
        body = [self.row(grid_, row, rows[row], len(cols)) for row in sorted(rows)]
        prompts = dict.fromkeys(str(c.params.get("prompt", "")) for c in jobs)
        parts = {
            "totals": attr(_totals(summary)),
            "prompts": _options(prompts),
            "images": _options(dict.fromkeys(name for name, _ in grid_.sources)),
            "across": _across(grid_.axes),
            "axes": _axes(grid_.axes),
            "head": "".join(heads) if len(grid_.axes) > 1 else '<th data-col="0">result</th>',
            "body": "\n".join(body) or "<tr><td>no jobs in these ledgers yet</td></tr>",
        }  # fmt: skip
        return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m[1]], _page_template())  # one pass:
        # no inserted text is ever read as a placeholder

    def row(self, grid_: Layout, row: int, slots: dict[int, Cell], width: int) -> str:
        tds = [
            self.cell(slots[i], i, grid_)
            if i in slots
            else f'<td class="empty" data-col="{i}"></td>'
            for i in range(width)
        ]
        name, digest = grid_.sources[row]
        return f'<tr data-image="{attr(name)}">{self.source(row, name, digest)}{"".join(tds)}</tr>'

    def source(self, row: int, name: str, digest: str | None) -> str:
        """The row heading: a thumbnail of the source when found, a link for a URL."""
        if name.startswith(("http://", "https://")):
            shown = f'<a href="{attr(name)}" rel="noreferrer">{attr(name)}</a>'
        elif digest is not None and (thumb := self.thumbs.path(digest)).exists():
            shown = f'<img src="{href(thumb, self.base)}" alt="" loading="lazy">{attr(name)}'
        else:
            shown = attr(name)
        return f'<th class="source" data-source="{row}" title="{attr(name)}">{shown}</th>'

    def cell(self, cell: Cell, col: int, grid_: Layout) -> str:
        params = cell.params
        lines = [f"{k}: {v if isinstance(v, str) else canon(v)}" for k, v in params.items()]
        title_ = "\n".join([*lines, f"job: {cell.job_id}"])  # the full story, on hover
        key = " ".join(map(str, grid_.keys[cell.job_id]))
        seed = seed_of(params)
        caption = "" if seed is None else f'<div class="cap">seed {seed}</div>'
        head = (
            f'<td class="cell {cell.status}" data-col="{col}" data-key="{key}" '
            f'data-status="{cell.status}" data-image="{attr(source_of(params)[0])}" '
            f'data-prompt="{attr(params.get("prompt", ""))}" title="{attr(title_)}">'
        )
        if cell.status == "failed":
            return f'{head}<div class="error">{attr(cell.error)}</div>{caption}</td>'
        if cell.status != "succeeded" or cell.output is None:
            return f'{head}<div class="pending">pending</div>{caption}</td>'
        thumb = self.thumbs.output_thumb(cell)
        shown = (
            f'<img src="{href(thumb, self.base)}" alt="" loading="lazy">'
            if thumb.exists()
            else '<div class="pending">no preview (file missing or changed)</div>'
        )
        return f'{head}<a href="{href(cell.output, self.base)}">{shown}</a>{caption}</td>'


def _across(axes: Sequence[Axis]) -> str:
    """The choice of what goes across: every axis but the image (the default), one
    axis alone, or the source images. Empty when nothing varies but the image."""
    if len(axes) < 2:
        return ""
    choices = {"": " \N{MULTIPLICATION SIGN} ".join(title(a.name) for a in axes[1:])}
    if len(axes) > 2:
        choices.update((a.name, title(a.name)) for a in axes[1:])
    choices[ROW_KEY] = title(ROW_KEY)
    options = "".join(f'<option value="{attr(k)}">{attr(v)}</option>' for k, v in choices.items())
    return f'<label>Across <select id="across">{options}</select></label>'


def _axes(axes: Sequence[Axis]) -> str:
    """The axes for the page's script, as markup (no JSON is embedded in the page)."""
    return "".join(
        f'<ol data-axis="{attr(a.name)}" data-title="{attr(title(a.name))}">'
        + "".join(f"<li>{attr(text)}</li>" for text in a.labels)
        + "</ol>"
        for a in axes
    )


def _options(values: Iterable[str]) -> str:
    return "".join(f'<option value="{attr(v)}">{attr(v)}</option>' for v in values)


def _totals(summary: summaries.Summary) -> str:
    text = (
        f"{summary.jobs:,} jobs · {summary.succeeded:,} succeeded · {summary.failed:,} failed · "
        f"{summary.not_finished:,} pending · ${summary.spent:,.2f} spent"
    )
    if summary.possibly_billed:
        text += f" · ${summary.possibly_billed:,.2f} possibly billed"
    return text


@functools.cache
def _page_template() -> str:
    """The page around the grid: HTML, CSS and the filters' vanilla JS, kept in a file of
    its own (`page.html`) where an editor treats it as the HTML it is."""
    return resources.files("batchgen.gallery").joinpath("page.html").read_text(encoding="utf-8")
