"""Where results land: output path templates (sanitised, confined to --out) and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

DEFAULT_TEMPLATE: Final = "{image}/{prompt}-{seed}-{job_id:.8}.{ext}"
EXT_TOKEN: Final = "{ext}"  # left in rendered paths: the extension is known only from the answer
FIELDS: Final = frozenset(
    {
        "image", "prompt", "negative_prompt", "seed", "style_type", "resolution",
        "image_weight", "magic_prompt_option", "color_palette", "job_id", "model", "ext",
    }
)  # fmt: skip
MAX_FIELD_CHARS: Final = 60
MAX_COMPONENT_CHARS: Final = 120
MAX_PATH_CHARS: Final = 240
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")


def check_template(template: str) -> str | None:
    """The rule `template` breaks, or None."""
    if template.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", template):
        return f"output template {template!r} must be a relative path"
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        return f"output template {template!r} is malformed: {err}"
    names = set()
    for literal, name, spec, conversion in parsed:
        if ".." in literal.split("/"):
            return f"output template {template!r} must not contain '..'"
        if name is None:
            continue
        if name not in FIELDS:
            return f"output template field {{{name}}} is unknown; use {', '.join(sorted(FIELDS))}"
        if conversion or (spec and not re.fullmatch(r"\.\d+", spec)):
            return f"output template field {{{name}}} only takes a length, like {{{name}:.8}}"
        names.add(name)
    if "ext" not in names:
        return "output template must contain {ext} (the extension is known from the image bytes)"
    return None


def slug(value: object) -> str:
    """A value as a safe, short path piece."""
    if isinstance(value, Mapping):  # a colour palette
        if "name" in value:
            value = value["name"]
        else:
            canonical = json.dumps(value, sort_keys=True).encode()
            value = "custom-" + hashlib.sha256(canonical).hexdigest()[:8]
    text = _UNSAFE.sub("-", str(value)).strip("-.")
    return text[:MAX_FIELD_CHARS].rstrip("-.") or "_"


def render(template: str, fields: Mapping[str, Any]) -> str:
    """Fill `template`; every value is slugged first, `{ext}` is kept for later."""
    values = {name: slug(value) for name, value in fields.items()}
    values["ext"] = EXT_TOKEN
    path = template.format_map(values)
    parts = [p[:MAX_COMPONENT_CHARS] for p in path.split("/") if p not in ("", ".")]
    return "/".join(parts)[:MAX_PATH_CHARS]


def final_path(rendered: str, ext: str) -> str:
    return rendered.replace(EXT_TOKEN, ext)


def confine(root: Path, relative: str) -> Path:
    """`root / relative`, refusing anything that would land outside `root`."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ValueError(f"output path {relative!r} escapes the output folder")
    return target


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
