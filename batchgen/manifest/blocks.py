"""What a manifest reads into: blocks of fixed parameters crossed with axes.

Everything here is already valid: expansion (`grid.py`) never checks again, and
no axis holds a value twice (`distinct`), so no block ever repeats a job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from batchgen import api, outputs
from batchgen.images import LocalImage
from batchgen.manifest.image_files import Skipped

ROWS_KEY: Final = "rows"  # the axis of a CSV's rows, each a bundle of parameters

Choice = Mapping[str, Any]  # the parameters one axis value sets


def _identity(value: object) -> object:
    if isinstance(value, LocalImage):
        return {"sha256": value.sha256}  # an image is its bytes, wherever it lies
    raise TypeError(f"cannot identify {value!r}")


def distinct(choices: list[Choice]) -> tuple[Choice, ...]:
    """The choices without repeats (first kept), so no block ever repeats a job and
    expansion need not remember the jobs it has given."""
    seen: set[str] = set()
    kept = []
    for choice in choices:
        key = json.dumps(choice, sort_keys=True, default=_identity)
        if key not in seen:
            seen.add(key)
            kept.append(choice)
    return tuple(kept)


@dataclass(frozen=True, slots=True)
class Axis:
    name: str  # an API field, or "rows" for a CSV bundle
    choices: tuple[Choice, ...]


@dataclass(frozen=True, slots=True)
class Block:
    """Fixed parameters crossed with axes: the grid, one explicit job, or a CSV's rows."""

    where: str
    fixed: Mapping[str, Any]
    axes: tuple[Axis, ...] = ()
    seed_count: int | None = None
    kind: str = "grid"  # "grid" | "job" (one entry of jobs:) | "rows" (a CSV manifest)

    @property
    def size(self) -> int:
        total = self.seed_count or 1
        for axis in self.axes:
            total *= len(axis.choices)
        return total


@dataclass(frozen=True)
class Manifest:
    path: Path  # the manifest's folder, which the paths inside it are relative to
    display: str
    digest: str
    model: str = api.MODEL
    price: float = api.PRICE_USD
    output: str = outputs.DEFAULT_TEMPLATE
    blocks: tuple[Block, ...] = field(default=())
    skipped: tuple[Skipped, ...] = ()  # what folders and globs picked that are outputs

    @property
    def size(self) -> int:
        """Jobs before identical ones are merged."""
        return sum(block.size for block in self.blocks)
