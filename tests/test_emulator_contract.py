"""The emulator enforces every rule of the contract (shared/api/ideogram-turbo-img-2-img.md).

One row per rule: the body change, the status the emulator must answer and a piece of the message
that names the field. Combinatorial inputs (any valid body, any bad seed) go through hypothesis.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from batchgen import api
from batchgen.emulator import DEMO_KEY, EmulatorConfig, make_app
from batchgen.emulator.pictures import scaled_size

SCALE = 1 / 16  # every resolution side is a multiple of 16, so sizes stay exact
PATH = f"/v1/{api.MODEL}"
HEADERS = {"x-api-key": DEMO_KEY}
URL = "https://segmind-resources.s3.amazonaws.com/input/turbo-i2i-ip.jpg"


def encoded(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 120, 40)).save(out, fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PNG_B64 = b64(encoded("PNG"))
JPEG_B64 = b64(encoded("JPEG"))
WEBP_B64 = b64(encoded("WEBP"))


def member(hex_colour: str, weight: object = None) -> dict[str, Any]:
    return (
        {"color_hex": hex_colour}
        if weight is None
        else {"color_hex": hex_colour, "color_weight": weight}
    )


Client = TestClient[Any, Any]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with TestClient(TestServer(make_app(EmulatorConfig(image_scale=SCALE)))) as test_client:
        yield test_client


async def post(client: Client, body: object) -> tuple[int, bytes]:
    # A BytesIO, not json=: aiohttp warns (an error here) about large raw bodies.
    data = io.BytesIO(json.dumps(body).encode())
    headers = {**HEADERS, "Content-Type": "application/json"}
    async with client.post(PATH, data=data, headers=headers) as response:
        return response.status, await response.read()


def error_of(data: bytes) -> str:
    message = json.loads(data)["error"]
    assert isinstance(message, str)
    return message


BASE: dict[str, Any] = {"image_file": URL, "prompt": "a red fox in the snow"}
Change = Callable[[dict[str, Any]], None]


def setting(**fields: Any) -> Change:
    return lambda body: body.update(fields)


def without(name: str) -> Change:
    return lambda body: body.pop(name)


NINE = [member(f"#{i}{i}{i}", 0.5) for i in range(1, 10)]
HEAVIEST_LAST = [member("#111", 0.2), member("#222", 0.9)]

# (id, change to BASE, expected status, substring of the error message; "" for a 200)
CONTRACT: list[tuple[str, Change, int, str]] = [
    ("minimal body", setting(), 200, ""),
    ("prompt missing", without("prompt"), 400, "prompt is required"),
    ("image_file missing", without("image_file"), 400, "image_file is required"),
    ("prompt empty", setting(prompt=""), 400, "prompt must not be empty"),
    ("prompt blank", setting(prompt="   "), 400, "prompt must not be empty"),
    ("prompt not a string", setting(prompt=5), 400, "prompt must be a string"),
    ("negative_prompt ok", setting(negative_prompt="blurry"), 200, ""),
    ("negative_prompt not a string", setting(negative_prompt=3), 400, "negative_prompt"),
    ("unknown field", setting(sede=500), 400, "unknown parameter 'sede' (did you mean 'seed'?)"),
    ("seed lowest", setting(seed=100), 200, ""),
    ("seed highest", setting(seed=999_999), 200, ""),
    ("seed below range", setting(seed=99), 400, "seed 99 is out of range"),
    ("seed above range", setting(seed=1_000_000), 400, "seed 1000000 is out of range"),
    ("seed a float", setting(seed=500.5), 400, "seed must be an integer"),
    ("seed a whole float", setting(seed=500.0), 400, "seed must be an integer"),
    ("seed a string", setting(seed="500"), 400, "seed must be an integer"),
    ("seed a boolean", setting(seed=True), 400, "seed must be an integer"),
    ("seed null", setting(seed=None), 400, "seed must be an integer"),
    ("image_weight lowest", setting(image_weight=1), 200, ""),
    ("image_weight highest", setting(image_weight=100), 200, ""),
    ("image_weight zero", setting(image_weight=0), 400, "image_weight 0 is out of range"),
    ("image_weight 101", setting(image_weight=101), 400, "image_weight 101 is out of range"),
    ("image_weight a float", setting(image_weight=50.0), 400, "image_weight must be an integer"),
    ("image_weight a string", setting(image_weight="50"), 400, "image_weight must be an integer"),
    ("style_type bad", setting(style_type="PHOTO"), 400, "style_type 'PHOTO' is not allowed"),
    ("style_type lower case", setting(style_type="anime"), 400, "did you mean 'ANIME'?"),
    ("magic_prompt bad", setting(magic_prompt_option="MAYBE"), 400, "magic_prompt_option"),
    ("magic_prompt bool", setting(magic_prompt_option=True), 400, "magic_prompt_option"),
    ("resolution missing one", setting(resolution="RESOLUTION_800_1280"), 400, "resolution"),
    ("resolution lower case", setting(resolution="resolution_1024_1024"), 400, "resolution"),
    ("resolution a number", setting(resolution=1024), 400, "resolution"),
    ("palette preset", setting(color_palette={"name": "EMBER"}), 200, ""),
    ("palette members", setting(color_palette={"members": [member("#A1B2C3", 0.8)]}), 200, ""),
    ("palette short hex", setting(color_palette={"members": [member("#abc")]}), 200, ""),
    ("palette eight", setting(color_palette={"members": NINE[:8]}), 200, ""),
    (
        "palette weights equal or falling",
        setting(
            color_palette={
                "members": [member("#111", 1.0), member("#222", 1.0), member("#333", 0.05)]
            }
        ),
        200,
        "",
    ),
    (
        "palette two keys",
        setting(color_palette={"name": "EMBER", "members": [member("#111")]}),
        400,
        "color_palette must be exactly one of",
    ),
    ("palette empty object", setting(color_palette={}), 400, "color_palette must be exactly one"),
    ("palette a string", setting(color_palette="EMBER"), 400, "color_palette must be exactly one"),
    ("palette other key", setting(color_palette={"colors": []}), 400, "color_palette must be"),
    ("palette unknown preset", setting(color_palette={"name": "NEON"}), 400, "color_palette.name"),
    ("palette zero members", setting(color_palette={"members": []}), 400, "1..8 colours"),
    ("palette nine members", setting(color_palette={"members": NINE}), 400, "1..8 colours"),
    ("palette members not a list", setting(color_palette={"members": "#fff"}), 400, "1..8"),
    (
        "palette hex no hash",
        setting(color_palette={"members": [member("A1B2C3")]}),
        400,
        "color_hex",
    ),
    (
        "palette hex 5 digits",
        setting(color_palette={"members": [member("#A1B2C")]}),
        400,
        "color_hex",
    ),
    (
        "palette hex not hex",
        setting(color_palette={"members": [member("#GGGGGG")]}),
        400,
        "color_hex",
    ),
    (
        "palette hex missing",
        setting(color_palette={"members": [{"color_weight": 0.5}]}),
        400,
        "color_hex",
    ),
    (
        "palette weight low",
        setting(color_palette={"members": [member("#111", 0.01)]}),
        400,
        "color_weight",
    ),
    (
        "palette weight high",
        setting(color_palette={"members": [member("#111", 1.5)]}),
        400,
        "color_weight",
    ),
    (
        "palette weight text",
        setting(color_palette={"members": [member("#111", "0.5")]}),
        400,
        "color_weight",
    ),
    (
        "palette heaviest last",
        setting(color_palette={"members": HEAVIEST_LAST}),
        400,
        "heaviest first",
    ),
    (
        "palette member extra key",
        setting(color_palette={"members": [{"color_hex": "#111", "name": "x"}]}),
        400,
        "color_palette.members[0]",
    ),
    ("image_file http URL", setting(image_file="http://example.com/a.png"), 200, ""),
    ("image_file PNG base64", setting(image_file=PNG_B64), 200, ""),
    ("image_file JPEG base64", setting(image_file=JPEG_B64), 200, ""),
    ("image_file WebP base64", setting(image_file=WEBP_B64), 200, ""),
    ("image_file data: URI", setting(image_file=f"data:image/png;base64,{PNG_B64}"), 200, ""),
    ("image_file data: not base64", setting(image_file="data:image/png,abc"), 400, "base64"),
    ("image_file bad base64", setting(image_file="not base64 at all!"), 400, "image_file must be"),
    ("image_file not an image", setting(image_file=b64(b"hello, world")), 400, "JPEG, PNG or WebP"),
    ("image_file GIF", setting(image_file=b64(encoded("GIF"))), 400, "JPEG, PNG or WebP"),
    ("image_file empty", setting(image_file=""), 400, "image_file must not be empty"),
    ("image_file not a string", setting(image_file=["x"]), 400, "image_file must be a string"),
    (
        "image_file truncated PNG",
        setting(image_file=b64(encoded("PNG", (300, 300))[:60])),
        400,
        "could not be decoded",
    ),
    (
        "image_file over 10 MB",
        setting(image_file=b64(b"\x89PNG\r\n\x1a\n" + bytes(api.MAX_IMAGE_BYTES))),
        400,
        "the limit is",
    ),
]


@pytest.mark.parametrize(
    ("change", "status", "fragment"),
    [
        pytest.param(change, status, fragment, id=name)
        for name, change, status, fragment in CONTRACT
    ],
)
async def test_contract_rule(client: Client, change: Change, status: int, fragment: str) -> None:
    body = json.loads(json.dumps(BASE))
    change(body)
    got, data = await post(client, body)
    assert got == status, data[:300]
    if status == 200:
        assert api.sniff_image(data) == "jpeg"
    else:
        assert fragment in error_of(data)


async def test_every_problem_is_named_at_once(client: Client) -> None:
    body = {"image_file": URL, "seed": 5, "style_type": "PHOTO", "colour": "red"}
    status, data = await post(client, body)
    message = error_of(data)
    assert status == 400
    for fragment in (
        "prompt is required",
        "seed 5",
        "style_type 'PHOTO'",
        "unknown parameter 'colour'",
    ):
        assert fragment in message


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        pytest.param(b"{not json", "Invalid JSON", id="malformed"),
        pytest.param(b'{"prompt": NaN}', "Invalid JSON", id="NaN is not JSON"),
        pytest.param(b"\xff\xfe{}", "Invalid JSON", id="not UTF-8"),
        pytest.param(b'["a", "list"]', "JSON object", id="not an object"),
        pytest.param(b"", "Invalid JSON", id="empty"),
    ],
)
async def test_body_that_is_not_a_json_object(client: Client, raw: bytes, fragment: str) -> None:
    headers = {**HEADERS, "Content-Type": "application/json"}
    async with client.post(PATH, data=raw, headers=headers) as response:
        assert response.status == 400
        assert fragment in error_of(await response.read())


async def test_all_78_resolutions_are_drawn_at_their_size(client: Client) -> None:
    assert len(api.RESOLUTIONS) == 78
    wrong = {}
    for resolution in api.RESOLUTIONS:
        status, data = await post(client, {**BASE, "resolution": resolution})
        width, height = api.resolution_size(resolution)
        expected = (width // 16, height // 16)
        got = Image.open(io.BytesIO(data)).size if status == 200 else status
        if got != expected:
            wrong[resolution] = got
    assert wrong == {}


async def test_every_enum_value_and_preset_is_accepted(client: Client) -> None:
    bodies = [{**BASE, "style_type": style} for style in api.STYLE_TYPES]
    bodies += [{**BASE, "magic_prompt_option": option} for option in api.MAGIC_PROMPT_OPTIONS]
    bodies += [{**BASE, "color_palette": {"name": name}} for name in api.PALETTE_PRESETS]
    statuses = [(await post(client, body))[0] for body in bodies]
    assert statuses == [200] * len(bodies)


# -- combinatorial: hypothesis ---------------------------------------------------------------

hex_colours = st.builds(
    lambda digits, short: "#" + (digits[:3] if short else digits),
    st.text("0123456789abcdefABCDEF", min_size=6, max_size=6),
    st.booleans(),
)


def heaviest_first(rows: list[tuple[str, float, bool]]) -> list[dict[str, Any]]:
    """Members with their weights sorted heaviest first; a member may leave its weight out."""
    weights = sorted((weight for _, weight, _ in rows), reverse=True)
    return [
        member(hex_colour, None if omitted else weight)
        for (hex_colour, _, omitted), weight in zip(rows, weights, strict=True)
    ]


members = st.lists(
    st.tuples(hex_colours, st.floats(0.05, 1.0), st.booleans()), min_size=1, max_size=8
).map(heaviest_first)
palettes = st.builds(lambda name: {"name": name}, st.sampled_from(api.PALETTE_PRESETS)) | st.builds(
    lambda m: {"members": m}, members
)
OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "negative_prompt": st.text(max_size=40),
    "seed": st.integers(*api.SEED_RANGE),
    "style_type": st.sampled_from(api.STYLE_TYPES),
    "magic_prompt_option": st.sampled_from(api.MAGIC_PROMPT_OPTIONS),
    "image_weight": st.integers(*api.IMAGE_WEIGHT_RANGE),
    "resolution": st.sampled_from(api.RESOLUTIONS),
    "color_palette": palettes,
}
valid_bodies = st.fixed_dictionaries(
    {
        "image_file": st.sampled_from(
            [URL, PNG_B64, JPEG_B64, WEBP_B64, f"data:image/jpeg;base64,{JPEG_B64}"]
        ),
        "prompt": st.text(min_size=1, max_size=80).filter(str.strip),
    },
    optional=OPTIONAL,
)
PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(body=valid_bodies)
async def test_any_valid_body_gets_an_image_of_the_requested_size(
    client: Client, body: dict[str, Any]
) -> None:
    assert api.check_body(body) == []  # the strategy itself must stay within the contract
    status, data = await post(client, body)
    assert status == 200, data[:300]
    resolution = body.get("resolution", api.DEFAULTS["resolution"])
    assert Image.open(io.BytesIO(data)).size == scaled_size(resolution, SCALE)


bad_seeds = (
    st.integers().filter(lambda n: not api.SEED_RANGE[0] <= n <= api.SEED_RANGE[1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.booleans()
    | st.none()
)


@PROPERTY
@given(seed=bad_seeds)
async def test_any_seed_outside_the_contract_is_rejected(client: Client, seed: object) -> None:
    status, data = await post(client, {**BASE, "seed": seed})
    assert status == 400
    assert error_of(data).startswith("seed ")


@PROPERTY
@given(resolution=st.text(max_size=24).filter(lambda r: r not in api.RESOLUTIONS))
async def test_any_unlisted_resolution_is_rejected(client: Client, resolution: str) -> None:
    status, data = await post(client, {**BASE, "resolution": resolution})
    assert status == 400
    assert error_of(data).startswith("resolution ")


@PROPERTY
@given(
    weights=st.lists(st.floats(0.05, 1.0), min_size=2, max_size=8).filter(
        lambda ws: ws != sorted(ws, reverse=True)
    )
)
async def test_any_palette_not_heaviest_first_is_rejected(
    client: Client, weights: list[float]
) -> None:
    palette = {"members": [member("#123456", w) for w in weights]}
    status, data = await post(client, {**BASE, "color_palette": palette})
    assert status == 400
    assert "heaviest first" in error_of(data)
