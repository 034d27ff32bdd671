"""The emulator's other surfaces (shared/api/segmind-surfaces.md): the v2 queue, the request
history, asset storage and public outputs, the credit balance, and their faults.

Time never really passes: the wall clock is a number the test moves, and the simulated latency
is a sleep that parks until the test lets it go.
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import pytest
from PIL import Image
from yarl import URL

from batchgen import api
from batchgen.emulator import DEMO_KEY, STATE, STATS, fingerprint
from batchgen.emulator.pictures import RenderCache
from tests.helpers import Client, MakeClient

V1 = f"/v1/{api.MODEL}"
V2 = f"/v2/{api.MODEL}"
HISTORY = "/inference-request/request-history"
HEADERS = {"x-api-key": DEMO_KEY}
BODY: dict[str, Any] = {"image_file": "https://example.com/in.jpg", "prompt": "a fox", "seed": 4242}
DAY = 86400.0
START = 1_750_000_000.0  # 2025-06-15T15:06:40Z


class WallClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class Gate:
    """A `sleep` seam: every simulated latency waits until the test opens the gate."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.opened = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await self.opened.wait()


def body_with(**changes: Any) -> dict[str, Any]:
    return {**BODY, **changes}


def path_of(url: str) -> str:
    """The path of a URL the emulator built (on the test server's own host)."""
    return URL(url).path


def png_data_url(colour: tuple[int, int, int] = (250, 10, 10)) -> tuple[str, bytes]:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(out, "PNG")
    data = out.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode(), data


async def get(
    client: Client, path: str, headers: dict[str, str] | None = HEADERS, **params: Any
) -> tuple[int, Any]:
    async with client.get(path, headers=headers or {}, params=params) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.read()


async def submit(client: Client, body: object = BODY) -> tuple[int, Any]:
    async with client.post(V2, json=body, headers=HEADERS) as response:
        return response.status, await response.json()


async def settle(client: Client) -> None:
    """Let every queued v2 request run to its end."""
    assert client.app is not None
    for _ in range(100):
        tasks = list(client.app[STATE].tasks)
        if not tasks:
            return
        await asyncio.gather(*tasks)
    raise AssertionError("background work never settled")


async def spin() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def stats_of(client: Client) -> Any:
    assert client.app is not None
    return client.app[STATS]


async def history(client: Client, **params: Any) -> list[dict[str, Any]]:
    status, answer = await get(client, HISTORY, **params)
    assert status == 200, answer
    rows: list[dict[str, Any]] = answer["data"]
    return rows


# -- v2: submit, poll, fetch -----------------------------------------------------------------


async def test_v2_lifecycle_queued_processing_completed(make_client: MakeClient) -> None:
    clock, gate = WallClock(), Gate()
    client = await make_client(
        latency=11.0, latency_jitter=0.0, max_in_flight=1, credits=1.0, wall_clock=clock, sleep=gate
    )
    (status_a, first), (status_b, second) = (
        await submit(client),
        await submit(client, body_with(seed=4243)),
    )
    assert (status_a, status_b) == (200, 200)
    root = str(client.make_url("/")).rstrip("/")
    for answer in (first, second):
        request_id = answer["request_id"]
        assert answer["status"] == "QUEUED"
        assert (
            answer["status_url"] == answer["poll_url"] == f"{root}/v2/requests/{request_id}/status"
        )
        assert answer["response_url"] == f"{root}/v2/requests/{request_id}"
    await spin()
    states = [(await get(client, path_of(a["status_url"])))[1]["status"] for a in (first, second)]
    assert states == ["PROCESSING", "QUEUED"]  # one slot: the second waits instead of a 429
    assert (await get(client, path_of(second["response_url"]))) == (
        200,
        {"request_id": second["request_id"], "status": "QUEUED"},
    )  # before it completes, the result URL answers as the status URL
    assert stats_of(client).billed_total == 0  # nothing is billed before it completes
    clock.now += 11.0
    gate.opened.set()
    await settle(client)
    status, result = await get(client, path_of(first["response_url"]))
    assert status == 200
    assert result["status"] == "COMPLETED" and result["seed"] == 4242
    assert result["output"] == result["images"][0]
    assert result["output"] == f"{root}/outputs/{first['request_id']}.jpg"
    metrics = result["metrics"]
    assert (metrics["cost"], metrics["total_time"], metrics["queue_time"]) == (0.063, 11.0, 0.0)
    assert metrics["remaining_credits"] in (0.937, 0.874)
    _, later = await get(client, path_of(second["response_url"]))
    assert later["metrics"]["queue_time"] == 11.0  # it waited for the first one's slot
    stats = stats_of(client)
    assert stats.charges == {fingerprint(BODY): 1, fingerprint(body_with(seed=4243)): 1}
    assert (stats.v2_completed, stats.max_in_flight, stats.in_flight) == (2, 1, 0)
    assert gate.delays == [11.0, 11.0]


async def test_v2_output_is_the_same_image_v1_answers(make_client: MakeClient) -> None:
    client = await make_client()
    _, answer = await submit(client)
    await settle(client)
    _, result = await get(client, path_of(answer["response_url"]))
    status, image = await get(client, path_of(result["output"]), headers=None)  # no key
    async with client.post(V1, json=BODY, headers=HEADERS) as response:
        v1_image = await response.read()
    assert status == 200 and image == v1_image


async def test_v2_submit_applies_the_v1_rules(make_client: MakeClient) -> None:
    client = await make_client(credits=0.07)
    async with client.post(V2, json=body_with(seed=5), headers=HEADERS) as response:
        assert response.status == 400
        assert "seed 5 is out of range" in (await response.json())["error"]
    async with client.post(V2, json=BODY) as response:
        assert response.status == 401
    async with client.post("/v2/ideogram-turbo", json=BODY, headers=HEADERS) as response:
        assert response.status == 404
    async with client.post(V2, data=b"{}", headers=HEADERS) as response:
        assert (response.status, await response.json()) == (406, {"error": "Invalid content type"})
    assert (await submit(client))[0] == 200  # reserves the only image's worth of credits
    assert await submit(client, body_with(seed=4243)) == (406, {"error": "Insufficient credits"})
    await settle(client)
    assert stats_of(client).v2_by_status == {200: 1, 400: 1, 401: 1, 404: 1, 406: 2}


async def test_v2_submissions_take_rate_limit_tokens_and_polls_do_not(
    make_client: MakeClient,
) -> None:
    client = await make_client(rate_limit_rpm=60, rate_burst=1, clock=lambda: 0.0)
    status, answer = await submit(client)
    assert status == 200
    for _ in range(5):
        assert (await get(client, path_of(answer["status_url"])))[0] == 200
    assert (await submit(client, body_with(seed=4243)))[0] == 429
    assert stats_of(client).polls == 5


async def test_a_v1_request_is_refused_while_v2_requests_hold_the_slots(
    make_client: MakeClient,
) -> None:
    gate = Gate()
    client = await make_client(latency=1.0, max_in_flight=1, sleep=gate)
    await submit(client)
    await spin()
    async with client.post(V1, json=body_with(seed=4243), headers=HEADERS) as response:
        assert response.status == 429
    gate.opened.set()
    await settle(client)
    async with client.post(V1, json=body_with(seed=4243), headers=HEADERS) as response:
        assert response.status == 200


async def test_a_failed_v2_request_is_422_and_not_billed(make_client: MakeClient) -> None:
    client = await make_client(v2_fail=1.0, credits=1.0)
    _, answer = await submit(client)
    await settle(client)
    for url in (answer["status_url"], answer["response_url"]):
        status, failed = await get(client, path_of(url))
        assert status == 422
        assert failed["request_id"] == answer["request_id"] and failed["status"] == "FAILED"
        assert failed["error"]
    stats = stats_of(client)
    assert (stats.billed_total, stats.v2_failed, stats.balance, stats.credits_left) == (
        0,
        1,
        1.0,
        1.0,
    )
    (row,) = await history(client)
    assert (row["model_status"], row["credits_deduction"], row["generation_url"]) == (
        "FAILED",
        0,
        None,
    )
    assert row["error"] == failed["error"]
    status, _ = await get(client, f"/outputs/{answer['request_id']}.jpg", headers=None)
    assert status == 404


async def test_records_expire_after_the_ttl_but_the_history_keeps_them(
    make_client: MakeClient,
) -> None:
    clock = WallClock()
    client = await make_client(wall_clock=clock, record_ttl=3600)
    _, answer = await submit(client)
    await settle(client)
    clock.now += 3599
    assert (await get(client, path_of(answer["status_url"])))[0] == 200
    clock.now += 1
    for url in (answer["status_url"], answer["response_url"]):
        assert (await get(client, path_of(url)))[0] == 404
    assert (await get(client, "/v2/requests/no-such-id/status"))[0] == 404
    status, row = await get(client, f"{HISTORY}/{answer['request_id']}")
    assert (status, row["model_status"]) == (200, "COMPLETED")
    assert (await get(client, path_of(row["generation_url"]), headers=None))[0] == 200


async def test_polls_need_the_key(make_client: MakeClient) -> None:
    client = await make_client()
    _, answer = await submit(client)
    assert (await get(client, path_of(answer["status_url"]), headers={}))[0] == 401
    assert (await get(client, path_of(answer["response_url"]), headers={}))[0] == 401


async def test_a_submit_504_after_queueing_still_completes_and_bills_once(
    make_client: MakeClient,
) -> None:
    client = await make_client(v2_submit_504_share=1.0, credits=1.0)
    status, answer = await submit(client)
    assert (status, answer) == (504, {"error": "Gateway timeout"})  # no request id for the client
    await settle(client)
    (row,) = await history(client, status="COMPLETED")
    assert row["request_body"] == BODY and row["credits_deduction"] == 0.063
    assert stats_of(client).charges == {fingerprint(BODY): 1}
    status, image = await get(client, path_of(row["generation_url"]), headers=None)
    assert status == 200 and api.sniff_image(image) == "jpeg"


async def test_scripted_submissions(make_client: MakeClient) -> None:
    client = await make_client(script=[502, 504, 429, 200])
    assert (await submit(client))[0] == 502  # refused: not queued
    assert (await submit(client))[0] == 504  # queued, the answer lost
    assert (await submit(client))[0] == 429
    assert (await submit(client))[0] == 200
    await settle(client)
    rows = await history(client)
    assert [row["model_status"] for row in rows] == ["COMPLETED", "COMPLETED"]
    assert stats_of(client).charges == {fingerprint(BODY): 2}  # the client resubmitted: its loss


# -- v1 and the history: request ids, billed and unbilled faults -------------------------------


async def test_a_v1_success_names_its_history_row(make_client: MakeClient) -> None:
    clock = WallClock()
    client = await make_client(wall_clock=clock)
    async with client.post(V1, json=BODY, headers=HEADERS) as response:
        request_id = response.headers["x-request-id"]
        image = await response.read()
    status, row = await get(client, f"{HISTORY}/{request_id}")
    assert status == 200
    assert row == {
        "request_id": request_id,
        "model_name": api.MODEL,
        "model_status": "COMPLETED",
        "credits_deduction": 0.063,
        "request_body": BODY,
        "generation_url": f"{str(client.make_url('/')).rstrip('/')}/outputs/{request_id}.jpg",
        "latency_ms": 0,
        "created_at": "2025-06-15T15:06:40.000Z",
    }
    assert (await get(client, path_of(row["generation_url"]), headers=None)) == (200, image)


async def test_a_billed_504_leaves_a_completed_row_and_the_image(make_client: MakeClient) -> None:
    client = await make_client(fault_504=1.0, billed_504_share=1.0, credits=1.0)
    async with client.post(V1, json=BODY, headers=HEADERS) as response:
        assert response.status == 504
        request_id = response.headers["x-request-id"]
    (row,) = await history(client)
    assert (row["request_id"], row["model_status"], row["credits_deduction"]) == (
        request_id,
        "COMPLETED",
        0.063,
    )
    status, image = await get(client, path_of(row["generation_url"]), headers=None)
    fresh = await make_client()
    async with fresh.post(V1, json=BODY, headers=HEADERS) as response:
        success = await response.read()
    assert status == 200 and image == success  # exactly what a success would have answered
    assert (await get(client, "/v1/get-user-credits"))[1]["credits"] == 0.937


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_an_unbilled_fault_leaves_a_failed_row(make_client: MakeClient, status: int) -> None:
    client = await make_client(script=[status], billed_504_share=0.0)
    async with client.post(V1, json=BODY, headers=HEADERS) as response:
        assert response.status == status
        request_id = response.headers["x-request-id"]
    (row,) = await history(client)
    assert (row["request_id"], row["model_status"], row["credits_deduction"]) == (
        request_id,
        "FAILED",
        0,
    )
    assert row["error"] and row["generation_url"] is None
    assert (await get(client, f"/outputs/{request_id}.jpg", headers=None))[0] == 404
    assert await history(client, status="COMPLETED") == []


async def test_faults_can_hide_the_request_id(make_client: MakeClient) -> None:
    client = await make_client(script=[504, 502], billed_504_share=1.0, fault_request_id=False)
    for expected in (504, 502):
        async with client.post(V1, json=BODY, headers=HEADERS) as response:
            assert response.status == expected
            assert "x-request-id" not in response.headers
    assert [row["model_status"] for row in await history(client)] == ["FAILED", "COMPLETED"]


async def test_gateway_refusals_leave_no_row(make_client: MakeClient) -> None:
    client = await make_client(script=[429])
    for body, headers in ((BODY, {}), (body_with(seed=5), HEADERS), (BODY, HEADERS)):
        async with client.post(V1, json=body, headers=headers) as response:
            assert response.status in (401, 400, 429)
    assert await history(client) == []


# -- the history: paging, filters, window, lag, key ------------------------------------------


async def test_history_pages_newest_first(make_client: MakeClient) -> None:
    clock = WallClock()
    client = await make_client(wall_clock=clock)
    ids = []
    for seed in range(100, 105):
        clock.now += 60
        async with client.post(V1, json=body_with(seed=seed), headers=HEADERS) as response:
            ids.append(response.headers["x-request-id"])
    status, answer = await get(client, HISTORY, per_page=2)
    assert status == 200
    assert (answer["page"], answer["per_page"], answer["total"]) == (1, 2, 5)
    pages = [await history(client, per_page=2, page=page) for page in (1, 2, 3, 4)]
    assert [[row["request_id"] for row in rows] for rows in pages] == [
        ids[4:2:-1],
        ids[2:0:-1],
        ids[:1],
        [],
    ]
    oldest = await history(client, per_page=2, sort_order="asc")
    assert [row["request_id"] for row in oldest] == ids[:2]
    assert len(await history(client)) == 5  # 20 a page by default


async def test_history_filters(make_client: MakeClient) -> None:
    clock = WallClock()
    client = await make_client(
        wall_clock=clock, script=[200, 502], models=(api.MODEL, "other-model")
    )
    async with client.post(V1, json=BODY, headers=HEADERS):
        pass
    async with client.post(V1, json=body_with(seed=4243), headers=HEADERS):
        pass
    async with client.post("/v1/other-model", json=BODY, headers=HEADERS):
        pass
    assert [r["model_status"] for r in await history(client, status="FAILED")] == ["FAILED"]
    assert len(await history(client, status="COMPLETED")) == 2
    assert await history(client, status="PENDING") == []
    assert len(await history(client, model_name="ideogram")) == 2  # a substring
    assert [r["model_name"] for r in await history(client, model_name="other")] == ["other-model"]


async def test_history_date_window(make_client: MakeClient) -> None:
    clock = WallClock()
    client = await make_client(wall_clock=clock)
    for seed in (100, 101):  # one on 2025-06-15, one ten days later
        async with client.post(V1, json=body_with(seed=seed), headers=HEADERS):
            pass
        clock.now += 10 * DAY
    clock.now -= 10 * DAY  # now 2025-06-25
    assert [r["request_body"]["seed"] for r in await history(client)] == [101]  # last 7 days
    both = await history(client, from_date="2025-06-01")
    assert [r["request_body"]["seed"] for r in both] == [101, 100]
    first = await history(client, from_date="2025-06-15", to_date="2025-06-15")
    assert [r["request_body"]["seed"] for r in first] == [100]
    assert [r["created_at"][:10] for r in both] == ["2025-06-25", "2025-06-15"]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"per_page": 0}, "per_page"),
        ({"per_page": 101}, "per_page"),
        ({"per_page": "x"}, "per_page"),
        ({"page": 0}, "page"),
        ({"from_date": "2025-05-01", "to_date": "2025-06-15"}, "31 days"),
        ({"from_date": "2025-06-16", "to_date": "2025-06-15"}, "after"),
        ({"from_date": "15/06/2025"}, "from_date"),
        ({"status": "DONE"}, "status"),
        ({"sort_order": "up"}, "sort_order"),
    ],
)
async def test_history_rejects_bad_parameters(
    make_client: MakeClient, params: dict[str, Any], fragment: str
) -> None:
    client = await make_client(wall_clock=WallClock())
    status, answer = await get(client, HISTORY, **params)
    assert status == 400 and fragment in answer["error"]


async def test_history_allows_a_31_day_window(make_client: MakeClient) -> None:
    client = await make_client(wall_clock=WallClock())
    assert (await get(client, HISTORY, from_date="2025-05-16", to_date="2025-06-15"))[0] == 200


async def test_history_rows_show_after_the_lag(make_client: MakeClient) -> None:
    clock = WallClock()
    client = await make_client(wall_clock=clock, history_lag=30.0, script=[502])
    async with client.post(V1, json=BODY, headers=HEADERS) as response:
        assert response.status == 502
    async with client.post(V1, json=BODY, headers=HEADERS) as response:
        request_id = response.headers["x-request-id"]
    assert await history(client) == []
    assert (await get(client, f"{HISTORY}/{request_id}"))[0] == 404
    clock.now += 29.9
    assert await history(client) == []
    clock.now += 0.1
    assert len(await history(client)) == 2
    assert (await get(client, f"{HISTORY}/{request_id}"))[0] == 200


async def test_history_shows_a_change_after_the_lag(make_client: MakeClient) -> None:
    clock, gate = WallClock(), Gate()
    client = await make_client(wall_clock=clock, history_lag=30.0, latency=11.0, sleep=gate)
    await submit(client)
    await spin()
    clock.now += 30
    assert [r["model_status"] for r in await history(client)] == ["PENDING"]
    gate.opened.set()
    await settle(client)  # completes at +30 s
    clock.now += 29
    (row,) = await history(client)
    assert (row["model_status"], row["latency_ms"], row["credits_deduction"]) == (
        "PENDING",
        None,
        0,
    )
    clock.now += 1
    (row,) = await history(client)
    assert (row["model_status"], row["latency_ms"]) == ("COMPLETED", 30000)


async def test_history_needs_the_key_and_outputs_and_assets_do_not(make_client: MakeClient) -> None:
    client = await make_client()
    data_url, data = png_data_url()
    async with client.post("/upload-asset", json={"data_urls": [data_url]}) as response:
        assert response.status == 401  # uploading needs it
    async with client.post("/upload-asset", json={"data_urls": [data_url]}, headers=HEADERS) as r:
        (asset_url,) = (await r.json())["file_urls"]
    async with client.post(V1, json=BODY, headers=HEADERS) as response:
        request_id = response.headers["x-request-id"]
    for headers in ({}, {"x-api-key": "wrong"}):
        assert (await get(client, HISTORY, headers=headers))[0] == 401
        assert (await get(client, f"{HISTORY}/{request_id}", headers=headers))[0] == 401
        assert (await get(client, "/v1/get-user-credits", headers=headers))[0] == 401
        assert (await get(client, f"/outputs/{request_id}.jpg", headers=headers))[0] == 200
        assert (await get(client, path_of(asset_url), headers=headers)) == (200, data)


# -- asset storage and outputs ---------------------------------------------------------------


async def test_an_uploaded_asset_is_a_valid_image_file(make_client: MakeClient) -> None:
    client = await make_client(credits=1.0)
    data_url, data = png_data_url()
    other_url, _ = png_data_url((10, 10, 250))
    urls = {"data_urls": [data_url, base64.b64encode(data).decode(), other_url]}
    async with client.post("/upload-asset", json=urls, headers=HEADERS) as response:
        assert response.status == 200
        first, same, other = (await response.json())["file_urls"]
    root = str(client.make_url("/")).rstrip("/")
    assert first == same != other and first.startswith(f"{root}/assets/") and first.endswith(".png")
    assert stats_of(client).billed_total == 0  # uploads are free
    by_url = body_with(image_file=first, image_weight=100)
    inline = body_with(image_file=data_url, image_weight=100)
    images = []
    for body in (by_url, inline):
        async with client.post(V1, json=body, headers=HEADERS) as response:
            assert response.status == 200
            images.append(await response.read())
    assert images[0] == images[1]  # drawn from the uploaded bytes, not a placeholder
    _, answer = await submit(client, body_with(image_file=other, image_weight=100))
    await settle(client)
    _, result = await get(client, path_of(answer["response_url"]))
    assert result["status"] == "COMPLETED"
    stats = stats_of(client)
    assert (stats.uploads, stats.assets_uploaded) == (1, 3)


async def test_an_unknown_asset_of_ours_is_400(make_client: MakeClient) -> None:
    client = await make_client()
    url = str(client.make_url(f"/assets/{'0' * 64}.png"))
    async with client.post(V1, json=body_with(image_file=url), headers=HEADERS) as response:
        assert response.status == 400
        assert "no such asset" in (await response.json())["error"]
    assert (await get(client, path_of(url), headers=None))[0] == 404


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"data_urls": []}, "data_urls"),
        ({"urls": ["x"]}, "data_urls"),
        ({"data_urls": ["https://example.com/a.png"]}, "data_urls[0] must be a data: URL"),
        ({"data_urls": [png_data_url()[0], 5]}, "data_urls[1] must be a string"),
        (
            {"data_urls": ["data:text/plain;base64," + base64.b64encode(b"hello").decode()]},
            "data_urls[0] must be a JPEG, PNG or WebP",
        ),
    ],
)
async def test_bad_uploads_are_400(
    make_client: MakeClient, payload: dict[str, Any], fragment: str
) -> None:
    client = await make_client()
    async with client.post("/upload-asset", json=payload, headers=HEADERS) as response:
        assert response.status == 400
        assert fragment in (await response.json())["error"]
    assert stats_of(client).assets_uploaded == 0


async def test_outputs_are_drawn_again_when_no_longer_cached(make_client: MakeClient) -> None:
    client = await make_client()
    assert client.app is not None
    client.app[STATE].cache = RenderCache(max_entries=1)
    answers = []
    for seed in (100, 101, 102):
        async with client.post(V1, json=body_with(seed=seed), headers=HEADERS) as response:
            answers.append((response.headers["x-request-id"], await response.read()))
    for request_id, image in answers:
        assert (await get(client, f"/outputs/{request_id}.jpg", headers=None)) == (200, image)
    assert stats_of(client).output_downloads == 3


async def test_outputs_404_when_unknown_misnamed_or_expired(make_client: MakeClient) -> None:
    clock = WallClock()
    client = await make_client(wall_clock=clock, output_ttl=7 * DAY)
    async with client.post(V1, json=BODY, headers=HEADERS) as response:
        request_id = response.headers["x-request-id"]
    assert (await get(client, f"/outputs/{request_id}.png", headers=None))[0] == 404
    assert (await get(client, "/outputs/nobody.jpg", headers=None))[0] == 404
    clock.now += 7 * DAY - 1
    assert (await get(client, f"/outputs/{request_id}.jpg", headers=None))[0] == 200
    clock.now += 1
    assert (await get(client, f"/outputs/{request_id}.jpg", headers=None))[0] == 404


async def test_png_outputs_are_named_png(make_client: MakeClient) -> None:
    client = await make_client(output_format="png")
    _, answer = await submit(client)
    await settle(client)
    _, result = await get(client, path_of(answer["response_url"]))
    assert result["output"].endswith(".png")
    status, image = await get(client, path_of(result["output"]), headers=None)
    assert status == 200 and api.sniff_image(image) == "png"


# -- credits and the counters ----------------------------------------------------------------


async def test_credits_go_down_with_each_charge(make_client: MakeClient) -> None:
    client = await make_client(credits=1.0)
    assert await get(client, "/v1/get-user-credits") == (200, {"credits": 1.0, "free-credits": 0})
    async with client.post(V1, json=BODY, headers=HEADERS):
        pass
    await submit(client, body_with(seed=4243))
    await settle(client)
    assert (await get(client, "/v1/get-user-credits"))[1]["credits"] == 0.874
    unlimited = await make_client()
    assert (await get(unlimited, "/v1/get-user-credits"))[1] == {"credits": None, "free-credits": 0}


async def test_stats_count_every_surface_apart(make_client: MakeClient) -> None:
    client = await make_client()
    data_url, _ = png_data_url()
    async with client.post("/upload-asset", json={"data_urls": [data_url]}, headers=HEADERS) as r:
        (asset_url,) = (await r.json())["file_urls"]
    await get(client, path_of(asset_url), headers=None)
    async with client.post(V1, json=BODY, headers=HEADERS) as response:
        request_id = response.headers["x-request-id"]
    _, answer = await submit(client, BODY)  # the same request again, through v2: charged again
    await settle(client)
    await get(client, path_of(answer["status_url"]))
    await get(client, path_of(answer["response_url"]))
    await get(client, HISTORY)
    await get(client, f"{HISTORY}/{request_id}")
    await get(client, f"/outputs/{request_id}.jpg", headers=None)
    await get(client, "/v1/get-user-credits")
    status, served = await get(client, "/_stats")
    assert status == 200 and served == stats_of(client).as_json()
    counted = {key: served[key] for key in (
        "requests_total", "v2_submits", "v2_completed", "polls", "history_calls", "uploads",
        "assets_uploaded", "asset_downloads", "output_downloads", "credit_checks", "billed_total",
    )}  # fmt: skip
    assert counted == {
        "requests_total": 1, "v2_submits": 1, "v2_completed": 1, "polls": 2, "history_calls": 2,
        "uploads": 1, "assets_uploaded": 1, "asset_downloads": 1, "output_downloads": 1,
        "credit_checks": 1, "billed_total": 2,
    }  # fmt: skip
    assert (served["by_status"], served["v2_by_status"]) == ({"200": 1}, {"200": 1})
    assert stats_of(client).double_charged() == [fingerprint(BODY)]  # across v1 and v2
