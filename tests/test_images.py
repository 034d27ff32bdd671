"""batchgen.images: how an image_file is recorded and shown, whatever form it takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen import images
from batchgen.images import LocalImage

PHOTO = LocalImage(Path("/m/photos/a.jpg"), "photos/a.jpg", "ab" * 32, 10, "jpeg")
URL = "https://example.com/x/pic.jpg"


@pytest.mark.parametrize(
    ("image", "shown"),
    [
        (PHOTO, "photos/a.jpg"),  # as the manifest named it, not its absolute path
        ({"path": "photos/a.jpg", "sha256": "ab" * 32}, "photos/a.jpg"),  # a ledger's record
        (URL, URL),
        ({"sha256": "ab" * 32}, None),  # identity only: nothing to show
        (None, None),
    ],
)
def test_source_shows_every_form_by_its_path_or_url(image: object, shown: str | None) -> None:
    assert images.source(image) == shown


def test_recorded_keeps_the_path_and_digest_never_the_bytes() -> None:
    assert images.recorded(PHOTO) == {"path": "photos/a.jpg", "sha256": "ab" * 32}
    assert images.recorded(URL) == URL
    assert images.source(images.recorded(PHOTO)) == images.source(PHOTO)
