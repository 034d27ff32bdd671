"""Manifests: YAML (or a bare CSV) read into validated blocks of jobs.

Everything a user can get wrong is found here, all at once, before a single request
is sent; each problem names the file, the line or row, the key and the rule. What
comes out is already valid: expansion (`grid.py`) never checks again.

    night.yaml ──yaml_lines.py──> data + the line of every key path ─┐
                (safe tags only, aliases bounded, merge keys)        │
    rows.csv ───csv_rows.py───> rows, each "rows.csv:4 (row 3)" ─────┤
                (delimiter `,` `;` or tab, from the header)          │
                                                                     v
                            document.py   the whole file: top keys, model, price,
                                          output template; params, grid, jobs
                                          │ each value of each key
                                          v
                            values.py     axis values, {file: ...}, seed: {count: N},
                                          rows: table.csv (ignore: [columns]), palettes;
                                          the API's rule for each key (batchgen.api), and
                                          "write it in quotes" for YAML's off/no/yes/on
                                          │ image_file
                                          v
                            image_files.py  URLs, files, folders, globs; outputs are
                                          never inputs (batchgen.images reads each file)

    every reader ──problems.py──> Problems: where each one stands; raised together
    what comes out ──blocks.py──> Manifest(blocks=(Block(fixed, axes), …), skipped)
"""

from __future__ import annotations

from batchgen.manifest.blocks import ROWS_KEY, Axis, Block, Choice, Manifest, distinct
from batchgen.manifest.document import TOP_KEYS, load
from batchgen.manifest.image_files import Skipped
from batchgen.manifest.values import MAX_SEED_COUNT

__all__ = [
    "MAX_SEED_COUNT",
    "ROWS_KEY",
    "TOP_KEYS",
    "Axis",
    "Block",
    "Choice",
    "Manifest",
    "Skipped",
    "distinct",
    "load",
]
