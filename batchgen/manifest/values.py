"""One value of one key: what each manifest key may hold, checked against the API.

    axis values       a list, one value, or {file: prompts.txt} (one value a line)
    seed: {count: N}  N seeds, derived from the rest of each job by grid.py
    rows: table.csv   each row a bundle of parameters (read by csv_rows.py); or
                      rows: {file: table.csv, ignore: [notes]}, leaving columns out
    image_file        a URL, a file, a folder or a glob (resolved by image_files.py)
    any other key     its rule in batchgen.api: enums, ranges, resolutions, palettes

A value that breaks a rule is recorded in Problems and read as BAD, so reading goes
on and every problem is reported at once. Text from a list file or a CSV cell is
first coerced to the API's type (`csv_rows.coerce`), then checked like YAML values.
A string field given what YAML reads as a boolean (`off`, `no`, `yes`, `on`) or a
number says so, and how to quote it: `written` holds each such value as written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from batchgen import api
from batchgen.images import ImageRef
from batchgen.manifest.blocks import ROWS_KEY, Axis, Choice, distinct
from batchgen.manifest.csv_rows import Row, Table, TableError, coerce, open_table
from batchgen.manifest.image_files import OutputFilter, resolve
from batchgen.manifest.problems import Problems
from batchgen.manifest.yaml_lines import KeyPath

MAX_SEED_COUNT: Final = 10_000
BAD: Final = object()  # what a value that broke a rule (and was recorded) reads as
ROWS_OPTIONS: Final = ("file", "ignore")  # rows: {file: table.csv, ignore: [notes]}
_PLAIN_WORD: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_. -]*")


class Values:
    """Reads values in the manifest's folder `base`, noting problems in `problems`."""

    def __init__(
        self,
        base: Path,
        problems: Problems,
        outputs: OutputFilter,
        written: Mapping[KeyPath, str] | None = None,
    ) -> None:
        self.base = base
        self.problems = problems
        self.outputs = outputs  # what folders and globs must leave out
        # the YAML text of each scalar read as a boolean or a number, by key path
        self.written: Mapping[KeyPath, str] = written or {}

    def checked(self, key: str, raw: Any, where: str, path: KeyPath | None = None) -> Any:
        """A valid value, a list of images for image_file, or BAD (problem recorded).
        `path`: where the value stands in the YAML document, if it comes from there."""
        if key not in api.FIELDS:
            hint = api.did_you_mean(key, api.FIELDS)
            self.problems.problem(where, key, f"unknown parameter {key!r}{hint}")
            return BAD
        if key == "image_file":
            return self.images(raw, where, path)
        rule = api.check_field(key, raw)
        if rule:
            self.problems.problem(where, key, self.unquoted(key, raw, path) or rule)
            return BAD
        return raw

    def unquoted(self, key: str, raw: Any, path: KeyPath | None) -> str | None:
        """For a string field given a YAML boolean or number: what YAML made of it and
        the quoted text to write instead; None when nothing better than the rule."""
        if key not in api.TEXT_FIELDS or not isinstance(raw, bool | int | float):
            return None
        text = self.written.get(path) if path is not None else None
        if isinstance(raw, bool):
            head = f"{key} got the boolean {str(raw).lower()} ({YAML_BOOLEANS})"
            text = text or str(raw).lower()
        else:
            text = text or str(raw)
            head = f"{key} got the number {text}"
        tries = [text, text.upper()]
        if isinstance(raw, bool) and key == "magic_prompt_option":
            tries.append("ON" if raw else "OFF")
        for quoted in tries:
            if api.check_field(key, quoted) is None:
                return f'{head}: write it in quotes, "{quoted}"'
        if isinstance(raw, bool):  # quoted, it breaks the rule all the same: say both
            return f"{head}: {api.check_field(key, text)}"
        return None

    def images(self, raw: Any, where: str, path: KeyPath | None = None) -> list[ImageRef] | object:
        """The images one image_file value names, or BAD."""
        if not isinstance(raw, str) or not raw.strip():
            message = self.unquoted("image_file", raw, path)
            message = message or f"image_file must be a path, glob or URL, got {raw!r}"
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
        for raw, where, at in values:
            checked = self.checked(key, raw, where, at)
            if isinstance(checked, list):
                choices.extend({key: image} for image in checked)
            elif checked is not BAD:
                choices.append({key: checked})
        return Axis(key, distinct(choices))

    def axis_values(
        self, key: str, value: Any, path: KeyPath
    ) -> list[tuple[Any, str, KeyPath | None]]:
        """(each value an axis lists, where it stands, its key path in the YAML
        document if it is written there), unchecked."""
        if isinstance(value, dict) and set(value) == {"file"}:
            return self.list_file(key, value["file"], path)
        if isinstance(value, list):
            paths = [(*path, i) for i in range(len(value))]
            return [(v, self.problems.where(p), p) for v, p in zip(value, paths, strict=True)]
        return [(value, self.problems.where(path), path)]

    def list_file(
        self, key: str, name: Any, path: KeyPath
    ) -> list[tuple[Any, str, KeyPath | None]]:
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
        values: list[tuple[Any, str, KeyPath | None]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                values.append((coerce(key, line), f"{name}:{number}", None))
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
        """`rows: table.csv`, or `rows: {file: table.csv, ignore: [notes]}`, in a grid;
        `elsewhere`: what the manifest sets besides."""
        ignore: dict[str, str] = {}
        if isinstance(value, dict):
            options = self.rows_options(value, path)
            if options is None:
                return None
            value, ignore = options
        elif not isinstance(value, str):
            self.problems.at(path, ROWS_KEY, "rows must name a CSV file")
            return None
        where = self.problems.where(path)
        return self.rows_axis(self.base / value, value, elsewhere, where, ignore=ignore)

    def rows_options(
        self, value: dict[str, Any], path: KeyPath
    ) -> tuple[str, dict[str, str]] | None:
        """`{file: table.csv, ignore: [notes, owner]}` -> (the file, {each column to
        leave out: where it is named}), or None (problem recorded)."""
        shape = "rows: {file: table.csv, ignore: [notes]}"
        fine = True
        for key in value:
            if key not in ROWS_OPTIONS:
                hint = api.did_you_mean(str(key), ROWS_OPTIONS)
                self.problems.at(
                    (*path, key), ROWS_KEY, f"unknown key {key!r} in rows{hint}; write {shape}"
                )
                fine = False
        name = value.get("file")
        if not isinstance(name, str) or not name.strip():
            self.problems.at((*path, "file"), ROWS_KEY, f"rows needs a CSV file name: {shape}")
            fine = False
        listed = value.get("ignore", [])
        ignore: dict[str, str] = {}
        if not isinstance(listed, list):
            message = f"rows: ignore must be a list of column names, got {listed!r}: {shape}"
            self.problems.at((*path, "ignore"), ROWS_KEY, message)
            return None
        for i, column in enumerate(listed):
            at = (*path, "ignore", i)
            if not isinstance(column, str) or not column.strip():
                message = self.unquoted_name(f"rows: ignore[{i}]", column, at)
                self.problems.at(at, ROWS_KEY, message)
                fine = False
            else:
                ignore[column.strip()] = self.problems.where(at)
        return (name, ignore) if fine and isinstance(name, str) else None

    def unquoted_name(self, what: str, raw: Any, path: KeyPath) -> str:
        """The problem with a column name that is not text."""
        text = self.written.get(path)
        if isinstance(raw, bool) and text:
            head = f"{what} got the boolean {str(raw).lower()} ({YAML_BOOLEANS})"
            return f'{head}: write it in quotes, "{text}"'
        if isinstance(raw, int | float) and text:
            return f'{what} got the number {text}: write it in quotes, "{text}"'
        return f"{what} must be a column name, got {raw!r}"

    def rows_axis(
        self,
        file: Path,
        display: str,
        elsewhere: set[str],
        where: str | None = None,
        *,
        ignore: Mapping[str, str] | None = None,
    ) -> Axis | None:
        """Every row of a CSV file as one axis; `where`: the grid key naming the file;
        `ignore`: the columns to leave out, each with where it is named (None for a CSV
        manifest, which cannot name any)."""
        choices: list[Choice] = []
        try:
            with open_table(file, display) as table:
                drop = self.columns(table, ignore)
                for row in table.rows(drop):
                    choices.extend(self.row_choices(row, elsewhere))
        except TableError as err:
            shown = err.where if where is None else f"{where} ({err.where})"
            self.problems.problem(shown, ROWS_KEY, str(err))
            return None
        return Axis(ROWS_KEY, distinct(choices))

    def columns(self, table: Table, ignore: Mapping[str, str] | None) -> set[str]:
        """The columns to leave out of every row: those `ignore` names, and the unknown
        ones (each reported once, at the header, with how to ignore it)."""
        named = ignore or {}
        for name, where in named.items():
            if name not in table.header:
                hint = api.did_you_mean(name, table.header)
                message = (
                    f"rows: ignore names {name!r}, which is not a column of {table.display}"
                    f"{hint}; its columns: {', '.join(table.header)}"
                )
                self.problems.problem(where, ROWS_KEY, message)
        unknown = [n for n in table.header if n not in api.FIELDS and n not in named]
        for name in unknown:
            hint = api.did_you_mean(name, api.FIELDS)
            kept = [n for n in named if n in table.header]  # the good part of ignore
            words = ", ".join(_yaml_word(n) for n in [*kept, name])
            if ignore is None:
                file = _yaml_word(Path(table.display).name)
                shape = f"{{rows: {{file: {file}, ignore: [{words}]}}}}"
                how = f"name it from a YAML manifest, grid: {shape}"
            else:
                how = f"rows: {{file: {_yaml_word(table.display)}, ignore: [{words}]}}"
            message = (
                f"unknown column {name!r}: unknown parameter {name!r}{hint} (or ignore it: {how})"
            )
            self.problems.problem(f"{table.display}:1", name, message)
        return {*named, *unknown}

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


YAML_BOOLEANS: Final = "YAML reads off/no/yes/on as booleans"


def _yaml_word(text: str) -> str:
    """`text` as YAML reads it back as that very string: bare when it can be, else quoted."""
    try:
        plain = _PLAIN_WORD.fullmatch(text) is not None and yaml.safe_load(text) == text
    except yaml.YAMLError:
        plain = False
    return text if plain else json.dumps(text, ensure_ascii=False)
