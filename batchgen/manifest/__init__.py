"""Manifests: YAML (or a bare CSV) read into validated blocks of jobs (see document.py)."""

from __future__ import annotations

from batchgen.manifest.document import (
    MAX_SEED_COUNT,
    ROWS_KEY,
    TOP_KEYS,
    Axis,
    Block,
    Choice,
    Manifest,
    distinct,
    load,
)

__all__ = [
    "MAX_SEED_COUNT",
    "ROWS_KEY",
    "TOP_KEYS",
    "Axis",
    "Block",
    "Choice",
    "Manifest",
    "distinct",
    "load",
]
