"""An input image as a value: read and identified once, shown by its name, sent as base64.

    inspect_file   a file -> LocalImage (JPEG, PNG or WebP by its bytes, at most 10 MB)
    recorded       an image_file value as a ledger line or `plan --list` records it
    source         how any form of an image_file value is shown: a path or a URL
    EncodedImages  base64 of local images, each read and encoded once, an LRU bounded by bytes;
                   or, once uploaded (`--upload-images`), the asset URL that stands for one

A local image is identified by the digest of its bytes, never by its path, so
renaming a folder does not change any job's identity. Which files a manifest's
`image_file` names (folders, globs, outputs left out) is `batchgen.manifest.image_files`;
this module is what the manifest, `grid.py`, the runner and the reports share.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from batchgen import api
from batchgen.lru import BytesLRU

DEFAULT_CACHE_BYTES: Final = 256 * 1024 * 1024


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


def recorded(image: ImageRef) -> dict[str, str] | str:
    """An image_file as a ledger records it: a local image by the path the manifest
    named and the digest of its bytes (never the bytes), a URL as is."""
    if isinstance(image, LocalImage):
        return {"path": image.name, "sha256": image.sha256}
    return image


def source(image: object) -> str | None:
    """How an image_file value is shown, whatever form it takes: a LocalImage or its
    `recorded` form (a ledger's `{"path", "sha256"}`) by its path, a URL as is; None
    when there is none."""
    if isinstance(image, LocalImage):
        return image.name
    if isinstance(image, dict):
        image = image.get("path")
    return None if image is None else str(image)


class EncodedImages:
    """Base64 of local images, each read and encoded once, held in an LRU bounded by bytes.

    A 5 MB photo used by a thousand jobs costs one read and one encode; a folder
    of ten thousand photos does not fill memory. `urls` maps an image's digest to the
    asset URL it was uploaded as (`batchgen.uploads`): a request then carries the URL.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.encodes = 0
        self._cache = BytesLRU(max_bytes)
        self.urls: dict[str, str] = {}  # sha256 -> the asset URL it was uploaded as

    def as_json(self, image: LocalImage) -> bytes:
        """The image as a request's `image_file` JSON value: its asset URL when it has one,
        else its base64."""
        url = self.urls.get(image.sha256)
        if url is not None:
            return json.dumps(url).encode()
        return b'"' + self.get(image) + b'"'

    @property
    def held_bytes(self) -> int:
        return self._cache.held_bytes

    @property
    def peak_bytes(self) -> int:
        return self._cache.peak_bytes

    def clear(self) -> None:
        """Drop every encoding held (the URLs stay)."""
        self._cache.clear()

    def get(self, image: LocalImage) -> bytes:
        cached = self._cache.get(image.sha256)
        if cached is not None:
            return cached
        data = image.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != image.sha256:
            raise ValueError(f"image {image.name!r} changed on disk since the manifest was read")
        encoded = base64.b64encode(data)
        self.encodes += 1
        self._cache.put(image.sha256, encoded)
        return encoded
