"""Small builders shared by tests: real image files and manifests on disk."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from PIL import Image


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (16, 12), colour: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (colour % 256, 80, 160)).save(buffer, format=fmt)
    return buffer.getvalue()


def make_image(path: Path, fmt: str = "JPEG", colour: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(fmt, colour=colour))
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


Client = TestClient[Any, Any]  # an aiohttp test client of the emulator
MakeClient = Callable[..., Awaitable[Client]]  # the `make_client` fixture (conftest.py)
