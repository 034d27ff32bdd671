"""A contact sheet people can look at: one self-contained HTML page from ledgers alone.

Rows are source images, columns the combinations of whatever else varies (prompt,
seed, style...), cells thumbnails linking to the full image (or the error). It opens
from the file system: relative links, inline CSS and a little vanilla JS for the
filters, thumbnails made once with Pillow into `thumbs/` and loaded lazily. Every
text that came from a manifest is escaped: a prompt is user input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from PIL import Image, UnidentifiedImageError

from batchgen import ledger, outputs, report

THUMB_PX: Final = 256
_SKIP: Final = frozenset({"image_file"})


@dataclass
class Cell:
    status: str = "pending"
    params: dict[str, Any] = field(default_factory=dict)
    output: Path | None = None
    sha256: str | None = None
    error: str | None = None


def collect(paths: Sequence[Path]) -> tuple[dict[str, Cell], list[Path]]:
    """Every job's last word over all ledgers (a success is never forgotten), and the
    folders manifests were read from (to find source images)."""
    cells: dict[str, Cell] = {}
    manifest_dirs: list[Path] = []
    for path in paths:
        for record in ledger.read(path):
            if record["status"] == "run" and record.get("manifest"):
                manifest_dirs.append(Path(str(record["manifest"])).parent)
            job = record.get("job_id")
            if not isinstance(job, str):
                continue
            cell = cells.setdefault(job, Cell())
            cell.params = record.get("params") or cell.params
            if record["status"] == "succeeded":
                cell.status, cell.output = "succeeded", path.parent / record["output"]
                cell.sha256 = record.get("sha256")
            elif record["status"] == "failed" and cell.status != "succeeded":
                cell.status, cell.error = "failed", str(record.get("error"))
    return cells, manifest_dirs


def _source(params: dict[str, Any]) -> tuple[str, str | None]:
    """(what the image is called, its digest when local)."""
    image = params.get("image_file")
    if isinstance(image, dict):
        return str(image.get("path")), image.get("sha256")
    return str(image), None


def _varying(cells: dict[str, Cell]) -> list[str]:
    values: dict[str, set[str]] = {}
    for cell in cells.values():
        for key, value in cell.params.items():
            if key not in _SKIP:
                values.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
    keys = [key for key, seen in values.items() if len(seen) > 1]
    return sorted(keys, key=lambda k: (k != "prompt", k != "seed", k))


def _label(key: str, value: Any) -> str:
    shown = value if isinstance(value, str | int) else json.dumps(value, sort_keys=True)
    return str(shown) if key == "prompt" else f"{key} {shown}"


def _thumb(source: Path, thumbs: Path, name: str) -> str | None:
    """A JPEG thumbnail in thumbs/, made once; its name, or None if unreadable."""
    target = thumbs / f"{name}.jpg"
    if not target.exists():
        try:
            with Image.open(source) as image:
                image.thumbnail((THUMB_PX, THUMB_PX))
                thumbs.mkdir(parents=True, exist_ok=True)
                image.convert("RGB").save(target, format="JPEG", quality=80)
        except (OSError, UnidentifiedImageError):
            return None
    return target.name


def _href(target: Path, base: Path) -> str:
    return quote(Path(os.path.relpath(target, base)).as_posix())


def write_gallery(paths: Sequence[Path], out_file: Path | None = None) -> Path:
    """Write the contact sheet (default `gallery.html` beside the first ledger)."""
    if not paths:
        raise ValueError("no ledger to make a gallery from")
    out_file = out_file or paths[0].parent / "gallery.html"
    base = out_file.parent
    cells, manifest_dirs = collect(paths)
    page = _Page(base, base / "thumbs", [*manifest_dirs, paths[0].parent, Path(".")])
    html = page.render(cells, report.summarize(paths))
    outputs.write_atomic(out_file, html.encode("utf-8"))
    return out_file


@dataclass
class _Page:
    base: Path
    thumbs: Path
    search: list[Path]

    def source_thumb(self, name: str, digest: str | None) -> str:
        if digest is None:  # a URL: shown as a link
            return f'<a href="{escape(name)}">{escape(name)}</a>'
        for folder in self.search:
            found = _thumb(folder / name, self.thumbs, f"src-{digest[:24]}")
            if found:
                src = _href(self.thumbs / found, self.base)
                return f'<img src="{src}" alt="" loading="lazy"><span>{escape(name)}</span>'
        return f"<span>{escape(name)}</span>"

    def cell(self, job_id: str, cell: Cell) -> str:
        prompt = escape(str(cell.params.get("prompt", "")))
        attrs = f'class="cell {cell.status}" data-status="{cell.status}" data-prompt="{prompt}"'
        title = escape(f"job {job_id}")
        if cell.status == "succeeded" and cell.output is not None:
            found = _thumb(cell.output, self.thumbs, (cell.sha256 or job_id)[:24])
            link = _href(cell.output, self.base)
            if found:
                src = _href(self.thumbs / found, self.base)
                body = f'<img src="{src}" alt="{prompt}" loading="lazy">'
            else:
                body = "missing file"
            return f'<td {attrs}><a href="{link}" title="{title}">{body}</a></td>'
        if cell.status == "failed":
            error = escape(str(cell.error))
            return f'<td {attrs} title="{title}"><div class="error">{error}</div></td>'
        return f'<td {attrs} title="{title}"><div class="pending">pending</div></td>'

    def render(self, cells: dict[str, Cell], summary: report.Summary) -> str:
        keys = _varying(cells)
        rows: dict[str, tuple[str | None, dict[tuple[str, ...], str]]] = {}
        columns: dict[tuple[str, ...], str] = {}
        for job_id, cell in cells.items():
            name, digest = _source(cell.params)
            column = tuple(json.dumps(cell.params.get(k), sort_keys=True) for k in keys)
            label = " · ".join(_label(k, cell.params.get(k)) for k in keys) or "result"
            columns.setdefault(column, label)
            rows.setdefault(name, (digest, {}))[1][column] = self.cell(job_id, cell)
        head = "".join(f"<th>{escape(label)}</th>" for label in columns.values())
        body = "\n".join(
            f'<tr data-image="{escape(name)}"><th class="source">'
            f"{self.source_thumb(name, digest)}</th>"
            + "".join(row.get(column, '<td class="empty"></td>') for column in columns)
            + "</tr>"
            for name, (digest, row) in rows.items()
        )
        prompts = sorted({str(c.params.get("prompt", "")) for c in cells.values()})
        return _TEMPLATE.format(
            totals=escape(_totals(summary)),
            prompts="".join(f'<option value="{escape(p)}">{escape(p)}</option>' for p in prompts),
            images="".join(f'<option value="{escape(n)}">{escape(n)}</option>' for n in rows),
            head=head,
            body=body,
        )


def _totals(summary: report.Summary) -> str:
    text = (
        f"{summary.jobs:,} jobs · {summary.succeeded:,} succeeded · {summary.failed:,} failed · "
        f"{summary.not_finished:,} pending · ${summary.spent:,.2f} spent"
    )
    if summary.possibly_billed:
        text += f" · ${summary.possibly_billed:,.2f} possibly billed"
    return text


_TEMPLATE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>batchgen gallery</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f6f6f4; color: #222; }}
header {{ position: sticky; top: 0; background: #fff; padding: 10px 16px; z-index: 2;
         border-bottom: 1px solid #ddd; display: flex; flex-wrap: wrap; gap: 12px;
         align-items: center; }}
h1 {{ font-size: 16px; margin: 0 12px 0 0; }}
button {{ border: 1px solid #bbb; background: #fff; border-radius: 4px; padding: 3px 9px;
          cursor: pointer; }}
button.on {{ background: #333; color: #fff; border-color: #333; }}
select {{ max-width: 260px; }}
table {{ border-collapse: separate; border-spacing: 6px; margin: 8px; }}
th {{ font-weight: 600; text-align: left; vertical-align: bottom; max-width: 220px;
      font-size: 12px; }}
th.source {{ vertical-align: middle; }}
th.source img {{ display: block; width: 120px; border-radius: 4px; }}
td {{ width: 200px; height: 200px; background: #fff; border-radius: 6px; text-align: center;
      vertical-align: middle; box-shadow: 0 1px 2px rgba(0,0,0,.12); overflow: hidden; }}
td img {{ max-width: 200px; max-height: 200px; display: block; margin: auto; }}
td.failed {{ background: #fdecea; }}
td.empty {{ background: transparent; box-shadow: none; }}
.error {{ color: #a21; font-size: 12px; padding: 8px; word-break: break-word; }}
.pending {{ color: #888; }}
td.filtered > * {{ visibility: hidden; }}
td.filtered {{ background: #eee; box-shadow: none; }}
tr[hidden] {{ display: none; }}
</style></head>
<body>
<header>
<h1>batchgen gallery</h1><span id="totals">{totals}</span>
<span>Status:
<button data-status="all" class="on">all</button><button data-status="succeeded">succeeded</button>
<button data-status="failed">failed</button><button data-status="pending">pending</button></span>
<label>Prompt <select id="prompt"><option value="">all</option>{prompts}</select></label>
<label>Image <select id="image"><option value="">all</option>{images}</select></label>
<span id="shown"></span>
</header>
<table id="grid"><thead><tr><th>source</th>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
<script>
(function () {{
  var state = {{status: "all", prompt: "", image: ""}};
  var params = new URLSearchParams(location.hash.slice(1));
  params.forEach(function (value, key) {{ if (key in state) state[key] = value; }});
  var promptBox = document.getElementById("prompt"), imageBox = document.getElementById("image");
  function apply() {{
    var shown = 0;
    document.querySelectorAll("#grid tbody tr").forEach(function (row) {{
      row.hidden = state.image !== "" && row.dataset.image !== state.image;
      row.querySelectorAll("td.cell").forEach(function (cell) {{
        var ok = (state.status === "all" || cell.dataset.status === state.status) &&
                 (state.prompt === "" || cell.dataset.prompt === state.prompt);
        cell.classList.toggle("filtered", !ok);
        if (ok && !row.hidden) shown += 1;
      }});
    }});
    document.querySelectorAll("button[data-status]").forEach(function (b) {{
      b.classList.toggle("on", b.dataset.status === state.status);
    }});
    promptBox.value = state.prompt; imageBox.value = state.image;
    document.getElementById("shown").textContent = shown + " shown";
    history.replaceState(null, "", "#" + new URLSearchParams(state).toString());
  }}
  document.querySelectorAll("button[data-status]").forEach(function (b) {{
    b.addEventListener("click", function () {{ state.status = b.dataset.status; apply(); }});
  }});
  promptBox.addEventListener("change", function () {{ state.prompt = promptBox.value; apply(); }});
  imageBox.addEventListener("change", function () {{ state.image = imageBox.value; apply(); }});
  apply();
}})();
</script>
</body></html>
"""
