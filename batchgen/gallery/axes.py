"""Where each job sits: the grid's axes as a manifest states them (the source image,
then the prompt, the seed slot and any other parameter that varies), their headings,
and each job's value on each."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batchgen.gallery.cells import ROW_KEY, SEED, Cell, canon, seed_of, source_of
from batchgen.gallery.seeds import SeedKey, seed_keys


def label(key: str, value: Any) -> str:
    """A column heading's part: the prompt as is, anything else as `key value`."""
    return _shown(value) if key == "prompt" else f"{title(key)} {_shown(value)}"


def title(key: str) -> str:
    return "source image" if key == ROW_KEY else key.replace("_", " ")


def _shown(value: Any) -> str:
    """A value as a person reads it: a palette by its name or its colours."""
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return str(value["name"])
    if isinstance(value, dict) and isinstance(value.get("members"), list):
        members = [m for m in value["members"] if isinstance(m, dict)]
        return ", ".join(f"{m.get('color_hex')} {m.get('color_weight', 1)}" for m in members)
    return value if isinstance(value, str) else canon(value)


@dataclass(frozen=True)
class Axis:
    name: str  # a parameter ("prompt", "seed", ...), or "image_file" for the source image
    labels: tuple[str, ...]  # each value's heading part; "" for jobs that leave it unset


@dataclass(frozen=True)
class Layout:
    """The grid's axes as the jobs show them: the source image, then whatever varies
    (prompt, seed slot, the rest by name), and each job's value index on each."""

    axes: tuple[Axis, ...]
    keys: dict[str, tuple[int, ...]]  # job id -> its value's index on every axis
    sources: tuple[tuple[str, str | None], ...]  # the source image axis's values

    def columns(self) -> list[tuple[int, ...]]:
        """The default sheet's columns: every combination of the axes but the image."""
        return sorted({key[1:] for key in self.keys.values()})

    def heading(self, axes: Sequence[int], values: Sequence[int]) -> str:
        """What `values` on `axes` read as: unset parameters are left out (or said to be
        unset, when nothing else is left). The page's script says it the same way."""
        parts = [self.axes[a].labels[v] for a, v in zip(axes, values, strict=True)]
        return " · ".join(p for p in parts if p) or " · ".join(
            f"{title(self.axes[a].name)} not set" for a in axes
        )


def layout(cells: Sequence[Cell]) -> Layout:
    """Where each job sits. Columns are the grid's axes as a manifest writes them, not
    every value that differs: a derived seed counts by its slot (seed #1..N, the seed
    itself is in the cell), and a parameter that never varies is no axis at all."""
    seeds = seed_keys(cells)
    others = sorted({k for c in cells for k in c.params} - {ROW_KEY, "prompt", SEED})
    sources = tuple(dict.fromkeys(source_of(c.params) for c in cells))
    axes = [Axis(ROW_KEY, tuple(name for name, _ in sources))]
    index: dict[str, dict[Any, int]] = {ROW_KEY: {s: i for i, s in enumerate(sources)}}
    for name in ("prompt", SEED, *others):
        values = _axis_values(name, cells, seeds)
        if len(values) > 1:
            axes.append(Axis(name, tuple(values.values())))
            index[name] = {value: i for i, value in enumerate(values)}
    keys = {
        cell.job_id: tuple(index[axis.name][_value_key(axis.name, cell, seeds)] for axis in axes)
        for cell in cells
    }
    return Layout(tuple(axes), keys, sources)


def _value_key(name: str, cell: Cell, seeds: dict[str, SeedKey]) -> Any:
    if name == ROW_KEY:
        return source_of(cell.params)
    if name == SEED:
        return seeds.get(cell.job_id)
    value = cell.params.get(name)
    return None if value is None else canon(value)


def _axis_values(name: str, cells: Sequence[Cell], seeds: dict[str, SeedKey]) -> dict[Any, str]:
    """An axis's values, in order, with their labels: in order of first appearance (the
    manifest's order, mostly), seed slots by number, jobs without the parameter last."""
    found: dict[Any, set[Any]] = {}
    for cell in cells:
        found.setdefault(_value_key(name, cell, seeds), set()).add(seed_of(cell.params))
    if name != SEED:
        return {
            key: "" if key is None else label(name, json.loads(key))
            for key in sorted(found, key=lambda k: k is None)
        }  # a stable sort: first appearance otherwise
    kinds = ("slot", "rank", "value")
    first = {key: i for i, key in enumerate(found)}

    def rank(key: SeedKey | None) -> tuple[int, int]:
        if key is None:
            return len(kinds), 0
        return kinds.index(key[0]), first[key] if key[0] == "value" else key[1]

    labels: dict[Any, str] = {}
    for key in sorted(found, key=rank):
        if key is None:
            labels[key] = ""
        elif key[0] == "slot" or (key[0] == "rank" and len(found[key]) > 1):
            labels[key] = f"seed #{key[1]}"  # the seed itself is in each cell
        else:
            labels[key] = label(SEED, next(iter(found[key])))
    return labels
