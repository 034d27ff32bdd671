"""Manifests: YAML (or a bare CSV) read into validated blocks of jobs.

Everything a user can get wrong is found here, all at once, before a single
request is sent; each problem names the file, the line or row, the key and the
rule. What comes out is already valid: expansion (`grid.py`) never checks again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from batchgen import api, images, outputs, tables, yamlfile
from batchgen.errors import InputError, Problem

TOP_KEYS: Final = ("model", "price", "output", "params", "grid", "jobs")
ROWS_KEY: Final = "rows"
MAX_SEED_COUNT: Final = 10_000
_MODEL_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

Choice = Mapping[str, Any]  # the parameters one axis value sets


def _identity(value: object) -> object:
    if isinstance(value, images.LocalImage):
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
    path: Path
    display: str
    digest: str
    model: str = api.MODEL
    price: float = api.PRICE_USD
    output: str = outputs.DEFAULT_TEMPLATE
    blocks: tuple[Block, ...] = field(default=())
    skipped: tuple[images.Skipped, ...] = ()  # what folders and globs picked that are outputs

    @property
    def size(self) -> int:
        """Jobs before identical ones are merged."""
        return sum(block.size for block in self.blocks)


def load(path: Path | str, *, exclude: Iterable[Path | str | None] = ()) -> Manifest:
    """Read and validate a manifest; raise InputError listing every problem.

    What a folder or glob of `image_file` picks under an `exclude` folder (the run's
    `--out`; None is ignored), or under any folder holding a batchgen ledger, is left
    out and counted in `Manifest.skipped`: outputs are never inputs."""
    path = Path(path)
    outputs_filter = images.OutputFilter(p for p in exclude if p is not None)
    display = str(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(Problem(display, "", f"cannot read manifest: {err.strerror}")) from None
    digest = hashlib.sha256(raw).hexdigest()
    if path.suffix.lower() == ".csv":
        return _Reader(path, display, {}, outputs_filter).csv_manifest(digest)
    try:
        shared: set[yamlfile.Path_] = set()
        data, lines = yamlfile.load(raw.decode("utf-8-sig"), shared=shared)
    except UnicodeDecodeError:
        raise InputError(Problem(display, "", "manifest is not UTF-8 text")) from None
    except yamlfile.YamlProblem as err:
        raise InputError(Problem(f"{display}:{err.line}", "", str(err))) from None
    reader = _Reader(path, display, lines, outputs_filter)
    return reader.yaml_manifest(data, digest, anchors_only={str(p[0]) for p in shared})


class _Reader:
    """Collects problems while turning parsed data into blocks."""

    def __init__(
        self,
        path: Path,
        display: str,
        lines: dict[yamlfile.Path_, int],
        outputs_filter: images.OutputFilter,
    ) -> None:
        self.base = path.parent
        self.display = display
        self.lines = lines
        self.outputs = outputs_filter
        self.problems: list[Problem] = []

    def where(self, key_path: yamlfile.Path_) -> str:
        for end in range(len(key_path), -1, -1):
            if key_path[:end] in self.lines:
                return f"{self.display}:{self.lines[key_path[:end]]}"
        return self.display

    def problem(self, where: str, key: str, message: str) -> None:
        self.problems.append(Problem(where, key, message))

    def finish(self, manifest: Manifest) -> Manifest:
        if self.problems:
            raise InputError(self.problems)
        return replace(manifest, skipped=self.outputs.skipped())

    # -- the whole file -------------------------------------------------------

    def yaml_manifest(
        self, data: Any, digest: str, anchors_only: set[str] | frozenset[str] = frozenset()
    ) -> Manifest:
        """`anchors_only`: top-level keys aliased elsewhere (`base: &base {...}`, kept to
        be merged with `<<: *base`), allowed whatever their name."""
        if not isinstance(data, dict):
            self.problem(self.display, "", "manifest must be a YAML mapping (model, params, grid…)")
            return self.finish(Manifest(self.base, self.display, digest))
        for key in data:
            if key not in TOP_KEYS and key not in anchors_only:
                hint = api.did_you_mean(key, TOP_KEYS)
                self.problem(self.where((key,)), key, f"unknown key {key!r}{hint}")
        model = self.model(data.get("model", api.MODEL))
        price = self.price(data.get("price", api.PRICE_USD))
        template = data.get("output", outputs.DEFAULT_TEMPLATE)
        rule = (
            outputs.check_template(template)
            if isinstance(template, str)
            else ("output must be a string template")
        )
        if rule:
            self.problem(self.where(("output",)), "output", rule)
        fixed, fixed_axes = self.params(data.get("params", {}))
        blocks = self.grid(data.get("grid"), fixed, fixed_axes, has_jobs="jobs" in data)
        blocks += self.jobs(data.get("jobs", []), fixed)
        if not blocks and not self.problems:
            self.problem(self.display, "", "manifest defines no jobs: add grid: or jobs:")
        manifest = Manifest(self.base, self.display, digest, model, price, template, tuple(blocks))
        return self.finish(manifest)

    def csv_manifest(self, digest: str) -> Manifest:
        axis = self.rows_axis(self.base / Path(self.display).name, self.display, set())
        blocks = (Block(self.display, {}, (axis,), kind="rows"),) if axis and axis.choices else ()
        if axis is not None and not blocks:
            self.problem(self.display, "", "CSV manifest has no rows")
        return self.finish(Manifest(self.base, self.display, digest, blocks=blocks))

    def model(self, value: Any) -> str:
        if not isinstance(value, str) or not _MODEL_RE.fullmatch(value):
            self.problem(
                self.where(("model",)), "model", f"model {value!r} is not an endpoint slug"
            )
            return api.MODEL
        return value

    def price(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            self.problem(self.where(("price",)), "price", f"price {value!r} must be a number ≥ 0")
            return api.PRICE_USD
        return float(value)

    # -- sections -------------------------------------------------------------

    def params(self, data: Any) -> tuple[dict[str, Any], list[Axis]]:
        """Fixed parameters; an image_file naming several images becomes an axis."""
        if not isinstance(data, dict):
            self.problem(self.where(("params",)), "params", "params must be a mapping")
            return {}, []
        fixed, axes = self.params_of(data, ("params",))
        for axis in [a for a in axes if len(a.choices) == 1]:  # one image is just a value
            fixed.update(axis.choices[0])
            axes.remove(axis)
        return fixed, axes

    def grid(
        self, data: Any, fixed: dict[str, Any], fixed_axes: list[Axis], *, has_jobs: bool
    ) -> list[Block]:
        if data is None:
            if has_jobs and not fixed_axes:
                return []
            data = {}
        if not isinstance(data, dict):
            self.problem(self.where(("grid",)), "grid", "grid must be a mapping of axes")
            return []
        axes = [a for a in fixed_axes if a.name not in data]
        seed_count = None
        elsewhere = set(fixed) | {a.name for a in axes} | (set(data) - {ROWS_KEY})
        for key, value in data.items():
            path = ("grid", key)
            if key == ROWS_KEY:
                axis = self.rows_value(value, path, elsewhere - {ROWS_KEY})
            elif key == "seed" and isinstance(value, dict) and "count" in value:
                seed_count = self.seed_count(value, path)
                continue
            else:
                axis = self.axis(key, value, path)
            if axis is not None:
                axes.append(axis)
        block = Block(self.where(("grid",)), fixed, tuple(axes), seed_count)
        self.require(block, elsewhere | ({"seed"} if seed_count else set()))
        return [block]

    def jobs(self, data: Any, fixed: dict[str, Any]) -> list[Block]:
        if not isinstance(data, list):
            self.problem(self.where(("jobs",)), "jobs", "jobs must be a list of mappings")
            return []
        blocks = []
        for i, entry in enumerate(data):
            if not isinstance(entry, dict):
                self.problem(self.where(("jobs", i)), "jobs", "each job must be a mapping")
                continue
            own, axes = self.params_of(entry, ("jobs", i))
            block = Block(self.where(("jobs", i)), {**fixed, **own}, tuple(axes), kind="job")
            self.require(block, set(block.fixed) | {a.name for a in axes})
            blocks.append(block)
        return blocks

    def params_of(
        self, entry: dict[str, Any], path: yamlfile.Path_
    ) -> tuple[dict[str, Any], list[Axis]]:
        own: dict[str, Any] = {}
        axes: list[Axis] = []
        for key, value in entry.items():
            checked = self.value(key, value, (*path, key))
            if key == "image_file" and isinstance(checked, list):
                axes.append(Axis(key, distinct([{key: image} for image in checked])))
            elif checked is not _BAD:
                own[key] = checked
        return own, axes

    def require(self, block: Block, available: set[str]) -> None:
        missing = [name for name in api.REQUIRED if name not in available]
        if missing and not any(axis.name == ROWS_KEY for axis in block.axes):
            self.problem(block.where, missing[0], f"{' and '.join(missing)} is required")

    # -- axes -----------------------------------------------------------------

    def axis(self, key: str, value: Any, path: yamlfile.Path_) -> Axis | None:
        if key not in api.FIELDS:
            hint = api.did_you_mean(key, (*api.FIELDS, ROWS_KEY))
            self.problem(self.where(path), key, f"unknown parameter {key!r}{hint}")
            return None
        if isinstance(value, dict) and set(value) == {"file"}:
            values = self.list_file(key, value["file"], path)
        elif isinstance(value, list):
            values = [(v, self.where((*path, i))) for i, v in enumerate(value)]
        else:
            values = [(value, self.where(path))]
        if not values:
            self.problem(self.where(path), key, f"axis {key!r} is empty")
            return None
        choices: list[Choice] = []
        for raw, where in values:
            checked = self.checked(key, raw, where)
            if isinstance(checked, list):
                choices.extend({key: image} for image in checked)
            elif checked is not _BAD:
                choices.append({key: checked})
        return Axis(key, distinct(choices))

    def seed_count(self, value: dict[str, Any], path: yamlfile.Path_) -> int | None:
        count = value.get("count")
        extra = set(value) - {"count"}
        if extra or isinstance(count, bool) or not isinstance(count, int):
            self.problem(self.where(path), "seed", "seed: {count: N} needs a whole number N")
            return None
        if not 1 <= count <= MAX_SEED_COUNT:
            self.problem(
                self.where(path), "seed", f"seed count {count} is out of 1..{MAX_SEED_COUNT}"
            )
            return None
        return count

    def list_file(self, key: str, name: Any, path: yamlfile.Path_) -> list[tuple[Any, str]]:
        if not isinstance(name, str):
            self.problem(self.where(path), key, "{file: ...} needs a file name")
            return []
        file = self.base / name
        try:
            text = file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            self.problem(self.where(path), key, f"cannot read {name!r}: {err}")
            return []
        values = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                values.append((tables.coerce(key, line), f"{name}:{number}"))
        return values

    def rows_value(self, value: Any, path: yamlfile.Path_, elsewhere: set[str]) -> Axis | None:
        if not isinstance(value, str):
            self.problem(self.where(path), ROWS_KEY, "rows must name a CSV file")
            return None
        return self.rows_axis(self.base / value, value, elsewhere, self.where(path))

    def rows_axis(
        self, file: Path, display: str, elsewhere: set[str], where: str | None = None
    ) -> Axis | None:
        choices: list[Choice] = []
        try:
            for row in tables.read_rows(file, display):
                for key in set(row.values) & elsewhere:
                    self.problem(row.where, key, f"column {key!r} is also set by the manifest")
                choice: dict[str, Any] = {}
                images_here: list[images.ImageRef] = []
                for key, text in row.values.items():
                    checked = self.checked(key, tables.coerce(key, text), row.where)
                    if isinstance(checked, list):
                        images_here = checked
                    elif checked is not _BAD:
                        choice[key] = checked
                missing = [n for n in api.REQUIRED if n not in row.values and n not in elsewhere]
                if missing:
                    self.problem(row.where, missing[0], f"{' and '.join(missing)} is required")
                choices.extend({**choice, "image_file": i} for i in images_here)
                if not images_here and "image_file" not in row.values:
                    choices.append(choice)
        except tables.TableError as err:
            self.problem(
                err.where if where is None else f"{where} ({err.where})", ROWS_KEY, str(err)
            )
            return None
        return Axis(ROWS_KEY, distinct(choices))

    # -- single values --------------------------------------------------------

    def value(self, key: str, raw: Any, path: yamlfile.Path_) -> Any:
        if key not in api.FIELDS:
            self.problem(
                self.where(path),
                key,
                f"unknown parameter {key!r}{api.did_you_mean(key, api.FIELDS)}",
            )
            return _BAD
        return self.checked(key, raw, self.where(path))

    def checked(self, key: str, raw: Any, where: str) -> Any:
        """A valid value, a list of images for image_file, or _BAD (problem recorded)."""
        if key not in api.FIELDS:
            self.problem(
                where, key, f"unknown parameter {key!r}{api.did_you_mean(key, api.FIELDS)}"
            )
            return _BAD
        if key == "image_file":
            if not isinstance(raw, str) or not raw.strip():
                self.problem(where, key, f"image_file must be a path, glob or URL, got {raw!r}")
                return _BAD
            try:
                return images.resolve(raw, self.base, outputs=self.outputs)
            except ValueError as err:
                self.problem(where, key, str(err))
                return _BAD
        rule = api.check_field(key, raw)
        if rule:
            self.problem(where, key, rule)
            return _BAD
        return raw


_BAD: Final = object()
