"""One value of one key: what each manifest key may hold, checked against the API.

    axis values       a list, one value, or {file: prompts.txt} (one value a line)
    seed: {count: N}  N seeds, derived from the rest of each job by grid.py
    rows: table.csv   each row a bundle of parameters (read by csv_rows.py)
    image_file        a URL, a file, a folder or a glob (resolved by image_files.py)
    any other key     its rule in batchgen.api: enums, ranges, resolutions, palettes

A value that breaks a rule is recorded in Problems and read as BAD, so reading goes
on and every problem is reported at once. Text from a list file or a CSV cell is
first coerced to the API's type (`csv_rows.coerce`), then checked like YAML values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from batchgen import api
from batchgen.images import ImageRef
from batchgen.manifest.blocks import ROWS_KEY, Axis, Choice, distinct
from batchgen.manifest.csv_rows import Row, TableError, coerce, read_rows
from batchgen.manifest.image_files import OutputFilter, resolve
from batchgen.manifest.problems import Problems
from batchgen.manifest.yaml_lines import KeyPath

MAX_SEED_COUNT: Final = 10_000
BAD: Final = object()  # what a value that broke a rule (and was recorded) reads as


class Values:
    """Reads values in the manifest's folder `base`, noting problems in `problems`."""

    def __init__(self, base: Path, problems: Problems, outputs: OutputFilter) -> None:
        self.base = base
        self.problems = problems
        self.outputs = outputs  # what folders and globs must leave out

    def checked(self, key: str, raw: Any, where: str) -> Any:
        """A valid value, a list of images for image_file, or BAD (problem recorded)."""
        if key not in api.FIELDS:
            hint = api.did_you_mean(key, api.FIELDS)
            self.problems.problem(where, key, f"unknown parameter {key!r}{hint}")
            return BAD
        if key == "image_file":
            return self.images(raw, where)
        rule = api.check_field(key, raw)
        if rule:
            self.problems.problem(where, key, rule)
            return BAD
        return raw

    def images(self, raw: Any, where: str) -> list[ImageRef] | object:
        """The images one image_file value names, or BAD."""
        if not isinstance(raw, str) or not raw.strip():
            message = f"image_file must be a path, glob or URL, got {raw!r}"
            self.problems.problem(where, "image_file", message)
            return BAD
        try:
            return resolve(raw, self.base, outputs=self.outputs)
        except ValueError as err:
            self.problems.problem(where, "image_file", str(err))
            return BAD

    # -- axes -----------------------------------------------------------------

    def axis(self, key: str, value: Any, path: KeyPath) -> Axis | None:
        """One axis of the grid: its values, each checked, without repeats."""
        if key not in api.FIELDS:
            hint = api.did_you_mean(key, (*api.FIELDS, ROWS_KEY))
            self.problems.at(path, key, f"unknown parameter {key!r}{hint}")
            return None
        values = self.axis_values(key, value, path)
        if not values:
            self.problems.at(path, key, f"axis {key!r} is empty")
            return None
        choices: list[Choice] = []
        for raw, where in values:
            checked = self.checked(key, raw, where)
            if isinstance(checked, list):
                choices.extend({key: image} for image in checked)
            elif checked is not BAD:
                choices.append({key: checked})
        return Axis(key, distinct(choices))

    def axis_values(self, key: str, value: Any, path: KeyPath) -> list[tuple[Any, str]]:
        """(each value an axis lists, where it stands), unchecked."""
        if isinstance(value, dict) and set(value) == {"file"}:
            return self.list_file(key, value["file"], path)
        if isinstance(value, list):
            return [(v, self.problems.where((*path, i))) for i, v in enumerate(value)]
        return [(value, self.problems.where(path))]

    def list_file(self, key: str, name: Any, path: KeyPath) -> list[tuple[Any, str]]:
        """`{file: prompts.txt}`: a value a line; blank lines and `#` comments skipped."""
        if not isinstance(name, str):
            self.problems.at(path, key, "{file: ...} needs a file name")
            return []
        file = self.base / name
        try:
            text = file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            self.problems.at(path, key, f"cannot read {name!r}: {err}")
            return []
        values = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                values.append((coerce(key, line), f"{name}:{number}"))
        return values

    def seed_count(self, value: dict[str, Any], path: KeyPath) -> int | None:
        """`seed: {count: N}`: N, or None (problem recorded)."""
        count = value.get("count")
        extra = set(value) - {"count"}
        if extra or isinstance(count, bool) or not isinstance(count, int):
            self.problems.at(path, "seed", "seed: {count: N} needs a whole number N")
            return None
        if not 1 <= count <= MAX_SEED_COUNT:
            self.problems.at(path, "seed", f"seed count {count} is out of 1..{MAX_SEED_COUNT}")
            return None
        return count

    # -- CSV rows -------------------------------------------------------------

    def rows_value(self, value: Any, path: KeyPath, elsewhere: set[str]) -> Axis | None:
        """`rows: table.csv` in a grid; `elsewhere`: what the manifest sets besides."""
        if not isinstance(value, str):
            self.problems.at(path, ROWS_KEY, "rows must name a CSV file")
            return None
        return self.rows_axis(self.base / value, value, elsewhere, self.problems.where(path))

    def rows_axis(
        self, file: Path, display: str, elsewhere: set[str], where: str | None = None
    ) -> Axis | None:
        """Every row of a CSV file as one axis; `where`: the grid key naming the file."""
        choices: list[Choice] = []
        try:
            for row in read_rows(file, display):
                choices.extend(self.row_choices(row, elsewhere))
        except TableError as err:
            shown = err.where if where is None else f"{where} ({err.where})"
            self.problems.problem(shown, ROWS_KEY, str(err))
            return None
        return Axis(ROWS_KEY, distinct(choices))

    def row_choices(self, row: Row, elsewhere: set[str]) -> list[Choice]:
        """What one row sets: one choice, or one per image its image_file names."""
        for key in set(row.values) & elsewhere:
            self.problems.problem(row.where, key, f"column {key!r} is also set by the manifest")
        choice: dict[str, Any] = {}
        images_here: list[ImageRef] = []
        for key, text in row.values.items():
            checked = self.checked(key, coerce(key, text), row.where)
            if isinstance(checked, list):
                images_here = checked
            elif checked is not BAD:
                choice[key] = checked
        missing = [n for n in api.REQUIRED if n not in row.values and n not in elsewhere]
        self.problems.required(row.where, missing)
        if not images_here and "image_file" not in row.values:
            return [choice]
        return [{**choice, "image_file": image} for image in images_here]
