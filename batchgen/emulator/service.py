"""The v1 endpoint and the application that serves every surface on one port.

What a v1 request meets, in order:

    POST /v1/{model}
      401  x-api-key missing or wrong (a Bearer Authorization header is not accepted)
      404  model not in config.models
      429  token bucket empty (rate_limit_rpm, rate_burst) or max_in_flight reached
      406  Content-Type not JSON                 {"error": "Invalid content type"}
      413  body over max_body_bytes
      400  bad JSON, any rule of api.check_body, image_file not an image (or an unknown asset)
      406  balance below the price               {"error": "Insufficient credits"}
      ---  upstream: the next scripted status, else a seeded 500/502/504 fault draw
      5xx  after the simulated latency; a billed_504_share of 504s made the image and are billed
      200  the image (JPEG unless output_format="png"), billed (a fault_cut share of them cut
           off halfway, the connection dropped: billed all the same); headers x-cost, x-request-id,
           x-generation-time, x-seed-value, x-remaining-credits (when credits are set) and
           x-rate-limit-reset-at-utc (when rate-limited: when the bucket is full again)

Every request that reaches upstream leaves a history row (records.py) whose id is its answer's
`x-request-id`: COMPLETED for a 200 or a billed 504 (the work ran, only the answer was lost; its
image is at the row's generation_url), FAILED for any other answer.

The other surfaces, on the same application: v2.py (the queue), history.py, storage.py (uploads,
assets, outputs), and here the credit balance and the emulator's own controls:

    GET  /v1/get-user-credits   {"credits": balance, "free-credits": 0}
    GET  /_stats                EmulatorStats as JSON: who paid for what, and every call counted
    POST /_script               a JSON list of statuses, replacing what is left of the script
"""

from __future__ import annotations

import json
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from batchgen.emulator import history, storage, v2
from batchgen.emulator.accounting import fingerprint
from batchgen.emulator.config import MESSAGES, SCRIPTABLE, EmulatorConfig
from batchgen.emulator.gateway import admit, check_key, read_body
from batchgen.emulator.pictures import InvalidImage, seed_for
from batchgen.emulator.records import Record
from batchgen.emulator.state import CONFIG, STATE, STATS, Refusal, State

CREDITS_PATH: Final = "/v1/get-user-credits"
ROW_STATUSES: Final = frozenset({200, 400, 500, 502, 503, 504})  # answers the model gave


def make_app(config: EmulatorConfig) -> web.Application:
    """The emulator as an aiohttp application (serve it, or hand it to a TestServer)."""
    app = web.Application(middlewares=[_count_answers], client_max_size=config.max_body_bytes)
    state = State(config)
    app[CONFIG] = config
    app[STATS] = state.stats
    app[STATE] = state
    app.router.add_get(CREDITS_PATH, _get_credits)  # before /v1/{model}
    app.router.add_post("/v1/{model}", _generate)
    v2.add_routes(app.router)
    history.add_routes(app.router)
    storage.add_routes(app.router)
    app.router.add_get("/_stats", _get_stats)
    app.router.add_post("/_script", _set_script)
    app.on_shutdown.append(_stop_background_work)
    return app


async def _stop_background_work(app: web.Application) -> None:
    for task in list(app[STATE].tasks):
        task.cancel()


@web.middleware
async def _count_answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record the status of every v1 generation and v2 submission answer, aiohttp's 405s too."""
    path = request.path
    if path.startswith("/v1/") and path != CREDITS_PATH:
        count = request.app[STATS].record
    elif path.startswith("/v2/") and not path.startswith("/v2/requests/"):
        count = request.app[STATS].record_submit
    else:
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as err:
        count(err.status)
        raise  # aiohttp turns it into the answer; we only count it
    count(response.status)
    return response


async def _generate(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        model = admit(request, state)
        if not state.slots.try_take():
            raise state.throttled(1.0)
        try:
            body, source = await read_body(request, state)
            return await _run_upstream(request, state, model, body, source)
        finally:
            state.slots.give_back()
    except Refusal as refusal:
        return refusal.response()


async def _run_upstream(
    request: web.Request, state: State, model: str, body: dict[str, Any], source: bytes | str
) -> web.StreamResponse:
    """Credits, then the scripted or drawn outcome, then (when the model made the image) the
    picture and the bill; a billed 504 makes and bills the image and loses the answer."""
    stats, config = state.stats, state.config
    if not stats.can_afford():
        raise Refusal(406, MESSAGES[406])
    request_fp = fingerprint(body)
    upstream = state.draw_upstream()
    record = None
    if upstream.status in ROW_STATUSES:
        seed = seed_for(body, request_fp, config.seed)
        record = state.records.open(
            request_id=state.next_request_id(),
            api="v1",
            model=model,
            body=body,
            fingerprint=request_fp,
            seed=seed,
        )
    stats.reserved += 1  # held while running, so concurrent requests cannot overdraw
    try:
        if upstream.delay > 0:
            await config.sleep(upstream.delay)
        if record is None:
            raise state.throttled(1.0) if upstream.status == 429 else _refused(upstream.status)
        if upstream.status != 200 and not upstream.billed:
            record.fail(state.now(), MESSAGES[upstream.status])
            raise _refused(upstream.status, record if config.fault_request_id else None)
        started = time.perf_counter()
        try:
            image = await state.picture(record, source)
        except InvalidImage as err:
            record.fail(state.now(), str(err))
            raise Refusal(400, str(err)) from None
        elapsed = upstream.delay + time.perf_counter() - started
        stats.bill(request_fp)
    finally:
        stats.reserved -= 1
    record.complete(state.now(), config.price, stats.credits_left)
    if upstream.status == 504:
        raise _refused(504, record if config.fault_request_id else None)
    answer = _image_response(state, record, image, elapsed)
    if upstream.cut:
        stats.cut += 1
        return await _cut_off(request, answer)
    return answer


async def _cut_off(request: web.Request, answer: web.Response) -> web.StreamResponse:
    """`answer`'s status line and headers, its Content-Length whole, and half its body;
    then the connection is dropped, as a network that fails mid-answer does."""
    body = bytes(answer.body) if isinstance(answer.body, bytes | bytearray) else b""
    cut = web.StreamResponse(status=200, headers=answer.headers)
    cut.content_length = len(body)
    await cut.prepare(request)
    await cut.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return cut


def _refused(status: int, record: Record | None = None) -> Refusal:
    headers = {"x-request-id": record.request_id} if record is not None else {}
    return Refusal(status, MESSAGES[status], headers)


def _image_response(state: State, record: Record, image: bytes, elapsed: float) -> web.Response:
    headers = {
        "x-cost": f"{state.config.price:g}",
        "x-request-id": record.request_id,
        "x-generation-time": f"{elapsed:.3f}",
        "x-seed-value": str(record.seed),
    }
    left = state.stats.credits_left
    if left is not None:
        headers["x-remaining-credits"] = f"{left:g}"
    if state.bucket is not None:  # Segmind's docs list it among a success's headers
        reset = datetime.fromtimestamp(time.time() + state.bucket.full_in(), UTC)
        stamp = reset.isoformat(timespec="milliseconds")
        headers["x-rate-limit-reset-at-utc"] = stamp.replace("+00:00", "Z")
    content_type = f"image/{state.config.output_format}"
    return web.Response(body=image, content_type=content_type, headers=headers)


async def _get_credits(request: web.Request) -> web.Response:
    """The balance in USD (null when the emulator runs with unlimited credits). Free."""
    state = request.app[STATE]
    try:
        check_key(request, state)
    except Refusal as refusal:
        return refusal.response()
    state.stats.credit_checks += 1
    return web.json_response({"credits": state.stats.balance, "free-credits": 0})


async def _get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS].as_json())


async def _set_script(request: web.Request) -> web.Response:
    """Replace what is left of the script, so a test can steer an emulator in a subprocess."""
    try:
        script = json.loads(await request.read())
    except ValueError:
        script = None
    valid = isinstance(script, list) and all(type(s) is int and s in SCRIPTABLE for s in script)
    if not valid:
        allowed = sorted(SCRIPTABLE)
        return web.json_response(
            {"error": f"send a JSON list of statuses among {allowed}"}, status=400
        )
    request.app[STATE].script = deque(script)
    return web.json_response({"script": script})
