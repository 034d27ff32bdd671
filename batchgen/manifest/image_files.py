"""Which images an `image_file` value names: a URL, a file, a folder or a glob.

    "https://…/a.jpg"  sent as is
    hero.jpg           one file
    photos/            its .jpg .jpeg .png .webp files (any letter case), sorted, not recursive
    "shots/**/*.png"   every file the glob matches (`**` recurses)

Outputs are never inputs: what a folder or glob picks under the run's `--out`, or
under a folder holding a batchgen ledger (or its `thumbs/`), is left out by the
OutputFilter and counted as Skipped. A file named directly is never left out. Each
file found is read and checked once (`batchgen.images.inspect_file`).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from batchgen import api
from batchgen.images import ImageRef, inspect_file

IMAGE_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".webp"})
_GLOB_CHARS: Final = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class Skipped:
    """Files a folder or glob picked that were left out: outputs are never inputs."""

    folder: str  # as the user would write it
    reason: str  # OUTPUT_FOLDER (under --out) or LEDGER_FOLDER (a folder holding a ledger)
    files: int

    def __str__(self) -> str:
        if self.reason == OUTPUT_FOLDER:
            where = f"under the output folder {self.folder}"
        else:
            where = f"under {self.folder}, which holds a batchgen ledger"
        files = "input file" if self.files == 1 else "input files"
        return f"{self.files:,} {files} {where} (outputs are never inputs)"


OUTPUT_FOLDER: Final = "output folder"
LEDGER_FOLDER: Final = "ledger folder"
LEDGER_GLOB: Final = "ledger*.jsonl"  # as ledger.ledgers_in finds them
THUMBS_FOLDER: Final = "thumbs"  # where the gallery puts its thumbnails, beside a ledger


class OutputFilter:
    """Tells the files a folder or glob picks that are batchgen's own outputs.

    A file is skipped when it lies under one of the `exclude` folders (the run's
    `--out`), or when a folder the expansion walks through (from the folder or the
    glob's fixed part down to the file) holds a ledger, or is the `thumbs/` beside
    one. Each folder is looked at once. Explicit file paths are never filtered."""

    def __init__(self, exclude: Iterable[Path | str] = ()) -> None:
        self.exclude = [(os.path.join(os.path.realpath(p), ""), str(p)) for p in exclude]
        self._ledger: dict[Path, bool] = {}
        self._verdicts: dict[tuple[Path, Path], tuple[str, str] | None] = {}
        self._skipped: dict[tuple[str, str], set[Path]] = {}

    def pick(self, paths: list[Path], top: Path, base: Path) -> tuple[list[Path], list[Skipped]]:
        """(the paths that are inputs, what was left out of these), the latter also counted
        in `skipped()`. `top` is the folder the walk that found `paths` started from."""
        kept: list[Path] = []
        here: dict[tuple[str, str], int] = {}
        for path in paths:
            key = (path.parent, top)
            if key not in self._verdicts:
                self._verdicts[key] = self._verdict(path.parent, top, base)
            verdict = self._verdicts[key]
            if verdict is None:
                kept.append(path)
            else:
                self._skipped.setdefault(verdict, set()).add(path)
                here[verdict] = here.get(verdict, 0) + 1
        return kept, [Skipped(folder, reason, n) for (reason, folder), n in sorted(here.items())]

    def skipped(self) -> tuple[Skipped, ...]:
        return tuple(
            Skipped(folder, reason, len(files))
            for (reason, folder), files in sorted(self._skipped.items())
        )

    def _verdict(self, folder: Path, top: Path, base: Path) -> tuple[str, str] | None:
        real = os.path.join(os.path.realpath(folder), "")
        for root, shown in self.exclude:
            if real.startswith(root):
                return OUTPUT_FOLDER, shown
        current = folder
        while True:
            if self._holds_ledger(current):
                return LEDGER_FOLDER, _display(current, base)
            if current.name == THUMBS_FOLDER and self._holds_ledger(current.parent):
                return LEDGER_FOLDER, _display(current.parent, base)
            if current == top or len(current.parts) <= len(top.parts):
                return None
            current = current.parent

    def _holds_ledger(self, folder: Path) -> bool:
        if folder not in self._ledger:
            try:
                self._ledger[folder] = any(folder.glob(LEDGER_GLOB))
            except OSError:
                self._ledger[folder] = False
        return self._ledger[folder]


def _glob_top(base: Path, spec: str) -> Path:
    """The folder a glob walks from: its parts before the first wildcard."""
    fixed = []
    for part in Path(spec).parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return base.joinpath(*fixed)


def _all_skipped(what: str, skipped: list[Skipped]) -> ValueError:
    counts = "; ".join(str(s) for s in skipped)
    return ValueError(f"{what} once outputs are left out: skipped {counts}")


def resolve(spec: str, base: Path, *, outputs: OutputFilter | None = None) -> list[ImageRef]:
    """One `image_file` value -> the images it names, in a stable order.

    A URL is kept as is; a folder gives its image files (not recursive); a glob
    (`**` recurses) gives every match; anything else is one file. With `outputs`,
    what a folder or glob picks under an output folder is left out (and counted
    there). Raises ValueError (with every bad file named) when the value names no
    usable image.
    """
    if api.is_url(spec):
        return [spec]
    if _GLOB_CHARS & set(spec):
        paths = _glob_files(spec, base, outputs)
    elif (base / spec).is_dir():
        paths = _folder_files(spec, base, outputs)
    else:
        paths = [base / spec]
    found: list[ImageRef] = []
    errors = []
    for path in paths:
        try:
            found.append(inspect_file(path, _display(path, base)))
        except ValueError as err:
            errors.append(str(err))
    if errors:
        raise ValueError("; ".join(errors))
    return found


def _glob_files(spec: str, base: Path, outputs: OutputFilter | None) -> list[Path]:
    matches = sorted(glob.glob(str(base / spec), recursive=True))
    paths = [Path(m) for m in matches if os.path.isfile(m)]
    if not paths:
        raise ValueError(f"image_file glob {spec!r} matches no file")
    if outputs is not None:
        paths, left_out = outputs.pick(paths, _glob_top(base, spec), base)
        if not paths:
            raise _all_skipped(f"image_file glob {spec!r} matches no file", left_out)
    return paths


def _folder_files(spec: str, base: Path, outputs: OutputFilter | None) -> list[Path]:
    folder = base / spec
    paths = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not paths:
        raise ValueError(f"image_file folder {spec!r} holds no .jpg/.jpeg/.png/.webp file")
    if outputs is not None:
        paths, left_out = outputs.pick(paths, folder, base)
        if not paths:
            raise _all_skipped(f"image_file folder {spec!r} holds no image", left_out)
    return paths


def _display(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)
