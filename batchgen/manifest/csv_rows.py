"""CSV rows as bundles of API parameters, and text values coerced to the API's types.

Read as `utf-8-sig` so a BOM from a spreadsheet export is not part of the first
column's name; every problem names the file, the line and the row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INT_FIELDS = frozenset({"seed", "image_weight"})


@dataclass(frozen=True, slots=True)
class Row:
    where: str  # "table.csv:3 (row 2)"
    values: dict[str, str]  # empty cells already dropped: they mean "the default"


class TableError(ValueError):
    def __init__(self, where: str, message: str) -> None:
        self.where = where
        super().__init__(message)


def read_rows(path: Path, display: str) -> Iterator[Row]:
    """Every data row of a CSV file; raises TableError for a malformed file or row."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as err:
        raise TableError(display, f"cannot read CSV: {err.strerror}") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            raise TableError(display, "CSV file is empty; it needs a header row") from None
        except (csv.Error, UnicodeDecodeError) as err:
            raise TableError(f"{display}:1", f"unreadable CSV header: {err}") from None
        if len(set(header)) != len(header) or "" in header:
            raise TableError(f"{display}:1", f"CSV header has blank or repeated names: {header}")
        line = reader.line_num
        for number, cells in enumerate(_rows(reader, display), start=1):
            where = f"{display}:{line + 1} (row {number})"
            line = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                raise TableError(
                    where, f"row has {len(cells)} fields but the header has {len(header)}"
                )
            values = {name: cell for name, cell in zip(header, cells, strict=True) if cell != ""}
            yield Row(where, values)


def _rows(reader: Any, display: str) -> Iterator[list[str]]:
    try:
        yield from reader
    except (csv.Error, UnicodeDecodeError) as err:
        raise TableError(f"{display}:{reader.line_num}", f"unreadable CSV: {err}") from None


def coerce(key: str, text: str) -> Any:
    """A text cell as the type the API wants; unparseable text is returned as is
    so the API rule check reports it with its proper message."""
    text = text.strip()
    if key in INT_FIELDS:
        try:
            return int(text)
        except ValueError:
            return text
    if key == "color_palette":
        if text.startswith("{"):
            try:
                return json.loads(text)
            except ValueError:
                return text
        return {"name": text}
    return text
