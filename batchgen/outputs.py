"""Where results land: output path templates, sanitised and confined to --out.

Pure string work (no file system calls): a template rendered for each job, its fields
slugged and cut to fit, the result checked and confined. Putting the bytes there for
good is `durable`'s."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from anyascii import anyascii

from batchgen import api

DEFAULT_TEMPLATE: Final = "{image}/{prompt}-{seed}-{job_id:.8}.{ext}"
EXT_TOKEN: Final = "{ext}"  # left in rendered paths: the extension is known only from the answer
FIELDS: Final = frozenset({"image", *api.PARAMETERS, "job_id", "model", "ext"})
MAX_FIELD_CHARS: Final = 60
NON_ASCII_MARK_CHARS: Final = 6  # hex digits of the original beside a transliteration
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
    longest_name, longest_path = _min_lengths(template)
    if longest_name > MAX_COMPONENT_CHARS or longest_path > MAX_PATH_CHARS:
        return (
            f"output template {template!r} has too much fixed text: even with every field cut "
            f"to one character, a name passes {MAX_COMPONENT_CHARS} characters or the path "
            f"{MAX_PATH_CHARS}"
        )
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
    """Cached: a million-job grid renders the same few prompts and stems over and over.

    Text beyond ASCII is transliterated (anyascii: 熊猫 -> XiongMao, 🐼 -> panda_face)
    and marked with a short digest of the original, since transliteration merges
    values (妈 and 马 both read Ma): names stay readable and different values stay
    apart. With nothing readable left, the digest alone names it."""
    if text.isascii():
        return _UNSAFE.sub("-", text).strip("-.")[:MAX_FIELD_CHARS].rstrip("-.") or "_"
    mark = hashlib.sha256(text.encode()).hexdigest()[:NON_ASCII_MARK_CHARS]
    readable = _UNSAFE.sub("-", anyascii(text)).strip("-.")
    readable = readable[: MAX_FIELD_CHARS - NON_ASCII_MARK_CHARS - 1].rstrip("-.")
    return f"{readable}-{mark}" if readable else mark


def render(template: str, fields: Mapping[str, Any]) -> str:
    """Fill `template`; every value is slugged first, `{ext}` is kept for later.

    A path past MAX_COMPONENT_CHARS in a folder or file name, or MAX_PATH_CHARS in
    all, is made to fit by shortening the field values, never the template's own
    text or `{ext}`: the longest values first, `{job_id}` only once the others are
    down to one character (a deterministic function of the values' lengths)."""
    values = {name: slug(value) for name, value in fields.items()}
    values["ext"] = EXT_TOKEN
    path = template.format_map(values)
    if len(path) <= MAX_COMPONENT_CHARS:  # the usual case: nothing can be too long
        return path
    if len(path) <= MAX_PATH_CHARS and all(
        len(part) <= MAX_COMPONENT_CHARS for part in path.split("/")
    ):
        return path
    return _shortened(_compile(template), values)


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A template as folder and file names, each a list of literal text and fields."""

    template: str
    parts: tuple[tuple[str | tuple[str, int | None], ...], ...]  # text, or (field, .N)
    fields: tuple[tuple[int, bool], ...]  # each field piece: (its name's index, is {job_id})
    fixed: tuple[int, ...]  # per name: the characters no cut can remove (text, {ext})


@functools.lru_cache(maxsize=64)
def _compile(template: str) -> _Compiled:
    parts: list[list[str | tuple[str, int | None]]] = [[]]
    fields: list[tuple[int, bool]] = []
    for literal, name, spec, _ in string.Formatter().parse(template):
        first, *rest = literal.split("/")
        parts[-1].append(first)
        for text in rest:
            parts.append([text])
        if name is None:
            continue
        if name == "ext":
            parts[-1].append(EXT_TOKEN)
            continue
        parts[-1].append((name, int(spec[1:]) if spec else None))
        fields.append((len(parts) - 1, name == "job_id"))
    fixed = tuple(sum(len(p) for p in part if isinstance(p, str)) for part in parts)
    return _Compiled(template, tuple(tuple(p) for p in parts), tuple(fields), fixed)


def _shortened(compiled: _Compiled, values: Mapping[str, str]) -> str:
    texts = [
        values[piece[0]][: piece[1]]
        for part in compiled.parts
        for piece in part
        if not isinstance(piece, str)
    ]
    cuts = _cuts(compiled.template, tuple(len(text) for text in texts))
    names = []
    index = 0
    for part in compiled.parts:
        pieces = []
        for piece in part:
            if isinstance(piece, str):
                pieces.append(piece)
                continue
            text, keep = texts[index], cuts[index]
            index += 1
            pieces.append(text if keep >= len(text) else text[:keep].rstrip("-.") or text[:keep])
        names.append("".join(pieces))
    return "/".join(names)


@functools.lru_cache(maxsize=4096)
def _cuts(template: str, lengths: tuple[int, ...]) -> tuple[int, ...]:
    """How many characters of each field piece to keep so every name and the whole path
    fit: a pure function of the lengths, so a million jobs cost a few computations."""
    compiled = _compile(template)
    kept = list(lengths)
    others = [i for i, (_, is_id) in enumerate(compiled.fields) if not is_id]
    ids = [i for i, (_, is_id) in enumerate(compiled.fields) if is_id]
    for number, fixed in enumerate(compiled.fixed):
        mine = [i for i in others if compiled.fields[i][0] == number]
        mine_ids = [i for i in ids if compiled.fields[i][0] == number]
        total = fixed + sum(kept[i] for i in mine + mine_ids)
        if total > MAX_COMPONENT_CHARS:
            _shrink(kept, mine_ids, _shrink(kept, mine, total - MAX_COMPONENT_CHARS))
    total = sum(compiled.fixed) + sum(kept) + len(compiled.fixed) - 1
    if total > MAX_PATH_CHARS:
        _shrink(kept, ids, _shrink(kept, others, total - MAX_PATH_CHARS))
    return tuple(kept)


def _shrink(kept: list[int], pieces: list[int], excess: int) -> int:
    """Take `excess` characters from the longest of `pieces` first, none below one;
    return what could not be taken."""
    while excess > 0:
        live = [i for i in pieces if kept[i] > 1]
        if not live:
            return excess
        top = max(kept[i] for i in live)
        at_top = [i for i in live if kept[i] == top]
        below = max((kept[i] for i in live if kept[i] < top), default=1)
        room = (top - below) * len(at_top)
        if room >= excess:
            share, extra = divmod(excess, len(at_top))
            for rank, i in enumerate(at_top):
                kept[i] -= share + (rank < extra)
            return 0
        for i in at_top:
            kept[i] = below
        excess -= room
    return 0


def check_path(rendered: str) -> str | None:
    """The rule a rendered output path breaks (it must stay inside --out, with no
    empty, `..` or dot-only names, within the length limits), or None."""
    if (
        len(rendered) <= MAX_COMPONENT_CHARS
        and "//" not in rendered
        and "/." not in rendered
        and not rendered.startswith((".", "/"))
        and not rendered.endswith("/")
    ):
        return None  # the usual case, in a few string searches
    if rendered.startswith("/"):
        return "it must be relative: it would leave the output folder"
    if len(rendered) > MAX_PATH_CHARS:
        return f"it is longer than {MAX_PATH_CHARS} characters"
    for name in rendered.split("/"):
        if not name:
            return "a folder or file name in it is empty"
        if name.strip(".") == "":
            if name == "..":
                return "it contains '..', which would leave the output folder"
            return f"a folder or file name in it is only dots ({name!r})"
        if len(name) > MAX_COMPONENT_CHARS:
            return f"a folder or file name in it is longer than {MAX_COMPONENT_CHARS} characters"
    return None


def _min_lengths(template: str) -> tuple[int, int]:
    """(the longest any one name can be cut down to, the whole path's)."""
    compiled = _compile(template)
    least = list(compiled.fixed)
    for part, piece in _field_pieces(compiled):
        precision = piece[1]
        least[part] += 1 if precision is None else min(1, precision)
    return max(least), sum(least) + len(least) - 1


def _field_pieces(compiled: _Compiled) -> list[tuple[int, tuple[str, int | None]]]:
    return [
        (number, piece)
        for number, part in enumerate(compiled.parts)
        for piece in part
        if not isinstance(piece, str)
    ]


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
