"""A contact sheet people can look at: one self-contained HTML page from ledgers alone.

Rows are source images, columns the grid's other axes as a manifest states them:
prompt x seed slot x any other parameter that varies (one never varying, or unset, is
no heading). A seed `seed: {count: N}` derived is in slot #1..N, recomputed from the
job's own parameters as `grid` derives it (other seeds: by value when rows share them,
else by rank in the ledger); the seed itself is in each cell's caption. Cells are
thumbnails linking to the full image, or the error, or "pending". It opens from the
file system: relative links, inline CSS and a little vanilla JS whose filters (status,
prompt, source image) and choice of the axis that goes across live in the URL hash, so
a view can be shared; the headings stay in sight as the sheet scrolls. Thumbnails are
made once with Pillow into `thumbs/`, named by the image's sha256 and size, and loaded
lazily: a resumed run's gallery only makes the new ones. Every text that came from a
manifest is escaped: a prompt is user input, and the page runs script (no JSON is
embedded in it: the filters and the layout read data-* attributes and `#axes`).
Several ledgers merge by the one fold every reader uses (`ledger.fold`): the last word
wins, except that a success is never forgotten.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from PIL import Image, ImageOps

from batchgen import api, grid, images, ledger, outputs, summaries
from batchgen.errors import failure_text
from batchgen.manifest import MAX_SEED_COUNT

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


def collect(paths: Iterable[Path]) -> tuple[dict[str, Cell], list[Path]]:
    """Every job over all ledgers, merged by the one fold every reader uses
    (`ledger.fold`), and where the manifests may be: a local source image's path is
    relative to its manifest's folder, and a `run` line names the manifest as it was
    given (relative to a working directory we cannot know: a few guesses, which the
    image's digest then confirms). The run's model joins each job's parameters, so jobs
    that differ only by model get columns of their own."""
    folded = ledger.fold(ledger.ledgers(paths))
    cells = {job_id: _cell(job_id, job) for job_id, job in folded.jobs.items()}
    folders: list[Path] = []
    for path, runs in folded.manifests.items():
        for name, _ in runs:
            manifest = Path(name)
            folders += [path.parent.parent / manifest.parent, manifest.parent]
    return cells, folders


def _cell(job_id: str, job: ledger.JobRecord) -> Cell:
    params = job.params or {}
    if job.model and job.params is not None:
        params = {**params, "model": job.model}
    if job.status == "succeeded":
        return Cell(job_id, "succeeded", params, job.output_path, job.sha256)
    if job.status == "failed":
        return Cell(job_id, "failed", params, error=failure_text(job.http_status, str(job.error)))
    return Cell(job_id, "pending", params)  # started, interrupted, unwritten or settled


def source_of(params: dict[str, Any]) -> tuple[str, str | None]:
    """(the source image as the manifest named it, or its URL; its sha256 when local)."""
    image = params.get(_ROW_KEY)
    name = images.source(image)
    digest = image.get("sha256") if isinstance(image, dict) else None
    return ("unknown image" if name is None else name), digest


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
    page = _Page(thumbs, out_file.parent).render(cells, summaries.summarize(ledgers))
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
    return _shown(value) if key == "prompt" else f"{title(key)} {_shown(value)}"


def title(key: str) -> str:
    return "source image" if key == _ROW_KEY else key.replace("_", " ")


def _shown(value: Any) -> str:
    """A value as a person reads it: a palette by its name or its colours."""
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return str(value["name"])
    if isinstance(value, dict) and isinstance(value.get("members"), list):
        members = [m for m in value["members"] if isinstance(m, dict)]
        return ", ".join(f"{m.get('color_hex')} {m.get('color_weight', 1)}" for m in members)
    return value if isinstance(value, str) else _canon(value)


def attr(value: object) -> str:
    """Text made safe for HTML, quotes included: fit for element text and attributes."""
    return escape(str(value), quote=True)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


# -- the axes ------------------------------------------------------------------------------

SeedKey = tuple[str, int]  # ("slot", k) derived, ("rank", k) by first appearance, ("value", seed)
_SEED: Final = "seed"
_SEED_PREFIX: Final = 64  # derived seeds are looked for among this many first (and 4 a seed)
_NOT_OURS: Final = (_SEED, "model")  # "model" comes from the `run` line, not the request


def _seed_of(params: dict[str, Any]) -> int | None:
    seed = params.get(_SEED)
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _request(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(the model, the request without its seed) as `grid` identifies a job: a local
    image by its digest alone."""
    request = {k: v for k, v in params.items() if k not in _NOT_OURS}
    image = request.get(_ROW_KEY)
    if isinstance(image, dict) and "sha256" in image:
        request[_ROW_KEY] = {"sha256": image["sha256"]}
    return str(params.get("model") or api.MODEL), request


def derived_slots(model: str, request: dict[str, Any], seeds: set[int]) -> dict[int, int]:
    """Which of `seeds` `seed: {count: N}` gives this request, each by its slot (1-based).
    The first `_SEED_PREFIX` + 4 a seed are looked through; only when some are found
    there (a derived grid, maybe half run) does the search go on to the largest count."""
    found: dict[int, int] = {}
    prefix = _SEED_PREFIX + 4 * len(seeds)
    for slot, seed in enumerate(grid.seed_sequence(model, request), start=1):
        if seed in seeds:
            found[seed] = slot
            if len(found) == len(seeds):
                break
        if slot >= (MAX_SEED_COUNT if found else prefix):
            break
    return found


def seed_keys(cells: Sequence[Cell]) -> dict[str, SeedKey]:
    """Each seeded job's place on the seed axis, from its own parameters.

    Jobs that differ only by seed form a group (a source image and every other
    parameter). A seed `seed: {count: N}` derived for its group is in slot k, the k-th
    seed the grid derives for it: ("slot", k). Any other seed (written in the manifest
    or a CSV) is ("value", seed) when another group has it too (a seed axis shared by
    the rows), else ("rank", k), the k-th such seed of its group in ledger order."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        if _seed_of(cell.params) is not None:
            groups.setdefault(_canon(_request(cell.params)), []).append(cell)
    keys: dict[str, SeedKey] = {}
    others: dict[str, list[int]] = {}
    for group, members in groups.items():
        seeds = list(dict.fromkeys(_seed_of(c.params) or 0 for c in members))
        slots = derived_slots(*_request(members[0].params), set(seeds))
        for cell in members:
            if (seed := _seed_of(cell.params) or 0) in slots:
                keys[cell.job_id] = ("slot", slots[seed])
        others[group] = [seed for seed in seeds if seed not in slots]
    owners = Counter(seed for seeds in others.values() for seed in seeds)
    for group, seeds in others.items():
        alone = [seed for seed in seeds if owners[seed] == 1]
        place: dict[int, SeedKey] = {seed: ("rank", k) for k, seed in enumerate(alone, start=1)}
        place.update((seed, ("value", seed)) for seed in seeds if owners[seed] > 1)
        for cell in groups[group]:
            if (seed := _seed_of(cell.params) or 0) in place:
                keys[cell.job_id] = place[seed]
    return keys


@dataclass(frozen=True)
class Axis:
    name: str  # a parameter ("prompt", "seed", ...), or "image_file" for the source image
    labels: tuple[str, ...]  # each value's heading part; "" for jobs that leave it unset


@dataclass(frozen=True)
class Layout:
    """The grid's axes as the jobs show them: the source image, then whatever varies
    (prompt, seed slot, the rest by name), and each job's value index on each."""

    axes: tuple[Axis, ...]
    keys: dict[str, tuple[int, ...]]  # job id -> its value's index on every axis
    sources: tuple[tuple[str, str | None], ...]  # the source image axis's values

    def columns(self) -> list[tuple[int, ...]]:
        """The default sheet's columns: every combination of the axes but the image."""
        return sorted({key[1:] for key in self.keys.values()})

    def heading(self, axes: Sequence[int], values: Sequence[int]) -> str:
        """What `values` on `axes` read as: unset parameters are left out (or said to be
        unset, when nothing else is left). The page's script says it the same way."""
        parts = [self.axes[a].labels[v] for a, v in zip(axes, values, strict=True)]
        return " · ".join(p for p in parts if p) or " · ".join(
            f"{title(self.axes[a].name)} not set" for a in axes
        )


def layout(cells: Sequence[Cell]) -> Layout:
    """Where each job sits. Columns are the grid's axes as a manifest writes them, not
    every value that differs: a derived seed counts by its slot (seed #1..N, the seed
    itself is in the cell), and a parameter that never varies is no axis at all."""
    seeds = seed_keys(cells)
    others = sorted({k for c in cells for k in c.params} - {_ROW_KEY, "prompt", _SEED})
    sources = tuple(dict.fromkeys(source_of(c.params) for c in cells))
    axes = [Axis(_ROW_KEY, tuple(name for name, _ in sources))]
    index: dict[str, dict[Any, int]] = {_ROW_KEY: {s: i for i, s in enumerate(sources)}}
    for name in ("prompt", _SEED, *others):
        values = _axis_values(name, cells, seeds)
        if len(values) > 1:
            axes.append(Axis(name, tuple(values.values())))
            index[name] = {value: i for i, value in enumerate(values)}
    keys = {
        cell.job_id: tuple(index[axis.name][_value_key(axis.name, cell, seeds)] for axis in axes)
        for cell in cells
    }
    return Layout(tuple(axes), keys, sources)


def _value_key(name: str, cell: Cell, seeds: dict[str, SeedKey]) -> Any:
    if name == _ROW_KEY:
        return source_of(cell.params)
    if name == _SEED:
        return seeds.get(cell.job_id)
    value = cell.params.get(name)
    return None if value is None else _canon(value)


def _axis_values(name: str, cells: Sequence[Cell], seeds: dict[str, SeedKey]) -> dict[Any, str]:
    """An axis's values, in order, with their labels: in order of first appearance (the
    manifest's order, mostly), seed slots by number, jobs without the parameter last."""
    found: dict[Any, set[Any]] = {}
    for cell in cells:
        found.setdefault(_value_key(name, cell, seeds), set()).add(_seed_of(cell.params))
    if name != _SEED:
        return {
            key: "" if key is None else label(name, json.loads(key))
            for key in sorted(found, key=lambda k: k is None)
        }  # a stable sort: first appearance otherwise
    kinds = ("slot", "rank", "value")
    first = {key: i for i, key in enumerate(found)}

    def rank(key: SeedKey | None) -> tuple[int, int]:
        if key is None:
            return len(kinds), 0
        return kinds.index(key[0]), first[key] if key[0] == "value" else key[1]

    labels: dict[Any, str] = {}
    for key in sorted(found, key=rank):
        if key is None:
            labels[key] = ""
        elif key[0] == "slot" or (key[0] == "rank" and len(found[key]) > 1):
            labels[key] = f"seed #{key[1]}"  # the seed itself is in each cell
        else:
            labels[key] = label(_SEED, next(iter(found[key])))
    return labels


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
        lines = [f"{k}: {v if isinstance(v, str) else _canon(v)}" for k, v in params.items()]
        title_ = "\n".join([*lines, f"job: {cell.job_id}"])  # the full story, on hover
        key = " ".join(map(str, grid_.keys[cell.job_id]))
        seed = _seed_of(params)
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
    choices[_ROW_KEY] = title(_ROW_KEY)
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
    its own (`gallery_page.html`) where an editor treats it as the HTML it is."""
    return resources.files("batchgen").joinpath("gallery_page.html").read_text(encoding="utf-8")
