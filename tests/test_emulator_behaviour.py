"""The emulator behaves like the service around the body rules: keys, models, limits,
faults, billing, determinism; and real third-party clients accept it."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import requests
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from batchgen import api
from batchgen.emulator import DEMO_KEY, STATS, EmulatorConfig, make_app, running_emulator

PATH = f"/v1/{api.MODEL}"
HEADERS = {"x-api-key": DEMO_KEY}
Client = TestClient[Any, Any]


def body(**changes: Any) -> dict[str, Any]:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 90)).save(buffer, "JPEG")
    base = {"image_file": base64.b64encode(buffer.getvalue()).decode(), "prompt": "a fox",
            "seed": 4242, "resolution": "RESOLUTION_1024_640"}  # fmt: skip
    return {**base, **changes}


async def serve(**config: Any) -> Client:
    client = TestClient(TestServer(make_app(EmulatorConfig(**{"image_scale": 1 / 16, **config}))))
    await client.start_server()
    return client


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    test_client = await serve()
    yield test_client
    await test_client.close()


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-api-key": "wrong"}, {"Authorization": f"Bearer {DEMO_KEY}"}],
)
async def test_the_key_is_required_and_only_as_x_api_key(
    client: Client, headers: dict[str, str]
) -> None:
    response = await client.post(PATH, json=body(), headers=headers)
    assert response.status == 401
    assert "error" in await response.json()


async def test_unknown_model_content_type_and_method(client: Client) -> None:
    response = await client.post("/v1/no-such-model", json=body(), headers=HEADERS)
    assert response.status == 404 and "no-such-model" in (await response.json())["error"]
    response = await client.post(
        PATH, data=b"prompt=x", headers={**HEADERS, "Content-Type": "text/plain"}
    )
    assert response.status == 406 and (await response.json())["error"] == "Invalid content type"
    assert (await client.get(PATH, headers=HEADERS)).status == 405


async def test_success_is_a_real_image_with_the_contract_headers(client: Client) -> None:
    response = await client.post(PATH, json=body(), headers=HEADERS)
    assert response.status == 200 and response.content_type == "image/jpeg"
    data = await response.read()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (1024 // 16, 640 // 16)
    for header in ("x-cost", "x-request-id", "x-generation-time", "x-seed-value"):
        assert header in response.headers, header
    assert response.headers["x-seed-value"] == "4242"


async def test_same_request_same_bytes_other_seed_other_bytes(client: Client) -> None:
    first = await (await client.post(PATH, json=body(), headers=HEADERS)).read()
    again = await (await client.post(PATH, json=body(), headers=HEADERS)).read()
    other = await (await client.post(PATH, json=body(seed=4243), headers=HEADERS)).read()
    assert first == again and first != other


async def test_png_output_and_body_limit() -> None:
    client = await serve(output_format="png", max_body_bytes=2000)
    try:
        small = await client.post(
            PATH, json=body(image_file="https://example.com/a.jpg"), headers=HEADERS
        )
        assert small.status == 200 and (await small.read())[:8] == b"\x89PNG\r\n\x1a\n"
        big = await client.post(PATH, json=body(prompt="x" * 5000), headers=HEADERS)
        assert big.status == 413
    finally:
        await client.close()


async def test_credits_below_the_price_answer_406_and_only_200s_are_billed() -> None:
    client = await serve(credits=0.1, price=0.063)
    try:
        first = await client.post(PATH, json=body(), headers=HEADERS)
        assert first.status == 200 and float(first.headers["x-remaining-credits"]) == pytest.approx(
            0.037
        )
        second = await client.post(PATH, json=body(seed=999), headers=HEADERS)  # 0.037 < 0.063
        assert second.status == 406 and "Insufficient credits" in (await second.json())["error"]
        stats = client.app[STATS]
        assert stats.billed_total == 1 and stats.credits_left == pytest.approx(0.037)
    finally:
        await client.close()


async def test_scripted_faults_and_billed_gateway_timeouts() -> None:
    client = await serve(script=[502, 504, 200, 500], billed_504_share=1.0)
    try:
        statuses = [
            (await client.post(PATH, json=body(), headers=HEADERS)).status for _ in range(5)
        ]
        assert statuses == [502, 504, 200, 500, 200]
        stats = await (await client.get("/_stats")).json()
        assert stats["by_status"] == {"200": 2, "500": 1, "502": 1, "504": 1}
        assert stats["billed_total"] == 3  # the 504 was answered after the work was billed
        assert list(stats["charges"].values()) == [3]  # the same request, charged three times
        assert client.app[STATS].double_charged()
        reply = await client.post("/_script", json=[429, 503])
        assert reply.status == 200
        assert [
            (await client.post(PATH, json=body(), headers=HEADERS)).status for _ in range(3)
        ] == [429, 503, 200]
    finally:
        await client.close()


async def test_rate_limit_with_and_without_retry_after() -> None:
    for retry_after in (False, True):
        client = await serve(rate_limit_rpm=60, rate_burst=2, retry_after=retry_after)
        try:
            answers = [
                await client.post(PATH, json=body(seed=100 + i), headers=HEADERS) for i in range(4)
            ]
            assert [a.status for a in answers] == [200, 200, 429, 429]
            assert ("Retry-After" in answers[2].headers) is retry_after
        finally:
            await client.close()


async def test_in_flight_cap_answers_429() -> None:
    client = await serve(max_in_flight=2, latency=0.3, latency_jitter=0.0)
    try:
        answers = await asyncio.gather(
            *(client.post(PATH, json=body(seed=100 + i), headers=HEADERS) for i in range(5))
        )
        assert sorted(a.status for a in answers) == [200, 200, 429, 429, 429]
        assert client.app[STATS].max_in_flight == 2
    finally:
        await client.close()


async def test_two_thousand_requests_at_two_hundred_concurrent() -> None:
    client = await serve(image_scale=1 / 64)
    semaphore = asyncio.Semaphore(200)

    async def one(i: int) -> int:
        async with semaphore:
            response = await client.post(PATH, json=body(seed=100 + i % 500), headers=HEADERS)
            await response.read()
            return response.status

    try:
        statuses = await asyncio.gather(*(one(i) for i in range(2000)))
        assert statuses.count(200) == 2000
        assert client.app[STATS].requests_total == 2000
    finally:
        await client.close()


@pytest.fixture
def threaded_emulator() -> Iterator[str]:
    """The emulator on a loopback port in a thread, for synchronous third-party clients."""
    ready = threading.Event()
    url: list[str] = []
    stop: list[asyncio.Event] = []

    async def main() -> None:
        stop.append(asyncio.Event())
        async with running_emulator(EmulatorConfig(image_scale=1 / 16)) as served:
            url.append(served.url)
            ready.set()
            await stop[0].wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),))
    thread.start()
    assert ready.wait(30)
    yield url[0]
    loop.call_soon_threadsafe(stop[0].set)
    thread.join(30)
    loop.close()


def test_the_vendor_pages_own_requests_sample_gets_an_image(threaded_emulator: str) -> None:
    # The sample from shared/api/segmind-model-page.txt, pointed at the emulator
    # (its `.json()` on success is a template bug: the answer is the image itself).
    url = f"{threaded_emulator}/ideogram-turbo-img-2-img"
    headers = {"x-api-key": DEMO_KEY, "Content-Type": "application/json"}
    data = {
        "prompt": "A panda playing football, caricature style",
        "image_file": "https://segmind-resources.s3.amazonaws.com/input/a30b306b-6683-49ae-82c0-a1f18242660c-turbo-i2i-ip.jpg",
        "magic_prompt_option": "AUTO",
        "seed": 965220,
        "style_type": "GENERAL",
        "resolution": "RESOLUTION_1024_1024",
        "image_weight": 50,
    }
    response = requests.post(url, headers=headers, json=data, timeout=30)
    assert response.status_code == 200
    assert api.sniff_image(response.content) == "jpeg"
    bad = requests.post(url, headers={**headers, "x-api-key": "nope"}, json=data, timeout=30)
    assert bad.status_code == 401 and "error" in bad.json()


def test_segminds_own_sdk_accepts_it(threaded_emulator: str) -> None:
    """PyPI's `segmind` SDK, its synchronous v1 call with base_url pointed at the emulator."""
    segmind = pytest.importorskip("segmind")
    client = segmind.SegmindClient(api_key=DEMO_KEY, base_url=threaded_emulator)
    refused = segmind.SegmindClient(api_key="wrong", base_url=threaded_emulator)
    try:
        response = client.run_sync(
            "ideogram-turbo-img-2-img",
            prompt="A panda playing football, caricature style",
            image_file="https://example.com/input.jpg",
            seed=965220,
            style_type="GENERAL",
            resolution="RESOLUTION_1024_1024",
        )
        assert response.status_code == 200 and api.sniff_image(response.content) == "jpeg"
        with pytest.raises(segmind.SegmindError):
            refused.run_sync(
                "ideogram-turbo-img-2-img", prompt="x", image_file="https://e.com/a.jpg"
            )
    finally:  # the SDK has no close(); its httpx client does
        client._client.close()
        refused._client.close()
