"""Problems: every problem one manifest has, each placed at its file and line.

Reading never stops at the first: each reader records what is wrong here and
goes on, and `finish` raises them all at once as one InputError.
"""

from __future__ import annotations

from collections.abc import Mapping

from batchgen.errors import InputError, Problem
from batchgen.manifest.yaml_lines import KeyPath


class Problems:
    def __init__(self, display: str, lines: Mapping[KeyPath, int]) -> None:
        self.display = display  # the manifest as the user named it
        self.lines = lines  # where each key path stands (empty for a CSV manifest)
        self.found: list[Problem] = []

    def __bool__(self) -> bool:
        return bool(self.found)

    def where(self, key_path: KeyPath) -> str:
        """`night.yaml:12`: the line of the key path, or of the nearest key above it."""
        for end in range(len(key_path), -1, -1):
            if key_path[:end] in self.lines:
                return f"{self.display}:{self.lines[key_path[:end]]}"
        return self.display

    def problem(self, where: str, key: str, message: str) -> None:
        self.found.append(Problem(where, key, message))

    def at(self, key_path: KeyPath, key: str, message: str) -> None:
        """A problem where `key_path` stands."""
        self.problem(self.where(key_path), key, message)

    def required(self, where: str, missing: list[str]) -> None:
        """The required fields a job lacks, if any, as one problem."""
        if missing:
            self.problem(where, missing[0], f"{' and '.join(missing)} is required")

    def finish(self) -> None:
        if self.found:
            raise InputError(self.found)
