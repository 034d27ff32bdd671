"""Asset storage and the public files: uploads, and the images requests produced.

POST /upload-asset          {"data_urls": [...]} -> {"file_urls": [...]}, one public URL per
                            data URL, in order; each a valid image_file for later requests
                            to this emulator (resolved locally, never fetched). Key; free.
GET  /assets/{digest}.{ext} the uploaded bytes; no key
GET  /outputs/{id}.{ext}    the exact image request `id` produced (a v1 200, a billed 504, a
                            v2 completion), drawn again from its record; no key; 404 once
                            output_ttl has passed since it was made
"""

from __future__ import annotations

from aiohttp import web

from batchgen import api
from batchgen.emulator.assets import CONTENT_TYPES, parse_asset_path
from batchgen.emulator.gateway import check_key, read_json
from batchgen.emulator.records import Record
from batchgen.emulator.state import STATE, Refusal, State


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/upload-asset", _upload)
    router.add_get("/assets/{name}", _get_asset)
    router.add_get("/outputs/{name}", _get_output)


def output_url(request: web.Request, state: State, record: Record) -> str:
    """The public URL of a record's image, on the host the request came to."""
    return f"{request.url.origin()}/outputs/{record.request_id}.{state.config.output_extension}"


async def _upload(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        check_key(request, state)
        body = await read_json(request, state)
        data_urls = body.get("data_urls") if isinstance(body, dict) else None
        if not isinstance(data_urls, list) or not data_urls:
            raise Refusal(400, 'send {"data_urls": ["data:image/...;base64,...", ...]}')
        files = [_decoded(index, value) for index, value in enumerate(data_urls)]
    except Refusal as refusal:
        return refusal.response()
    origin = request.url.origin()
    urls = [f"{origin}{state.assets.put(data, kind)}" for data, kind in files]
    state.stats.uploads += 1
    state.stats.assets_uploaded += len(urls)
    return web.json_response({"file_urls": urls, "message": "Files uploaded successfully"})


def _decoded(index: int, value: object) -> tuple[bytes, str]:
    """The bytes of one data URL (raw base64 is accepted too) and their sniffed kind."""
    where = f"data_urls[{index}]"
    if not isinstance(value, str):
        raise Refusal(400, f"{where} must be a string")
    try:
        data = api.decode_image_file(value)
    except ValueError as err:
        raise Refusal(400, str(err).replace("image_file", where)) from None
    if data is None:
        raise Refusal(400, f"{where} must be a data: URL, not a link")
    kind = api.sniff_image(data)
    assert kind is not None  # decode_image_file accepts only JPEG, PNG and WebP
    return data, kind


async def _get_asset(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    named = parse_asset_path(f"/assets/{request.match_info['name']}")
    data = None if named is None else state.assets.get(*named)
    if named is None or data is None:
        return web.json_response({"error": "Not found"}, status=404)
    state.stats.asset_downloads += 1
    return web.Response(body=data, content_type=CONTENT_TYPES[named[1]])


async def _get_output(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    stem, _, extension = request.match_info["name"].rpartition(".")
    record = state.records.get(stem)
    made = record is not None and record.status == "COMPLETED"
    if (
        record is None
        or not made
        or extension != state.config.output_extension
        or record.finished_at is None
        or state.now() >= record.finished_at + state.config.output_ttl
    ):
        return web.json_response({"error": "Not found"}, status=404)
    image = await state.picture(record)
    state.stats.output_downloads += 1
    return web.Response(body=image, content_type=f"image/{state.config.output_format}")
