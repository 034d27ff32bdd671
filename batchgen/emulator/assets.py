"""Uploaded input images, by the sha256 of their bytes, and the URLs that name them."""

from __future__ import annotations

import hashlib
import re
from typing import Final

from yarl import URL

EXTENSIONS: Final = {"jpeg": "jpg", "png": "png", "webp": "webp"}  # api.sniff_image -> URL
CONTENT_TYPES: Final = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_ASSET_PATH: Final = re.compile(r"/assets/([0-9a-f]{64})\.(jpg|png|webp)")


def asset_path(digest: str, extension: str) -> str:
    return f"/assets/{digest}.{extension}"


def parse_asset_path(path: str) -> tuple[str, str] | None:
    """(digest, extension) of an `/assets/...` path, else None."""
    match = _ASSET_PATH.fullmatch(path)
    return (match[1], match[2]) if match else None


class AssetStore:
    """Uploaded images: kept for the emulator's life (there is no delete), once per content."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[str, bytes]] = {}

    def put(self, data: bytes, kind: str) -> str:
        """Store `data` (a sniffed "jpeg", "png" or "webp"); its path under the emulator."""
        digest = hashlib.sha256(data).hexdigest()
        extension = EXTENSIONS[kind]
        self._files.setdefault(digest, (extension, data))
        return asset_path(digest, self._files[digest][0])

    def get(self, digest: str, extension: str) -> bytes | None:
        found = self._files.get(digest)
        return found[1] if found is not None and found[0] == extension else None

    def resolve(self, url: str) -> bytes | None:
        """The bytes behind `url` when it names one of our assets (on any host), else None."""
        try:
            parsed = URL(url)
        except ValueError:
            return None
        named = parse_asset_path(parsed.path)
        return None if named is None else self.get(*named)

    def __len__(self) -> int:
        return len(self._files)
