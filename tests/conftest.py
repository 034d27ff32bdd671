"""Shared fixtures. No real key or API base ever leaks into a test from the environment."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from batchgen.emulator import EmulatorConfig, make_app
from tests.helpers import Client, MakeClient


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


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """A factory of clients, each on its own emulator; tiny images unless told otherwise."""
    clients: list[Client] = []

    async def factory(**overrides: Any) -> Client:
        config = EmulatorConfig(**{"image_scale": 1 / 16, **overrides})
        client: Client = TestClient(TestServer(make_app(config)))
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()
