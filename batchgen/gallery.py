"""A contact sheet people can look at: one self-contained HTML page from ledgers alone.

Rows are source images, columns the combinations of whatever else varies across the
jobs (prompt, seed, style...), cells thumbnails linking to the full image, or the
error, or "pending". It opens from the file system: relative links, inline CSS and a
little vanilla JS whose filters (status, prompt, source image) live in the URL hash,
so a filtered view can be shared. Thumbnails are made once with Pillow into `thumbs/`,
named by the image's sha256 and size, and loaded lazily: a resumed run's gallery only
makes the new ones. Every text that came from a manifest is escaped: a prompt is user
input, and the page runs script (no JSON is embedded in it: the filters read data-*
attributes). Several ledgers merge by `ledger.LedgerState`'s rule: the last word wins,
except that a success is never forgotten.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from PIL import Image, ImageOps

from batchgen import ledger, outputs, report

THUMB_PX: Final = 256
THUMB_WORKERS: Final = 8  # Pillow decodes and resizes without the GIL: threads help
_ROW_KEY: Final = "image_file"


@dataclass
class Cell:
    """One job as the ledgers last left it: a success, once recorded, is never forgotten."""

    job_id: str
    status: str = "pending"  # succeeded | failed | pending (started or interrupted)
    params: dict[str, Any] = field(default_factory=dict)
    output: Path | None = None
    sha256: str | None = None
    error: str | None = None

    def fold(self, record: dict[str, Any], folder: Path) -> None:
        """Apply one ledger line, by the rule `ledger.LedgerState` resumes by."""
        status = record["status"]
        if isinstance(record.get("params"), dict):
            self.params = record["params"]
        if status == "succeeded":  # a later success (a deleted file made again) wins
            self.status, self.output = "succeeded", folder / str(record["output"])
            self.sha256, self.error = record.get("sha256"), None
        elif self.status == "succeeded":
            return
        elif status == "failed":
            http = record.get("http_status")
            self.status = "failed"
            self.error = f"HTTP {http}: {record.get('error')}" if http else str(record.get("error"))
        elif status in ("started", "interrupted", "unwritten"):
            self.status = "pending"


def collect(paths: Iterable[Path]) -> tuple[dict[str, Cell], list[Path]]:
    """Every job over all ledgers, merged, and where the manifests may be: a local source
    image's path is relative to its manifest's folder, and a `run` line names the manifest
    as it was given (relative to a working directory we cannot know: a few guesses, which
    the image's digest then confirms). The run's model joins each job's parameters, so
    jobs that differ only by model get columns of their own."""
    cells: dict[str, Cell] = {}
    folders: list[Path] = []
    for path in paths:
        model = None
        for record in ledger.read(path):
            job = record.get("job_id")
            if record["status"] == "run":
                model, manifest = record.get("model"), Path(str(record.get("manifest")))
                folders += [path.parent.parent / manifest.parent, manifest.parent]
            elif isinstance(job, str) and record["status"] in ledger.JOB_STATUSES:
                if model and isinstance(record.get("params"), dict):
                    record = {**record, "params": {**record["params"], "model": model}}
                cells.setdefault(job, Cell(job)).fold(record, path.parent)
    return cells, folders


def source_of(params: dict[str, Any]) -> tuple[str, str | None]:
    """(the source image as the manifest named it, or its URL; its sha256 when local)."""
    image = params.get(_ROW_KEY)
    if isinstance(image, dict):
        return str(image.get("path")), image.get("sha256")
    return str(image), None


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
    thumbs.make(_wanted(cells.values(), thumbs, search))
    page = _Page(thumbs, out_file.parent).render(cells, report.summarize(ledgers))
    outputs.write_atomic(out_file, page.encode("utf-8"))
    return out_file


def href(target: Path, base: Path) -> str:
    """A relative link from the gallery's folder: the sheet moves with its folder."""
    return quote(Path(os.path.relpath(target, base)).as_posix())


@dataclass(frozen=True)
class Thumbs:
    folder: Path
    size: int

    def path(self, digest: str) -> Path:
        return self.folder / f"{digest[:32]}-{self.size}.jpg"

    def output_thumb(self, cell: Cell) -> Path:
        return self.path(cell.sha256 or hashlib.sha256(cell.job_id.encode()).hexdigest())

    def make(self, wanted: dict[Path, tuple[list[Path], str | None]]) -> None:
        """Make each missing thumbnail, several at a time."""
        missing = {target: found for target, found in wanted.items() if not target.exists()}
        if missing:
            self.folder.mkdir(parents=True, exist_ok=True)
            with ThreadPoolExecutor(min(THUMB_WORKERS, os.cpu_count() or 1)) as pool:
                made = [
                    pool.submit(_thumbnail, target, candidates, digest, self.size)
                    for target, (candidates, digest) in missing.items()
                ]
                for future in made:
                    future.result()  # an unexpected error is raised, not lost in a thread


def _wanted(
    cells: Iterable[Cell], thumbs: Thumbs, search: list[Path]
) -> dict[Path, tuple[list[Path], str | None]]:
    """Thumbnail -> (where its image may be, the digest it must have)."""
    wanted: dict[Path, tuple[list[Path], str | None]] = {}
    for cell in cells:
        if cell.status == "succeeded" and cell.output is not None:
            wanted[thumbs.output_thumb(cell)] = ([cell.output], cell.sha256)
        name, digest = source_of(cell.params)
        if digest is not None:  # an absolute `name` stays itself: folder / "/a" is "/a"
            candidates = list(dict.fromkeys(folder / name for folder in search))
            wanted.setdefault(thumbs.path(digest), (candidates, digest))
    return wanted


def _thumbnail(target: Path, candidates: list[Path], digest: str | None, size: int) -> None:
    """A JPEG thumbnail of the first candidate that is the right image; none if none is."""
    for source in candidates:
        try:
            data = source.read_bytes()
            if digest is not None and hashlib.sha256(data).hexdigest() != digest:
                continue  # not the picture the ledger names (edited, or another folder's)
            with Image.open(io.BytesIO(data)) as image:
                image.thumbnail((size, size))
                small = ImageOps.exif_transpose(image).convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            continue  # missing or unreadable: the cell says so instead
        small.info.clear()  # no copy of the image's comments or profile: just pixels
        temp = target.with_name(f".{target.name}.{os.getpid()}.part")  # one writer per name
        try:
            small.save(temp, format="JPEG", quality=82)
            os.replace(temp, target)  # a cache: no fsync, but never a torn file by its name
        finally:
            temp.unlink(missing_ok=True)
        return


def label(key: str, value: Any) -> str:
    """A column heading's part: the prompt as is, anything else as `key value`."""
    shown = value if isinstance(value, str | int) else json.dumps(value, sort_keys=True)
    return str(shown) if key == "prompt" else f"{key.replace('_', ' ')} {shown}"


def attr(value: object) -> str:
    """Text made safe for HTML, quotes included: fit for element text and attributes."""
    return escape(str(value), quote=True)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def columns(cells: Sequence[Cell]) -> tuple[list[str], list[tuple[str, ...]]]:
    """The parameters that vary across jobs (prompt first, then seed, then the rest by
    name) and every combination of them that occurs, each value in the order it first
    appeared: the manifest's order, mostly."""
    keys = sorted({k for c in cells for k in c.params} - {_ROW_KEY})
    order: dict[str, dict[str, int]] = {key: {} for key in keys}
    for cell in cells:
        for key in keys:
            order[key].setdefault(_canon(cell.params.get(key)), len(order[key]))
    keys = [key for key in keys if len(order[key]) > 1]
    keys.sort(key=lambda k: (k != "prompt", k != "seed"))
    found = {tuple(_canon(c.params.get(k)) for k in keys) for c in cells}
    ranked = sorted(found, key=lambda col: [order[k][v] for k, v in zip(keys, col, strict=True)])
    return keys, ranked


@dataclass(frozen=True)
class _Page:
    thumbs: Thumbs
    base: Path

    def render(self, cells: dict[str, Cell], summary: report.Summary) -> str:
        jobs = list(cells.values())
        keys, cols = columns(jobs)
        index = {col: i for i, col in enumerate(cols)}
        rows: dict[tuple[str, str | None], dict[int, Cell]] = {}
        for cell in jobs:
            col = tuple(_canon(cell.params.get(k)) for k in keys)
            rows.setdefault(source_of(cell.params), {})[index[col]] = cell
        heads = []
        for i, col in enumerate(cols):
            text = " · ".join(label(k, json.loads(v)) for k, v in zip(keys, col, strict=True))
            heads.append(f'<th data-col="{i}" title="{attr(text)}"><div>{attr(text)}</div></th>')
        body = [self.row(source, slots, len(cols)) for source, slots in rows.items()]
        prompts = dict.fromkeys(str(c.params.get("prompt", "")) for c in jobs)
        parts = {
            "totals": attr(_totals(summary)),
            "prompts": _options(prompts),
            "images": _options(dict.fromkeys(name for name, _ in rows)),
            "head": "".join(heads) if keys else '<th data-col="0">result</th>',
            "body": "\n".join(body) or "<tr><td>no jobs in these ledgers yet</td></tr>",
        }  # fmt: skip
        return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m[1]], _page_template())  # one pass: no
        # inserted text is ever read as a placeholder

    def row(self, source: tuple[str, str | None], slots: dict[int, Cell], width: int) -> str:
        tds = [
            self.cell(slots[i], i) if i in slots else f'<td class="empty" data-col="{i}"></td>'
            for i in range(width)
        ]
        return f'<tr data-image="{attr(source[0])}">{self.source(*source)}{"".join(tds)}</tr>'

    def source(self, name: str, digest: str | None) -> str:
        """The row heading: a thumbnail of the source when found, a link for a URL."""
        if name.startswith(("http://", "https://")):
            shown = f'<a href="{attr(name)}" rel="noreferrer">{attr(name)}</a>'
        elif digest is not None and (thumb := self.thumbs.path(digest)).exists():
            shown = f'<img src="{href(thumb, self.base)}" alt="" loading="lazy">{attr(name)}'
        else:
            shown = attr(name)
        return f'<th class="source" title="{attr(name)}">{shown}</th>'

    def cell(self, cell: Cell, col: int) -> str:
        params = cell.params
        lines = [f"{k}: {v if isinstance(v, str) else _canon(v)}" for k, v in params.items()]
        title = "\n".join([*lines, f"job: {cell.job_id}"])  # the full story, on hover
        head = (
            f'<td class="cell {cell.status}" data-col="{col}" data-status="{cell.status}" '
            f'data-prompt="{attr(params.get("prompt", ""))}" title="{attr(title)}">'
        )
        if cell.status == "failed":
            return f'{head}<div class="error">{attr(cell.error)}</div></td>'
        if cell.status != "succeeded" or cell.output is None:
            return f'{head}<div class="pending">pending</div></td>'
        thumb = self.thumbs.output_thumb(cell)
        shown = (
            f'<img src="{href(thumb, self.base)}" alt="" loading="lazy">'
            if thumb.exists()
            else '<div class="pending">no preview (file missing or changed)</div>'
        )
        return f'{head}<a href="{href(cell.output, self.base)}">{shown}</a></td>'


def _options(values: Iterable[str]) -> str:
    return "".join(f'<option value="{attr(v)}">{attr(v)}</option>' for v in values)


def _totals(summary: report.Summary) -> str:
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
    its own (`gallery_page.html`) where an editor treats it as the HTML it is."""
    return resources.files("batchgen").joinpath("gallery_page.html").read_text(encoding="utf-8")
