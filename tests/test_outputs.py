"""Output paths stay inside --out; files land whole, in batches or alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen import ledger, outputs


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_value_slugs_to_a_safe_path_piece(value: str) -> None:
    piece = outputs.slug(value)
    assert piece and "/" not in piece and piece not in (".", "..")
    assert len(piece) <= outputs.MAX_FIELD_CHARS
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in piece)


@pytest.mark.parametrize("relative", ["../x.jpg", "a/../../x.jpg", "/etc/passwd", "."])
def test_confine_refuses_escapes(tmp_path: Path, relative: str) -> None:
    with pytest.raises(ValueError, match="escapes the output folder"):
        outputs.confine(str(tmp_path.resolve()), relative)


def test_confine_keeps_paths_inside(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    assert outputs.confine(str(root), "a/b/c.jpg") == str(root / "a" / "b" / "c.jpg")


@pytest.mark.parametrize("count", [1, 3, 4, 25])  # one by one below 4 files, syncfs from 4
def test_a_commit_puts_every_file_in_place(tmp_path: Path, count: int) -> None:
    files = [(tmp_path / f"d{i % 3}" / f"f{i}.jpg", bytes([i]) * (i + 1)) for i in range(count)]
    (tmp_path / "d0").mkdir()
    (tmp_path / "d0" / "f0.jpg").write_bytes(b"an older, lost attempt")

    async def commit() -> list[ledger.WriteFailure | None]:  # together: one batch, as under load
        async with ledger.LedgerWriter(tmp_path / "ledger.jsonl") as writer:
            return await asyncio.gather(
                *(writer.submit({"job_id": f"j{i}", "status": "succeeded"}, output=(str(p), d))
                  for i, (p, d) in enumerate(files))
            )  # fmt: skip

    assert asyncio.run(commit()) == [None] * count
    for path, data in files:
        assert path.read_bytes() == data
    assert not list(tmp_path.rglob("*.part"))
    assert len(list(ledger.read(tmp_path / "ledger.jsonl"))) == count


def test_write_atomic_replaces_whole(tmp_path: Path) -> None:
    target = tmp_path / "new" / "x.png"
    outputs.write_atomic(target, b"first")
    outputs.write_atomic(target, b"second")
    assert target.read_bytes() == b"second" and not list(tmp_path.rglob("*.part"))
