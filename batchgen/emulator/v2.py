"""The v2 queue: submit at once, poll the status, fetch the result.

    POST /v2/{model}                  the v1 body; the v1 gateway errors (401 404 429 406 413 400
                                      406), then 200 {"request_id", "status": "QUEUED",
                                      "poll_url", "status_url", "response_url"} (URLs on the
                                      request's own host). A v2_submit_504_share of submissions
                                      are queued all the same but answered 504; a scripted 504
                                      too; any other scripted status refuses the submission.
    GET  /v2/requests/{id}/status     200 {"request_id", "status": QUEUED|PROCESSING|COMPLETED};
                                      422 {"request_id", "status": "FAILED", "error"};
                                      404 unknown, or record_ttl seconds after submission
    GET  /v2/requests/{id}            once COMPLETED: {..., "output", "images", "seed",
                                      "metrics": {"cost", "remaining_credits", ...}};
                                      before that, as the status URL

A queued request waits for one of the max_in_flight slots (v1 requests use them too), runs for
the simulated latency, then COMPLETES and is billed once, or FAILS (v2_fail; not billed).
Polls need the key, are free and take no rate-limit token.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from batchgen.emulator.accounting import fingerprint
from batchgen.emulator.config import MESSAGES
from batchgen.emulator.gateway import admit, check_key, read_body
from batchgen.emulator.pictures import InvalidImage, seed_for
from batchgen.emulator.records import Record
from batchgen.emulator.state import STATE, Refusal, State
from batchgen.emulator.storage import output_url

FAILED_MESSAGE = "Inference failed: the model could not process this request"


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v2/requests/{request_id}/status", _status)
    router.add_get("/v2/requests/{request_id}", _result)
    router.add_post("/v2/{model}", _submit)


async def _submit(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        model = admit(request, state)
        body, source = await read_body(request, state)
        if not state.stats.can_afford():
            raise Refusal(406, MESSAGES[406])
        status, delay, fails = state.draw_submit()
        if status == 429:
            raise state.throttled(1.0)
        if status not in (200, 504):
            raise Refusal(status, MESSAGES[status])
        request_fp = fingerprint(body)
        record = state.records.open(
            request_id=state.next_request_id(),
            api="v2",
            model=model,
            body=body,
            fingerprint=request_fp,
            seed=seed_for(body, request_fp, state.config.seed),
        )
        state.stats.reserved += 1  # until it ends, so queued requests cannot overdraw
        state.spawn(_work(state, record, source, delay, fails))
        if status == 504:  # queued, and will complete and bill: only the answer is lost
            raise Refusal(504, MESSAGES[504])
    except Refusal as refusal:
        return refusal.response()
    base = f"{request.url.origin()}/v2/requests/{record.request_id}"
    answer = {
        "request_id": record.request_id,
        "status": record.status,
        "poll_url": f"{base}/status",
        "status_url": f"{base}/status",
        "response_url": base,
    }
    return web.json_response(answer, headers={"x-request-id": record.request_id})


async def _work(
    state: State, record: Record, source: bytes | str, delay: float, fails: bool
) -> None:
    """Wait for a slot, run for `delay`, then complete and bill once, or fail."""
    stats = state.stats
    reserved = True
    try:
        await state.slots.take()
        try:
            record.start(state.now())
            if delay > 0:
                await state.config.sleep(delay)
            if fails:
                _fail(state, record, FAILED_MESSAGE)
                return
            try:
                await state.picture(record, source)
            except InvalidImage as err:
                _fail(state, record, str(err))
                return
            stats.bill(record.fingerprint)
            stats.reserved -= 1
            reserved = False
            record.complete(state.now(), state.config.price, stats.credits_left)
            stats.v2_completed += 1
        finally:
            state.slots.give_back()
    finally:
        if reserved:
            stats.reserved -= 1


def _fail(state: State, record: Record, error: str) -> None:
    record.fail(state.now(), error)
    state.stats.v2_failed += 1


def _polled(request: web.Request) -> tuple[State, Record]:
    state = request.app[STATE]
    check_key(request, state)
    state.stats.polls += 1
    record = state.records.live(request.match_info["request_id"])
    if record is None:
        raise Refusal(404, "Request not found (unknown, or expired)")
    return state, record


def _status_answer(record: Record) -> web.Response:
    answer: dict[str, Any] = {"request_id": record.request_id, "status": record.status}
    if record.status == "FAILED":
        answer["error"] = record.error
        return web.json_response(answer, status=422)
    return web.json_response(answer)


async def _status(request: web.Request) -> web.Response:
    try:
        _, record = _polled(request)
    except Refusal as refusal:
        return refusal.response()
    return _status_answer(record)


async def _result(request: web.Request) -> web.Response:
    try:
        state, record = _polled(request)
    except Refusal as refusal:
        return refusal.response()
    if record.status != "COMPLETED":
        return _status_answer(record)
    url = output_url(request, state, record)
    assert record.started_at is not None and record.finished_at is not None
    metrics = {
        "cost": record.cost,
        "remaining_credits": record.remaining_credits,
        "inference_time": round(record.finished_at - record.started_at, 3),
        "queue_time": round(record.started_at - record.created_at, 3),
        "total_time": round(record.finished_at - record.created_at, 3),
    }
    answer = {
        "request_id": record.request_id,
        "status": "COMPLETED",
        "output": url,
        "images": [url],
        "seed": record.seed,
        "metrics": metrics,
    }
    return web.json_response(answer)
