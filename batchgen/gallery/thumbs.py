"""Thumbnails: made once with Pillow into `thumbs/`, named by the image's sha256 and
size (a resumed run's gallery only makes the new ones), several at a time."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from PIL import Image, ImageOps

from batchgen.gallery.cells import Cell, source_of

THUMB_PX: Final = 256
THUMB_WORKERS: Final = 8  # Pillow decodes and resizes without the GIL: threads help


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


def wanted(
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
