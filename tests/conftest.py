"""Shared fixtures. No real key or API base ever leaks into a test from the environment."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (
        "SEGMIND_API_KEY",
        "SEGMIND_API_BASE",
        "SEGMIND_STORAGE_BASE",
        "JOB_COMPLETION_INDEX",
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_MIN",
    ):
        monkeypatch.delenv(name, raising=False)
    yield
