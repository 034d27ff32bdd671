"""What every request meets before the model: the key, the model, the rate limit, the body.

Shared by the v1 endpoint and the v2 submission, so both apply exactly the same rules (through
`batchgen.api`, never a copy of them). A request whose `image_file` is one of this emulator's
own asset URLs draws from the uploaded bytes; any other URL is never fetched.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from yarl import URL

from batchgen import api
from batchgen.emulator.assets import parse_asset_path
from batchgen.emulator.config import MESSAGES
from batchgen.emulator.state import Refusal, State


def check_key(request: web.Request, state: State) -> None:
    """401 unless the x-api-key header holds the key (a Bearer header is not accepted)."""
    if request.headers.get("x-api-key") != state.config.api_key:
        raise Refusal(401, MESSAGES[401])


def admit(request: web.Request, state: State) -> str:
    """Key, model, rate limit: checked before the body is read. The model's name."""
    check_key(request, state)
    model = request.match_info["model"]
    if model not in state.config.models:
        raise Refusal(404, f"Model {model!r} not found")
    wait = state.bucket.take() if state.bucket else 0.0
    if wait > 0:
        raise state.throttled(wait)
    return model


async def read_json(request: web.Request, state: State) -> Any:
    """The JSON of a request body: 406 if not JSON, 413 if too large, 400 if malformed."""
    limit = state.config.max_body_bytes
    if request.content_type != "application/json":
        raise Refusal(406, "Invalid content type")
    too_large = Refusal(413, f"Request body is larger than {limit} bytes")
    if (request.content_length or 0) > limit:
        raise too_large
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None  # a chunked body that grew past client_max_size
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise Refusal(400, f"Invalid JSON body: {err}") from None


async def read_body(request: web.Request, state: State) -> tuple[dict[str, Any], bytes | str]:
    """The validated body and its image: decoded bytes, an asset's bytes, or the URL."""
    body = await read_json(request, state)
    if not isinstance(body, dict):
        raise Refusal(400, "request body must be a JSON object")
    problems = api.check_body(body)
    if problems:
        raise Refusal(400, "; ".join(problems))
    image_file: str = body["image_file"]
    try:
        decoded = api.decode_image_file(image_file)
    except ValueError as err:
        raise Refusal(400, str(err)) from None
    if decoded is not None:
        return body, decoded
    asset = state.assets.resolve(image_file)
    if asset is not None:
        return body, asset
    if _names_our_storage(image_file, request):
        raise Refusal(400, f"image_file {image_file!r}: no such asset was uploaded")
    return body, image_file


def _names_our_storage(url: str, request: web.Request) -> bool:
    try:
        parsed = URL(url)
    except ValueError:
        return False
    return parsed.host_port_subcomponent == request.host and bool(parse_asset_path(parsed.path))


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")  # Python accepts NaN/Infinity; JSON does not
