"""The emulator behaves like the real service: auth, accounting, faults, limits, determinism.

Its rules for bodies are in test_emulator_contract.py. Here: everything around them, plus the
vendor's own `requests` sample and the `segmind` SDK pointed at it, and a load run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib
import io
import json
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from PIL import Image

from batchgen import api, retry
from batchgen.emulator import DEMO_KEY, STATS, EmulatorConfig, fingerprint, make_app
from batchgen.emulator.pictures import scaled_size
from batchgen.emulator.serve import (
    RunningEmulator,
    add_arguments,
    config_from_args,
    run_from_args,
    running_emulator,
)
from tests.helpers import Client, MakeClient

PATH = f"/v1/{api.MODEL}"
HEADERS = {"x-api-key": DEMO_KEY}
URL = "https://example.com/input.jpg"
BODY: dict[str, Any] = {"image_file": URL, "prompt": "a lighthouse at dusk", "seed": 4242}
ROOT = Path(__file__).resolve().parents[1]
# The vendor page's sample, verbatim (shared/api/segmind-model-page.txt).
VENDOR_DATA = {
    "prompt": "A panda playing football, caricature style",
    "image_file": "https://segmind-resources.s3.amazonaws.com/input/a30b306b-6683-49ae-82c0-a1f18242660c-turbo-i2i-ip.jpg",
    "magic_prompt_option": "AUTO",
    "seed": 965220,
    "style_type": "GENERAL",
    "resolution": "RESOLUTION_1024_1024",
    "image_weight": 50,
}


async def post(
    client: Client, body: object = BODY, headers: dict[str, str] = HEADERS
) -> tuple[int, bytes, CIMultiDict[str]]:
    async with client.post(PATH, json=body, headers=headers) as response:
        return response.status, await response.read(), CIMultiDict(response.headers)


def error_of(data: bytes) -> str:
    message = json.loads(data)["error"]
    assert isinstance(message, str)
    return message


def body_with(**changes: Any) -> dict[str, Any]:
    return {**BODY, **changes}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class HeldSleep:
    """A `sleep` seam that parks requests 'upstream' until the test releases them."""

    def __init__(self, expected: int) -> None:
        self.delays: list[float] = []
        self.release = asyncio.Event()
        self.all_waiting = asyncio.Event()
        self._expected = expected

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if len(self.delays) >= self._expected:
            self.all_waiting.set()
        await self.release.wait()


# -- the gateway: key, model, content type, size, method -------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no key"),
        pytest.param({"x-api-key": "wrong"}, id="wrong key"),
        pytest.param({"Authorization": f"Bearer {DEMO_KEY}"}, id="Bearer is not accepted"),
    ],
)
async def test_without_the_key_is_401(make_client: MakeClient, headers: dict[str, str]) -> None:
    client = await make_client()
    status, data, _ = await post(client, headers=headers)
    assert status == 401
    assert "x-api-key" in error_of(data)
    assert client.app is not None
    assert client.app[STATS].billed_total == 0


async def test_unknown_model_is_404(make_client: MakeClient) -> None:
    client = await make_client()
    async with client.post("/v1/ideogram-turbo", json=BODY, headers=HEADERS) as response:
        assert response.status == 404
        assert "ideogram-turbo" in error_of(await response.read())


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        pytest.param(json.dumps(BODY), "text/plain", id="text/plain"),
        pytest.param("prompt=x", "application/x-www-form-urlencoded", id="form"),
        pytest.param(json.dumps(BODY), None, id="no content type"),
    ],
)
async def test_content_type_other_than_json_is_406(
    make_client: MakeClient, data: str, content_type: str | None
) -> None:
    client = await make_client()
    headers = {**HEADERS, **({"Content-Type": content_type} if content_type else {})}
    async with client.post(PATH, data=data.encode(), headers=headers) as response:
        assert response.status == 406
        assert await response.json() == {"error": "Invalid content type"}


async def test_body_over_the_limit_is_413(make_client: MakeClient) -> None:
    client = await make_client(max_body_bytes=1024)
    status, data, _ = await post(client, body_with(prompt="x" * 2000))
    assert status == 413
    assert "1024" in error_of(data)
    assert (await post(client))[0] == 200  # a body under the limit still goes through


async def test_chunked_body_over_the_limit_is_413(make_client: MakeClient) -> None:
    client = await make_client(max_body_bytes=1024)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * 600  # JSON whitespace: only the size is wrong

    headers = {**HEADERS, "Content-Type": "application/json"}
    async with client.post(PATH, data=chunks(), headers=headers) as response:
        assert response.status == 413
        assert "1024" in error_of(await response.read())


async def test_other_methods_are_405(make_client: MakeClient) -> None:
    client = await make_client()
    for method in ("GET", "PUT", "DELETE"):
        async with client.request(method, PATH, headers=HEADERS) as response:
            assert response.status == 405
    assert client.app is not None
    assert client.app[STATS].by_status == {405: 3}


# -- credits and accounting ------------------------------------------------------------------


async def test_balance_below_the_price_is_406(make_client: MakeClient) -> None:
    client = await make_client(credits=0.1)
    status, _, headers = await post(client)
    assert status == 200
    assert headers["x-remaining-credits"] == "0.037"
    status, data, _ = await post(client, body_with(seed=4243))
    assert (status, error_of(data)) == (406, "Insufficient credits")  # 0.037 left: above zero
    assert client.app is not None
    stats = client.app[STATS]
    assert (stats.billed_total, stats.credits_left, stats.spent) == (1, 0.037, 0.063)


async def test_a_balance_of_exactly_two_prices_buys_two_images(make_client: MakeClient) -> None:
    client = await make_client(credits=0.126)
    statuses = [(await post(client, body_with(seed=seed)))[0] for seed in (100, 101, 102)]
    assert statuses == [200, 200, 406]


async def test_concurrent_requests_cannot_overdraw(make_client: MakeClient) -> None:
    held = HeldSleep(expected=1)
    client = await make_client(credits=0.1, latency=1.0, sleep=held)
    first = asyncio.ensure_future(post(client))
    try:
        await asyncio.wait_for(held.all_waiting.wait(), 5)
        # the first request holds the only image's worth of credits
        second = await asyncio.wait_for(post(client, body_with(seed=4243)), 5)
    finally:
        held.release.set()
        (finished,) = await asyncio.gather(first, return_exceptions=True)
    assert isinstance(finished, tuple)
    assert (finished[0], second[0]) == (200, 406)


async def test_stats_endpoint_matches_the_in_process_stats(make_client: MakeClient) -> None:
    client = await make_client()
    await post(client)
    await post(client, body_with(seed=4243))
    await post(client, headers={})
    async with client.get("/_stats") as response:
        served = await response.json()
    assert client.app is not None
    stats = client.app[STATS]
    assert served == stats.as_json()
    assert served["requests_total"] == 3
    assert served["by_status"] == {"200": 2, "401": 1}
    assert served["charges"] == {fingerprint(BODY): 1, fingerprint(body_with(seed=4243)): 1}
    assert (served["billed_total"], served["spent"], served["credits_left"]) == (2, 0.126, None)
    assert stats.double_charged() == []


# -- success: the image and its headers ------------------------------------------------------


async def test_the_image_is_a_jpeg_at_resolution_times_scale(make_client: MakeClient) -> None:
    client = await make_client(image_scale=1 / 8)
    status, data, headers = await post(client, body_with(resolution="RESOLUTION_1280_720"))
    assert status == 200
    assert headers["Content-Type"] == "image/jpeg"
    assert data[:3] == b"\xff\xd8\xff"
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == ("JPEG", (160, 90))


async def test_png_output_when_configured(make_client: MakeClient) -> None:
    client = await make_client(output_format="png")
    status, data, headers = await post(client)
    assert (status, headers["Content-Type"], api.sniff_image(data)) == (200, "image/png", "png")
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == scaled_size("RESOLUTION_1024_1024", 1 / 16) == (64, 64)


async def test_success_headers(make_client: MakeClient) -> None:
    client = await make_client()
    _, _, first = await post(client)
    _, _, second = await post(client)
    assert first["x-cost"] == "0.063"
    assert first["x-seed-value"] == "4242"
    assert float(first["x-generation-time"]) >= 0
    assert uuid.UUID(first["x-request-id"]) != uuid.UUID(second["x-request-id"])
    assert "x-remaining-credits" not in first  # unlimited credits


async def test_same_request_same_bytes_even_on_a_fresh_emulator(make_client: MakeClient) -> None:
    one, other = await make_client(), await make_client()
    first, again, elsewhere = await post(one), await post(one), await post(other)
    assert first[1] == again[1] == elsewhere[1]


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 4243},
        {"prompt": "a lighthouse at dawn"},
        {"negative_prompt": "fog"},
        {"style_type": "ANIME"},
        {"magic_prompt_option": "OFF"},
        {"image_weight": 90},
        {"color_palette": {"name": "ULTRAMARINE"}},
        {"color_palette": {"members": [{"color_hex": "#00ff00"}]}},
        {"image_file": "https://example.com/other.jpg"},
    ],
    ids=lambda change: "-".join(change),
)
async def test_any_input_change_changes_the_image(
    make_client: MakeClient, change: dict[str, Any]
) -> None:
    client = await make_client()
    base, changed = await post(client), await post(client, body_with(**change))
    assert (base[0], changed[0]) == (200, 200)
    assert base[1] != changed[1]


async def test_without_a_seed_one_is_picked_deterministically(make_client: MakeClient) -> None:
    client = await make_client()
    body = {"image_file": URL, "prompt": "no seed given"}
    (_, first, headers), (_, again, headers_again) = (
        await post(client, body),
        await post(client, body),
    )
    seed = int(headers["x-seed-value"])
    assert api.SEED_RANGE[0] <= seed <= api.SEED_RANGE[1]
    assert (headers_again["x-seed-value"], again) == (str(seed), first)
    explicit = await post(client, {**body, "seed": seed})
    assert explicit[1] == first  # the picked seed reproduces the picture


async def test_an_input_image_is_used(make_client: MakeClient) -> None:
    client = await make_client(image_scale=1 / 4)
    pictures = []
    for colour in ((250, 0, 0), (0, 0, 250)):
        out = io.BytesIO()
        Image.new("RGB", (300, 200), colour).save(out, "PNG")
        image_file = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
        status, data, _ = await post(client, body_with(image_file=image_file, image_weight=100))
        assert status == 200
        with Image.open(io.BytesIO(data)) as image:
            pictures.append(image.convert("RGB").getpixel((2, 2)))
    (red, _, blue_of_red), (red_of_blue, _, blue) = pictures
    assert red > blue_of_red and blue > red_of_blue  # the corner keeps the input's colour


# -- faults: scripted, drawn, billed 504s ----------------------------------------------------


async def test_scripted_statuses_are_served_in_order(make_client: MakeClient) -> None:
    client = await make_client(script=[502, 504, 200], billed_504_share=0.0)
    statuses = [(await post(client))[0] for _ in range(4)]
    assert statuses == [502, 504, 200, 200]
    assert client.app is not None
    stats = client.app[STATS]
    assert (stats.billed_total, stats.charges) == (2, {fingerprint(BODY): 2})


async def test_a_billed_504_is_charged_and_a_retry_pays_twice(make_client: MakeClient) -> None:
    client = await make_client(fault_504=1.0, billed_504_share=1.0)
    status, data, _ = await post(client)
    assert (status, error_of(data)) == (504, "Gateway timeout")
    assert client.app is not None
    stats = client.app[STATS]
    assert stats.charges == {fingerprint(BODY): 1}
    assert stats.double_charged() == []
    await post(client)
    assert stats.double_charged() == [fingerprint(BODY)]
    assert (stats.billed_total, stats.by_status) == (2, {504: 2})


async def test_an_unbilled_504_costs_nothing(make_client: MakeClient) -> None:
    client = await make_client(fault_504=1.0, billed_504_share=0.0, credits=1.0)
    assert (await post(client))[0] == 504
    assert client.app is not None
    assert (client.app[STATS].billed_total, client.app[STATS].credits_left) == (0, 1.0)


async def test_drawn_faults_follow_the_seed(make_client: MakeClient) -> None:
    async def statuses(seed: int) -> list[int]:
        client = await make_client(fault_500=0.3, fault_502=0.3, seed=seed)
        return [(await post(client, body_with(seed=100 + i)))[0] for i in range(30)]

    first, again, other = await statuses(1), await statuses(1), await statuses(2)
    assert first == again != other
    assert set(first) == {200, 500, 502}


async def test_latency_is_drawn_around_the_mean(make_client: MakeClient) -> None:
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    client = await make_client(latency=2.0, latency_jitter=0.2, sleep=record)
    for seed in range(100, 120):
        await post(client, body_with(seed=seed))
    assert all(1.6 <= d <= 2.4 for d in delays) and len(set(delays)) == 20


# -- limits: rate and concurrency ------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "expected"), [(False, None), (True, "1")], ids=["segmind", "retry-after"]
)
async def test_rate_limit_is_a_token_bucket(
    make_client: MakeClient, retry_after: bool, expected: str | None
) -> None:
    clock = FakeClock()
    client = await make_client(
        rate_limit_rpm=60, rate_burst=2, retry_after=retry_after, clock=clock
    )
    assert [(await post(client))[0] for _ in range(2)] == [200, 200]  # the burst
    status, data, headers = await post(client)
    assert (status, error_of(data), headers.get("Retry-After")) == (
        429,
        "Rate limit exceeded",
        expected,
    )
    clock.now += 1.0  # one token back at 60 per minute
    assert [(await post(client))[0] for _ in range(2)] == [200, 429]


async def test_a_success_says_when_the_rate_limit_resets(make_client: MakeClient) -> None:
    clock = FakeClock()
    client = await make_client(rate_limit_rpm=60, rate_burst=2, clock=clock)
    waits = []
    for _ in range(2):
        status, _, headers = await post(client)
        assert status == 200
        waits.append(retry.parse_retry_after(dict(headers)))
    assert waits[0] == pytest.approx(1.0, abs=0.05)  # one token used, back in 1 s
    assert waits[1] == pytest.approx(2.0, abs=0.05)  # both used
    unlimited = await make_client()
    _, _, headers = await post(unlimited)
    assert "x-rate-limit-reset-at-utc" not in headers


async def test_retry_after_says_when_the_next_token_comes(make_client: MakeClient) -> None:
    clock = FakeClock()
    client = await make_client(rate_limit_rpm=6, rate_burst=1, retry_after=True, clock=clock)
    await post(client)
    clock.now += 2.5
    _, _, headers = await post(client)
    assert headers["Retry-After"] == "8"  # 10 s per token, 2.5 s already waited


async def test_over_the_in_flight_cap_is_429(make_client: MakeClient) -> None:
    held = HeldSleep(expected=2)
    client = await make_client(max_in_flight=2, latency=1.0, sleep=held)
    running = [asyncio.ensure_future(post(client, body_with(seed=s))) for s in (100, 101)]
    try:
        await asyncio.wait_for(held.all_waiting.wait(), 5)
        status, data, _ = await asyncio.wait_for(post(client, body_with(seed=102)), 5)
    finally:
        held.release.set()  # never leave requests parked, even when an assertion fails
        finished = await asyncio.gather(*running, return_exceptions=True)
    assert (status, error_of(data)) == (429, "Rate limit exceeded")
    assert [result[0] for result in finished if isinstance(result, tuple)] == [200, 200]
    assert (await post(client, body_with(seed=103)))[0] == 200
    assert client.app is not None
    assert client.app[STATS].max_in_flight == 2


# -- runtime script --------------------------------------------------------------------------


async def test_script_can_be_set_at_runtime(make_client: MakeClient) -> None:
    client = await make_client()
    async with client.post("/_script", json=[500, 429]) as response:
        assert (response.status, await response.json()) == (200, {"script": [500, 429]})
    assert [(await post(client))[0] for _ in range(3)] == [500, 429, 200]


@pytest.mark.parametrize("script", [{"a": 1}, [302], ["502"], [True], "500"])
async def test_a_bad_script_is_400(make_client: MakeClient, script: object) -> None:
    client = await make_client()
    async with client.post("/_script", json=script) as response:
        assert response.status == 400
    assert (await post(client))[0] == 200


def test_config_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError, match="add up to at most 1"):
        EmulatorConfig(fault_500=0.6, fault_502=0.6)
    with pytest.raises(ValueError, match="output_format"):
        EmulatorConfig(output_format="gif")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="script statuses"):
        EmulatorConfig(script=[302])


# -- load ------------------------------------------------------------------------------------


async def test_2000_requests_at_200_concurrent() -> None:
    app = make_app(EmulatorConfig(image_scale=1 / 64))
    connector = aiohttp.TCPConnector(limit=200)
    async with TestServer(app) as server, aiohttp.ClientSession(connector=connector) as session:
        url = str(server.make_url(PATH))

        async def worker(number: int) -> list[int]:
            statuses = []
            for i in range(10):
                body = body_with(seed=100 + (number * 10 + i) % 250)
                async with session.post(url, json=body, headers=HEADERS) as response:
                    await response.read()
                    statuses.append(response.status)
            return statuses

        results = await asyncio.gather(*(worker(n) for n in range(200)))
    stats = app[STATS]
    assert Counter(s for statuses in results for s in statuses) == {200: 2000}
    assert (stats.requests_total, stats.billed_total, len(stats.charges)) == (2000, 2000, 250)
    assert stats.in_flight == 0 and 1 <= stats.max_in_flight <= 200


# -- faithfulness: the vendor's sample and SDK, over real loopback sockets ---------------------


@contextlib.contextmanager
def served_in_thread(config: EmulatorConfig) -> Iterator[RunningEmulator]:
    """The emulator on a loopback port, its event loop in a thread, for blocking clients."""
    started: queue.Queue[tuple[RunningEmulator, asyncio.AbstractEventLoop, asyncio.Event]]
    started = queue.Queue()

    async def serve() -> None:
        stop = asyncio.Event()
        async with running_emulator(config) as emulator:
            started.put((emulator, asyncio.get_running_loop(), stop))
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    emulator, loop, stop = started.get(timeout=10)
    try:
        yield emulator
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def test_the_vendor_sample_gets_an_image() -> None:
    with served_in_thread(EmulatorConfig()) as emulator:
        assert emulator.url.startswith("http://127.0.0.1:") and emulator.url.endswith("/v1")
        url = f"{emulator.url}/ideogram-turbo-img-2-img"
        headers = {"x-api-key": DEMO_KEY, "Content-Type": "application/json"}
        data = VENDOR_DATA
        response = requests.post(url, headers=headers, json=data)
        stats = emulator.stats.as_json()
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    with Image.open(io.BytesIO(response.content)) as image:
        assert (image.format, image.size) == ("JPEG", (1024, 1024))  # full size by default
    with pytest.raises(ValueError):
        response.json()  # the sample's `.json()` is a template bug: the body is the image
    assert stats["charges"] == {fingerprint(VENDOR_DATA): 1}


def test_the_segmind_sdk_run_sync_against_the_emulator() -> None:
    segmind = pytest.importorskip("segmind")
    with served_in_thread(EmulatorConfig(image_scale=1 / 16)) as emulator:
        sdk = segmind.SegmindClient(api_key=DEMO_KEY, base_url=emulator.url)
        bad = segmind.SegmindClient(api_key="wrong", base_url=emulator.url)
        try:
            response = sdk.run_sync(api.MODEL, **VENDOR_DATA)
            with pytest.raises(segmind.SegmindError) as refused:
                bad.run_sync(api.MODEL, **VENDOR_DATA)
        finally:
            sdk._client.close()  # SegmindClient has no close(); its httpx.Client does
            bad._client.close()
    assert response.status_code == 200
    assert api.sniff_image(response.content) == "jpeg"
    assert response.headers["x-seed-value"] == "965220"
    assert (refused.value.status, refused.value.detail) == (
        401,
        "Unauthorized: missing or invalid x-api-key",
    )


def test_the_segmind_sdk_v2_upload_and_history_against_the_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's own v2 loop (submit, poll, result), its upload and its history calls."""
    segmind = pytest.importorskip("segmind")
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (250, 10, 10)).save(photo)
    with served_in_thread(EmulatorConfig(image_scale=1 / 16, credits=1.0)) as emulator:
        # `segmind.files` is a namespace object; the modules hold the hard-coded hosts
        files, generations = (
            importlib.import_module(f"segmind.{m}") for m in ("files", "generations")
        )
        monkeypatch.setattr(files.Files, "STORAGE_BASE_URL", emulator.storage_base)
        history_url = f"{emulator.history_base}/inference-request/request-history"
        monkeypatch.setattr(generations, "REQUEST_HISTORY_URL", history_url)
        sdk = segmind.SegmindClient(api_key=DEMO_KEY, base_url=emulator.url)
        try:
            (asset,) = sdk.files.upload(photo)["file_urls"]
            result = sdk.run(api.MODEL, **{**VENDOR_DATA, "image_file": asset})
            rows = sdk.generations.history(model_name=api.MODEL, status="COMPLETED")["data"]
            row = sdk.generations.get(result["request_id"])
            image = requests.get(result["output"]).content  # no key: a public URL
        finally:
            sdk._client.close()
        stats = emulator.stats
    assert result["status"] == "COMPLETED" and result["metrics"]["cost"] == 0.063
    assert api.sniff_image(image) == "jpeg"
    assert [r["request_id"] for r in rows] == [result["request_id"]]
    assert row["request_body"]["image_file"] == asset and row["generation_url"] == result["output"]
    assert (stats.billed_total, stats.uploads, stats.v2_completed) == (1, 1, 1)


# -- command line ----------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_options_become_a_config() -> None:
    args = parse(
        "--key", "k", "--latency", "2", "--rpm", "5", "--burst", "1", "--retry-after",
        "--max-in-flight", "10", "--fail-500", "0.1", "--fail-502", "0.2", "--fail-504", "0.3",
        "--credits", "1.5", "--script", "502,504,200", "--seed", "7", "--image-scale", "0.25",
        "--format", "png", "--no-fault-request-id", "--v2-submit-504-share", "0.25",
        "--v2-fail", "0.1", "--record-ttl", "60", "--output-ttl", "120", "--history-lag", "30",
    )  # fmt: skip
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    expected = EmulatorConfig(
        api_key="k", latency=2.0, rate_limit_rpm=5.0, rate_burst=1, retry_after=True,
        max_in_flight=10, fault_500=0.1, fault_502=0.2, fault_504=0.3, credits=1.5,
        script=(502, 504, 200), seed=7, image_scale=0.25, output_format="png",
        fault_request_id=False, v2_submit_504_share=0.25, v2_fail=0.1, record_ttl=60.0,
        output_ttl=120.0, history_lag=30.0,
    )  # fmt: skip
    assert config_from_args(args) == expected
    assert config_from_args(parse()) == EmulatorConfig()


@pytest.mark.parametrize(
    "argv",
    [
        ["--script", "502,abc"],
        ["--script", "302"],
        ["--fail-500", "1.5"],
        ["--image-scale", "0"],
        ["--rpm", "0"],
        ["--format", "gif"],
        ["--v2-fail", "2"],
        ["--v2-submit-504-share", "-0.1"],
        ["--record-ttl", "0"],
        ["--history-lag", "-1"],
    ],
)
def test_bad_options_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_the_help_shows_the_new_faults_and_their_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse("--help")
    shown = " ".join(capsys.readouterr().out.split())
    for fragment in (
        "--v2-submit-504-share", "--v2-fail", "--record-ttl", "(default 3600.0)",
        "--history-lag", "--no-fault-request-id", "--output-ttl",
    ):  # fmt: skip
        assert fragment in shown


def test_run_from_args_reports_inconsistent_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_from_args(parse("--fail-500", "0.7", "--fail-502", "0.7")) == 2
    assert "add up to at most 1" in capsys.readouterr().err


def test_run_from_args_reports_a_taken_port(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_from_args(parse("--port", str(port))) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def read_lines(process: subprocess.Popen[bytes], count: int, timeout: float) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    while len(lines) < count:
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        assert ready, f"no output within {timeout} s; got {lines}"
        line = process.stdout.readline().decode()
        assert line, f"the emulator exited early; got {lines}"
        lines.append(line)
    return lines


@pytest.mark.slow
def test_the_command_serves_until_sigterm() -> None:
    argv = [sys.executable, "-m", "batchgen.emulator", "--port", "0", "--script", "502"]
    process = subprocess.Popen(
        [*argv, "--image-scale", "0.03125"],
        cwd=ROOT,
        bufsize=0,  # unbuffered: select() must see every line that readline() has not consumed
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lines = read_lines(process, 6, timeout=20)
        exports = dict(line.removeprefix("export ").strip().split("=", 1) for line in lines[1:5])
        base, key = exports["SEGMIND_API_BASE"], exports["SEGMIND_API_KEY"]
        assert base.startswith("http://127.0.0.1:") and key == DEMO_KEY
        root = base.removesuffix("/v1")
        assert exports["SEGMIND_HISTORY_BASE"] == exports["SEGMIND_STORAGE_BASE"] == root
        assert lines[5] == "\n"
        statuses = [
            requests.post(f"{base}/{api.MODEL}", json=BODY, headers={"x-api-key": key}).status_code
            for _ in range(2)
        ]
        assert statuses == [502, 200]
        stats = requests.get(base.removesuffix("/v1") + "/_stats").json()
        assert stats["by_status"] == {"200": 1, "502": 1}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
