"""The whole manifest file: its top keys, model, price and output template, and its
params, grid and jobs sections read into blocks (or a bare CSV, one job per row).

Each value inside a section is read by `values.py`; this module knows the file's
shape: which keys may stand at the top, what a section must be, which fields every
job needs. Problems are collected, never raised early: `load` raises them together.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from batchgen import api, outputs
from batchgen.errors import InputError, Problem
from batchgen.manifest.blocks import ROWS_KEY, Axis, Block, Manifest, distinct
from batchgen.manifest.image_files import OutputFilter
from batchgen.manifest.problems import Problems
from batchgen.manifest.values import BAD, Values
from batchgen.manifest.yaml_lines import KeyPath, YamlProblem
from batchgen.manifest.yaml_lines import load as load_yaml

TOP_KEYS: Final = ("model", "price", "output", "params", "grid", "jobs")
_MODEL_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def load(path: Path | str, *, exclude: Iterable[Path | str | None] = ()) -> Manifest:
    """Read and validate a manifest; raise InputError listing every problem.

    What a folder or glob of `image_file` picks under an `exclude` folder (the run's
    `--out`; None is ignored), or under any folder holding a batchgen ledger, is left
    out and counted in `Manifest.skipped`: outputs are never inputs."""
    path = Path(path)
    outputs_filter = OutputFilter(p for p in exclude if p is not None)
    display = str(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(Problem(display, "", f"cannot read manifest: {err.strerror}")) from None
    digest = hashlib.sha256(raw).hexdigest()
    if path.suffix.lower() == ".csv":
        return _Document(path, display, {}, outputs_filter).csv_manifest(digest)
    data, lines, written, anchors_only = _parse(raw, display)
    document = _Document(path, display, lines, outputs_filter, written)
    return document.yaml_manifest(data, digest, anchors_only=anchors_only)


def _parse(
    raw: bytes, display: str
) -> tuple[Any, dict[KeyPath, int], dict[KeyPath, str], set[str]]:
    """(the data, the line of each key path, the text of each value YAML read as a
    boolean or a number, the top-level keys aliased elsewhere)."""
    try:
        shared: set[KeyPath] = set()
        written: dict[KeyPath, str] = {}
        data, lines = load_yaml(raw.decode("utf-8-sig"), shared=shared, written=written)
    except UnicodeDecodeError:
        raise InputError(Problem(display, "", "manifest is not UTF-8 text")) from None
    except YamlProblem as err:
        raise InputError(Problem(f"{display}:{err.line}", "", str(err))) from None
    return data, lines, written, {str(p[0]) for p in shared}


class _Document:
    """One manifest file, read section by section."""

    def __init__(
        self,
        path: Path,
        display: str,
        lines: dict[KeyPath, int],
        outputs_filter: OutputFilter,
        written: dict[KeyPath, str] | None = None,
    ) -> None:
        self.base = path.parent
        self.display = display
        self.outputs = outputs_filter
        self.problems = Problems(display, lines)
        self.values = Values(self.base, self.problems, outputs_filter, written)

    def finish(self, manifest: Manifest) -> Manifest:
        self.problems.finish()
        return replace(manifest, skipped=self.outputs.skipped())

    # -- the whole file -------------------------------------------------------

    def yaml_manifest(
        self, data: Any, digest: str, anchors_only: set[str] | frozenset[str] = frozenset()
    ) -> Manifest:
        """`anchors_only`: top-level keys aliased elsewhere (`base: &base {...}`, kept to
        be merged with `<<: *base`), allowed whatever their name."""
        if not isinstance(data, dict):
            message = "manifest must be a YAML mapping (model, params, grid…)"
            self.problems.problem(self.display, "", message)
            return self.finish(Manifest(self.base, self.display, digest))
        self.top_keys(data, anchors_only)
        model = self.model(data.get("model", api.MODEL))
        price = self.price(data.get("price", api.PRICE_USD))
        template = self.output(data.get("output", outputs.DEFAULT_TEMPLATE))
        fixed, fixed_axes = self.params(data.get("params", {}))
        blocks = self.grid(data.get("grid"), fixed, fixed_axes, has_jobs="jobs" in data)
        blocks += self.jobs(data.get("jobs", []), fixed)
        if not blocks and not self.problems:
            self.problems.problem(self.display, "", "manifest defines no jobs: add grid: or jobs:")
        manifest = Manifest(self.base, self.display, digest, model, price, template, tuple(blocks))
        return self.finish(manifest)

    def csv_manifest(self, digest: str) -> Manifest:
        file = self.base / Path(self.display).name
        axis = self.values.rows_axis(file, self.display, set())
        blocks = (Block(self.display, {}, (axis,), kind="rows"),) if axis and axis.choices else ()
        if axis is not None and not blocks:
            self.problems.problem(self.display, "", "CSV manifest has no rows")
        return self.finish(Manifest(self.base, self.display, digest, blocks=blocks))

    def top_keys(self, data: dict[str, Any], anchors_only: set[str] | frozenset[str]) -> None:
        for key in data:
            if key not in TOP_KEYS and key not in anchors_only:
                hint = api.did_you_mean(key, TOP_KEYS)
                self.problems.at((key,), key, f"unknown key {key!r}{hint}")

    def model(self, value: Any) -> str:
        if not isinstance(value, str) or not _MODEL_RE.fullmatch(value):
            self.problems.at(("model",), "model", f"model {value!r} is not an endpoint slug")
            return api.MODEL
        return value

    def price(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            self.problems.at(("price",), "price", f"price {value!r} must be a number ≥ 0")
            return api.PRICE_USD
        return float(value)

    def output(self, template: Any) -> Any:
        """The output template as written (checked: a problem is recorded, not mended)."""
        if isinstance(template, str):
            rule = outputs.check_template(template)
        else:
            rule = "output must be a string template"
        if rule:
            self.problems.at(("output",), "output", rule)
        return template

    # -- sections -------------------------------------------------------------

    def params(self, data: Any) -> tuple[dict[str, Any], list[Axis]]:
        """Fixed parameters; an image_file naming several images becomes an axis."""
        if not isinstance(data, dict):
            self.problems.at(("params",), "params", "params must be a mapping")
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
            self.problems.at(("grid",), "grid", "grid must be a mapping of axes")
            return []
        axes = [a for a in fixed_axes if a.name not in data]
        seed_count = None
        elsewhere = set(fixed) | {a.name for a in axes} | (set(data) - {ROWS_KEY})
        for key, value in data.items():
            path = ("grid", key)
            if key == ROWS_KEY:
                axis = self.values.rows_value(value, path, elsewhere - {ROWS_KEY})
            elif key == "seed" and isinstance(value, dict) and "count" in value:
                seed_count = self.values.seed_count(value, path)
                continue
            else:
                axis = self.values.axis(key, value, path)
            if axis is not None:
                axes.append(axis)
        block = Block(self.problems.where(("grid",)), fixed, tuple(axes), seed_count)
        if ROWS_KEY not in data:  # rows are checked for what they need, even when broken
            self.require(block, elsewhere | ({"seed"} if seed_count else set()))
        return [block]

    def jobs(self, data: Any, fixed: dict[str, Any]) -> list[Block]:
        if not isinstance(data, list):
            self.problems.at(("jobs",), "jobs", "jobs must be a list of mappings")
            return []
        blocks = []
        for i, entry in enumerate(data):
            if not isinstance(entry, dict):
                self.problems.at(("jobs", i), "jobs", "each job must be a mapping")
                continue
            own, axes = self.params_of(entry, ("jobs", i))
            where = self.problems.where(("jobs", i))
            block = Block(where, {**fixed, **own}, tuple(axes), kind="job")
            self.require(block, set(block.fixed) | set(entry))  # a bad value is no absent one
            blocks.append(block)
        return blocks

    def params_of(self, entry: dict[str, Any], path: KeyPath) -> tuple[dict[str, Any], list[Axis]]:
        """One mapping of parameters (params:, or one job): fixed values, and an axis for
        each image_file naming several images."""
        own: dict[str, Any] = {}
        axes: list[Axis] = []
        for key, value in entry.items():
            at = (*path, key)
            checked = self.values.checked(key, value, self.problems.where(at), at)
            if key == "image_file" and isinstance(checked, list):
                axes.append(Axis(key, distinct([{key: image} for image in checked])))
            elif checked is not BAD:
                own[key] = checked
        return own, axes

    def require(self, block: Block, available: set[str]) -> None:
        if not any(axis.name == ROWS_KEY for axis in block.axes):
            missing = [name for name in api.REQUIRED if name not in available]
            self.problems.required(block.where, missing)
