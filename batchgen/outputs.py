"""Where results land: output path templates (sanitised, confined to --out) and atomic writes."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
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
    return _slug_text(str(value))


@functools.lru_cache(maxsize=8192)
def _slug_text(text: str) -> str:
    """Cached: a million-job grid renders the same few prompts and stems over and over."""
    text = _UNSAFE.sub("-", text).strip("-.")
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


def confine(root: str, relative: str) -> str:
    """`root/relative`, refusing anything that would land outside `root`.

    Pure string arithmetic, no stat calls and no pathlib: this runs once per image,
    where pathlib's objects cost a tenth of a busy run's event loop. `root` should
    already be absolute and resolved."""
    target = os.path.normpath(os.path.join(root, relative))
    if target == root or not target.startswith(os.path.join(root, "")):
        raise ValueError(f"output path {relative!r} escapes the output folder")
    return target


def write_atomic(path: Path, data: bytes, tag: str = "batchgen") -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = stage(str(path), data, tag)
    try:
        os.fsync(staged.fd)
    finally:
        os.close(staged.fd)
    os.replace(staged.tmp, staged.path)
    fsync_dir(str(path.parent))


PART_SUFFIX: Final = ".part"


def temp_name(path: str, tag: str) -> str:
    """`.NAME.TAG.part` beside `path`. One writer owns a tag at a time (the run holding
    its ledger's lock) and one job owns a path, so the name needs no randomness, and
    a later run of the same ledger can tell its own leftovers from a live shard's."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{tag}{PART_SUFFIX}")


def remove_stale_parts(out: str, tag: str) -> int:
    """Blocking: delete the temp files a killed run of this ledger left under `out`
    (the lock says none of this tag is being written now). Returns how many."""
    suffix = f".{tag}{PART_SUFFIX}"
    removed = 0
    for folder, _, names in os.walk(out):
        for name in names:
            if name.startswith(".") and name.endswith(suffix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


PREFLIGHT_IMAGES: Final = 4  # a run must have room for its first few images ...
PREFLIGHT_IMAGE_BYTES: Final = 2 * 1024 * 1024  # ... each at most this (1536x1536 JPEG: ~1 MB)


def room_problem(out: Path, images: int) -> str | None:
    """Why `out` cannot take the first `images` images (not writable, too full), or None.

    Checked before the first request, so a machine problem is found while nothing is
    paid for yet; the writer still handles a disk that fills up later."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".batchgen-probe-{os.getpid()}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
        stat = os.statvfs(out)
    except OSError as err:
        return f"{out}: cannot write the output folder: {err.strerror}"
    free = stat.f_bavail * stat.f_frsize
    need = min(images, PREFLIGHT_IMAGES) * PREFLIGHT_IMAGE_BYTES
    if free < need:
        return (
            f"{out}: only {free / 1e6:.1f} MB free; the first {min(images, PREFLIGHT_IMAGES)} "
            f"images need about {need / 1e6:.0f} MB"
        )
    return None


@dataclass(slots=True)
class Staged:
    """A file written under its temp name, its descriptor still open until durable."""

    path: str
    tmp: str
    fd: int


def stage(path: str, data: bytes, tag: str) -> Staged:
    """Write `data` beside `path` under a temp name, not yet durable."""
    tmp = temp_name(path, tag)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Staged(path, tmp, fd)


def make_durable(staged: list[Staged]) -> None:
    """Blocking: one syncfs(2) for a batch (one journal commit instead of one per
    file: about 3x faster here for small images), or an fsync per file for a few
    files or where syncfs is missing (not Linux)."""
    if _syncfs is not None and len(staged) >= SYNCFS_MIN_FILES:
        _sync_filesystem(os.path.dirname(staged[0].path))
        return
    for item in staged:
        os.fsync(item.fd)


def close_staged(staged: list[Staged]) -> None:
    for item in staged:
        os.close(item.fd)


def publish(staged: list[Staged]) -> None:
    """Rename each durable temp file to its name: each appears whole or not at all."""
    for item in staged:
        os.replace(item.tmp, item.path)


def make_durable_folders(folders: set[str]) -> None:
    """Blocking: make the renames durable (one syncfs, or an fsync per folder)."""
    if _syncfs is not None and len(folders) >= SYNCFS_MIN_FILES:
        _sync_filesystem(next(iter(folders)))
        return
    for folder in folders:
        fsync_dir(folder)


SYNCFS_MIN_FILES: Final = 4


def _load_syncfs() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


def _sync_filesystem(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), folder)
    finally:
        os.close(fd)


def fsync_dir(folder: str | Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
