"""The seed axis: each seeded job's place on it, from its own parameters. A seed
`seed: {count: N}` derived is in slot #1..N, recomputed as `grid` derives it; other
seeds by value when rows share them, else by rank in the ledger."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

from batchgen import api, grid
from batchgen.gallery.cells import ROW_KEY, SEED, Cell, canon, seed_of
from batchgen.manifest import MAX_SEED_COUNT

SeedKey = tuple[str, int]  # ("slot", k) derived, ("rank", k) by first appearance, ("value", seed)
_SEED_PREFIX: Final = 64  # derived seeds are looked for among this many first (and 4 a seed)
_NOT_OURS: Final = (SEED, "model")  # "model" comes from the `run` line, not the request


def _request(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(the model, the request without its seed) as `grid` identifies a job: a local
    image by its digest alone."""
    request = {k: v for k, v in params.items() if k not in _NOT_OURS}
    image = request.get(ROW_KEY)
    if isinstance(image, dict) and "sha256" in image:
        request[ROW_KEY] = {"sha256": image["sha256"]}
    return str(params.get("model") or api.MODEL), request


def derived_slots(model: str, request: dict[str, Any], seeds: set[int]) -> dict[int, int]:
    """Which of `seeds` `seed: {count: N}` gives this request, each by its slot (1-based).
    The first `_SEED_PREFIX` + 4 a seed are looked through; only when some are found
    there (a derived grid, maybe half run) does the search go on to the largest count."""
    found: dict[int, int] = {}
    prefix = _SEED_PREFIX + 4 * len(seeds)
    for slot, seed in enumerate(grid.seed_sequence(model, request), start=1):
        if seed in seeds:
            found[seed] = slot
            if len(found) == len(seeds):
                break
        if slot >= (MAX_SEED_COUNT if found else prefix):
            break
    return found


def seed_keys(cells: Sequence[Cell]) -> dict[str, SeedKey]:
    """Each seeded job's place on the seed axis, from its own parameters.

    Jobs that differ only by seed form a group (a source image and every other
    parameter). A seed `seed: {count: N}` derived for its group is in slot k, the k-th
    seed the grid derives for it: ("slot", k). Any other seed (written in the manifest
    or a CSV) is ("value", seed) when another group has it too (a seed axis shared by
    the rows), else ("rank", k), the k-th such seed of its group in ledger order."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        if seed_of(cell.params) is not None:
            groups.setdefault(canon(_request(cell.params)), []).append(cell)
    keys: dict[str, SeedKey] = {}
    others: dict[str, list[int]] = {}
    for group, members in groups.items():
        seeds = list(dict.fromkeys(seed_of(c.params) or 0 for c in members))
        slots = derived_slots(*_request(members[0].params), set(seeds))
        for cell in members:
            if (seed := seed_of(cell.params) or 0) in slots:
                keys[cell.job_id] = ("slot", slots[seed])
        others[group] = [seed for seed in seeds if seed not in slots]
    owners = Counter(seed for seeds in others.values() for seed in seeds)
    for group, seeds in others.items():
        alone = [seed for seed in seeds if owners[seed] == 1]
        place: dict[int, SeedKey] = {seed: ("rank", k) for k, seed in enumerate(alone, start=1)}
        place.update((seed, ("value", seed)) for seed in seeds if owners[seed] > 1)
        for cell in groups[group]:
            if (seed := seed_of(cell.params) or 0) in place:
                keys[cell.job_id] = place[seed]
    return keys
