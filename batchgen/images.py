"""Input images: resolve what a manifest names into files or URLs, and encode them once.

A local image is identified by the digest of its bytes, never by its path, so
renaming a folder does not change any job's identity.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from batchgen import api

IMAGE_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".webp"})
DEFAULT_CACHE_BYTES: Final = 256 * 1024 * 1024
_GLOB_CHARS: Final = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class LocalImage:
    """A validated image file. `name` is the path as the user would write it."""

    path: Path
    name: str
    sha256: str
    size: int
    format: str  # 'jpeg' | 'png' | 'webp'

    @property
    def stem(self) -> str:
        return self.path.stem


ImageRef = LocalImage | str  # a local file, or an http(s) URL sent as is


def inspect_file(path: Path, name: str) -> LocalImage:
    """Read, sniff and digest one file. Raises ValueError naming the rule broken."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ValueError(f"image {name!r} cannot be read: {err.strerror}") from None
    if size > api.MAX_IMAGE_BYTES:
        raise ValueError(f"image {name!r} is {size:,} bytes; the limit is {api.MAX_IMAGE_BYTES:,}")
    data = path.read_bytes()
    kind = api.sniff_image(data)
    if kind is None:
        raise ValueError(f"{name!r} is not a JPEG, PNG or WebP image (by its bytes)")
    return LocalImage(path, name, hashlib.sha256(data).hexdigest(), len(data), kind)


def resolve(spec: str, base: Path) -> list[ImageRef]:
    """One `image_file` value -> the images it names, in a stable order.

    A URL is kept as is; a folder gives its image files (not recursive); a glob
    (`**` recurses) gives every match; anything else is one file. Raises
    ValueError (with every bad file named) when the value names no usable image.
    """
    if api.is_url(spec):
        return [spec]
    if _GLOB_CHARS & set(spec):
        matches = sorted(glob.glob(str(base / spec), recursive=True))
        paths = [Path(m) for m in matches if os.path.isfile(m)]
        if not paths:
            raise ValueError(f"image_file glob {spec!r} matches no file")
    elif (base / spec).is_dir():
        folder = base / spec
        paths = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not paths:
            raise ValueError(f"image_file folder {spec!r} holds no .jpg/.jpeg/.png/.webp file")
    else:
        paths = [base / spec]
    images: list[ImageRef] = []
    errors = []
    for path in paths:
        try:
            images.append(inspect_file(path, _display(path, base)))
        except ValueError as err:
            errors.append(str(err))
    if errors:
        raise ValueError("; ".join(errors))
    return images


def _display(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


class EncodedImages:
    """Base64 of local images, each read and encoded once, held in an LRU bounded by bytes.

    A 5 MB photo used by a thousand jobs costs one read and one encode; a folder
    of ten thousand photos does not fill memory.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.held_bytes = 0
        self.peak_bytes = 0
        self.encodes = 0
        self._cache: OrderedDict[str, bytes] = OrderedDict()

    def get(self, image: LocalImage) -> bytes:
        cached = self._cache.get(image.sha256)
        if cached is not None:
            self._cache.move_to_end(image.sha256)
            return cached
        data = image.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != image.sha256:
            raise ValueError(f"image {image.name!r} changed on disk since the manifest was read")
        encoded = base64.b64encode(data)
        self.encodes += 1
        self._cache[image.sha256] = encoded
        self.held_bytes += len(encoded)
        while self.held_bytes > self.max_bytes and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self.held_bytes -= len(evicted)
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        return encoded
