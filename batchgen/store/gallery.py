"""`gallery` on a store: the contact sheet and its thumbnails, made in a temporary
folder (the only local disk a store's commands touch) and PUT beside the ledgers."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any, cast

from batchgen.errors import InputError
from batchgen.store.ledgers import StoredLedger, read_ledgers
from batchgen.store.location import Location
from batchgen.store.objects import Store
from batchgen.store.reading import blocking


def write_gallery(url: str, output: str | None = None) -> str:
    """The contact sheet and its thumbnails, made in a temporary folder from the store's
    ledgers and the images whose thumbnails are missing, then PUT beside the ledgers:
    `gallery.html`, `thumbs/...`; its links stay relative."""
    from batchgen import gallery

    location = Location.parse(url)
    page_name = "gallery.html"
    if output is not None:
        target = Location.parse(output)
        folder, _, page_name = target.root.rpartition("/")
        if target.protocol != location.protocol or folder != location.root or not page_name:
            raise InputError(f"-o {output}: a store's gallery goes in its own prefix ({location}/)")
    with tempfile.TemporaryDirectory(prefix="batchgen-gallery-") as tmp:
        return blocking(_gallery(location, Path(tmp), page_name, gallery))


async def _gallery(location: Location, tmp: Path, page_name: str, gallery: Any) -> str:
    store = await Store.open(location)
    try:
        listing = await store.listing(location.root)
        ledgers = await read_ledgers(store, listing, folder=tmp)
        if not ledgers:
            raise InputError(f"{location}: no ledger there (looked for ledger*.jsonl)")
        thumbs = gallery.Thumbs(tmp / "thumbs", gallery.THUMB_PX)
        have = {
            key.rsplit("/", 1)[-1] for key in listing if key.startswith(location.key("thumbs/"))
        }
        cells, _ = gallery.collect(cast(list[Path], ledgers))
        wanted: list[tuple[Path, str]] = []  # images whose thumbnails are still to make
        for cell in cells.values():
            if cell.status != "succeeded" or cell.output is None:
                continue
            key = location.key(cell.output.relative_to(tmp).as_posix())
            if thumbs.output_thumb(cell).name not in have and key in listing:
                wanted.append((cell.output, key))
        images = await store.get_many([key for _, key in wanted])
        staged = [(path, data) for (path, _), data in zip(wanted, images, strict=True)]
        made, page = await asyncio.to_thread(
            _make_gallery, gallery, ledgers, thumbs, have, staged, tmp / page_name
        )
        await asyncio.gather(
            *(store.put(location.key(f"thumbs/{name}"), data) for name, data in made)
        )
        await store.put(location.key(page_name), page)
        return location.url(location.key(page_name))
    finally:
        await store.close()


def _make_gallery(
    gallery: Any,
    ledgers: list[StoredLedger],
    thumbs: Any,
    have: set[str],
    staged: list[tuple[Path, bytes]],
    page_path: Path,
) -> tuple[list[tuple[str, bytes]], bytes]:
    """Blocking, in the temporary folder: the thumbnails the store lacks and the page."""
    thumbs.folder.mkdir(parents=True, exist_ok=True)
    for name in have:
        (thumbs.folder / name).touch()  # there already: made once, never again
    for path, data in staged:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    page = gallery.write_gallery(cast(list[Path], ledgers), page_path)
    made = [
        (p.name, p.read_bytes())
        for p in thumbs.folder.iterdir()
        if p.name not in have and p.stat().st_size
    ]
    return made, Path(page).read_bytes()
