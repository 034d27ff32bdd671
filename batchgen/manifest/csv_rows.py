"""CSV rows as bundles of API parameters, and text values coerced to the API's types.

Read as `utf-8-sig` so a BOM from a spreadsheet export is not part of the first
column's name; the delimiter (`,`, `;` or a tab) is sniffed from the header line, as
exports in many locales use `;`. Every problem names the file, the line and the row.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from batchgen import api

INT_FIELDS: Final = frozenset(api.INTEGER_FIELDS)


@dataclass(frozen=True, slots=True)
class Row:
    where: str  # "table.csv:3 (row 2)"
    values: dict[str, str]  # empty cells already dropped: they mean "the default"


class TableError(ValueError):
    def __init__(self, where: str, message: str) -> None:
        self.where = where
        super().__init__(message)


DELIMITERS: Final = ",;\t"  # what spreadsheet exports use: `;` in many locales, tabs
ONE_COLUMN: Final = "\x1f"  # a header without any: no text cell holds this control character


@dataclass(frozen=True, slots=True)
class Table:
    """One CSV file, open: its header, then its rows."""

    display: str
    header: tuple[str, ...]
    _reader: Any
    _first_line: int

    def rows(self, drop: Collection[str] = ()) -> Iterator[Row]:
        """Every data row, without the columns in `drop`; raises TableError for a
        malformed row."""
        header, reader, line = self.header, self._reader, self._first_line
        for number, cells in enumerate(_rows(reader, self.display), start=1):
            where = f"{self.display}:{line + 1} (row {number})"
            line = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                raise TableError(
                    where, f"row has {len(cells)} fields but the header has {len(header)}"
                )
            values = {
                name: cell
                for name, cell in zip(header, cells, strict=True)
                if cell != "" and name not in drop
            }
            yield Row(where, values)


@contextmanager
def open_table(path: Path, display: str) -> Iterator[Table]:
    """The CSV file with its header read; raises TableError for an unreadable file or
    header. The delimiter is the header's: `,`, `;` or a tab; a header with none of them
    makes the file one column (a prompt's commas need no quotes then)."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as err:
        raise TableError(display, f"cannot read CSV: {err.strerror}") from None
    with handle:
        try:
            first = handle.readline()
        except UnicodeDecodeError as err:
            raise TableError(f"{display}:1", f"unreadable CSV header: {err}") from None
        delimiter = sniff_delimiter(first)
        lines = itertools.chain([first] if first else [], handle)
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            header = tuple(name.strip() for name in next(reader))
        except StopIteration:
            raise TableError(display, "CSV file is empty; it needs a header row") from None
        except (csv.Error, UnicodeDecodeError) as err:
            raise TableError(f"{display}:1", f"unreadable CSV header: {err}") from None
        if len(set(header)) != len(header) or "" in header:
            shown = list(header)
            raise TableError(f"{display}:1", f"CSV header has blank or repeated names: {shown}")
        yield Table(display, header, reader, reader.line_num)


def sniff_delimiter(header_line: str) -> str:
    """`,`, `;` or a tab, as csv.Sniffer reads the header line (`,` when it cannot tell);
    ONE_COLUMN when the header holds none of them."""
    if not any(d in header_line for d in DELIMITERS):
        return ONE_COLUMN
    try:
        return csv.Sniffer().sniff(header_line, delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


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
