"""The one place that knows the Ideogram Turbo img2img contract (see shared/api/).

Both sides use it: the manifest validates values with it before anything is sent,
and the emulator enforces the very same rules, so they cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

API_BASE: Final = "https://api.segmind.com/v1"
MODEL: Final = "ideogram-turbo-img-2-img"
PRICE_USD: Final = 0.063
TYPICAL_LATENCY_S: Final = 11.0
MAX_IMAGE_BYTES: Final = 10 * 1024 * 1024

SEED_RANGE: Final = (100, 999_999)
IMAGE_WEIGHT_RANGE: Final = (1, 100)
COLOR_WEIGHT_RANGE: Final = (0.05, 1.0)
MAX_PALETTE_MEMBERS: Final = 8

STYLE_TYPES: Final = ("GENERAL", "REALISTIC", "DESIGN", "RENDER_3D", "ANIME")
MAGIC_PROMPT_OPTIONS: Final = ("AUTO", "ON", "OFF")
PALETTE_PRESETS: Final = (
    "EMBER", "FRESH", "JUNGLE", "MAGIC", "MELON", "MOSAIC", "PASTEL", "ULTRAMARINE",
)  # fmt: skip
_SIZES: Final = """
512_1536 576_1408 576_1472 576_1536 640_1024 640_1344 640_1408 640_1472 640_1536 704_1152
704_1216 704_1280 704_1344 704_1408 704_1472 720_1280 736_1312 768_1024 768_1088 768_1152
768_1216 768_1232 768_1280 768_1344 832_960 832_1024 832_1088 832_1152 832_1216 832_1248
864_1152 896_960 896_1024 896_1088 896_1120 896_1152 960_832 960_896 960_1024 960_1088
1024_640 1024_768 1024_832 1024_896 1024_960 1024_1024 1088_768 1088_832 1088_896 1088_960
1120_896 1152_704 1152_768 1152_832 1152_864 1152_896 1216_704 1216_768 1216_832 1232_768
1248_832 1280_704 1280_720 1280_768 1280_800 1312_736 1344_640 1344_704 1344_768 1408_576
1408_640 1408_704 1472_576 1472_640 1472_704 1536_512 1536_576 1536_640
"""
RESOLUTIONS: Final = tuple(f"RESOLUTION_{s}" for s in _SIZES.split())
_RESOLUTION_SET: Final = frozenset(RESOLUTIONS)

REQUIRED: Final = ("image_file", "prompt")
FIELDS: Final = (
    "image_file", "prompt", "negative_prompt", "seed", "style_type",
    "magic_prompt_option", "image_weight", "resolution", "color_palette",
)  # fmt: skip
PARAMETERS: Final = FIELDS[1:]  # a job's parameters besides its input image
INTEGER_FIELDS: Final = ("seed", "image_weight")
TEXT_FIELDS: Final = (  # the fields whose values are strings
    "image_file", "prompt", "negative_prompt", "style_type", "magic_prompt_option", "resolution",
)  # fmt: skip
DEFAULTS: Final[Mapping[str, Any]] = {
    "style_type": "GENERAL",
    "magic_prompt_option": "AUTO",
    "image_weight": 50,
    "resolution": "RESOLUTION_1024_1024",
}
# Response headers worth recording when present (never required).
RESPONSE_HEADERS: Final = (
    "x-cost", "x-remaining-credits", "x-request-id", "x-generation-time",
    "x-seed-value", "x-rate-limit-reset-at-utc",
)  # fmt: skip


def resolution_size(resolution: str) -> tuple[int, int]:
    """`RESOLUTION_1280_720` -> (1280, 720)."""
    width, height = resolution.removeprefix("RESOLUTION_").split("_")
    return int(width), int(height)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'seed'?)` or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def sniff_image(data: bytes) -> str | None:
    """The image format by its magic bytes: 'jpeg', 'png', 'webp' or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


_PNG_IEND: Final = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # length 0, type, its CRC
_END: Final = {"jpeg": "end-of-image marker", "png": "IEND chunk", "webp": "end where RIFF says"}


def image_problem(data: bytes) -> str | None:
    """What makes `data` not a whole image, in words; None when it is one.

    A whole image starts with its format's magic bytes and ends where the format says
    it ends: a JPEG with its EOI marker (FF D9), a PNG with its IEND chunk, a WebP where
    its RIFF header's size says. That catches an answer cut short, whatever the headers
    claimed. It looks at a few bytes at each end, so it costs the same for any size:
    0.2 to 0.6 us per image (measured on 1024x1024 noise: an 831 KB JPEG, a 2.7 MB PNG,
    a 585 KB WebP). Pillow's verify() takes 37 us on that JPEG and does not notice it cut
    in half (1.2 ms on the PNG, whose CRCs it checks); decoding with load() takes 9 ms
    (JPEG) to 47 ms (WebP). A wrong byte inside an image is left to the service.
    """
    kind = sniff_image(data)
    if kind is None:
        return f"the answer is not an image ({_first_bytes(data)})"
    if kind == "jpeg":
        complete = data.endswith(b"\xff\xd9")
    elif kind == "png":
        complete = data.endswith(_PNG_IEND)
    else:
        complete = len(data) >= 12 and int.from_bytes(data[4:8], "little") + 8 == len(data)
    if complete:
        return None
    return f"the {kind.upper()} is cut short or damaged ({len(data):,} bytes, no {_END[kind]})"


def _first_bytes(data: bytes) -> str:
    if not data:
        return "empty"
    head = data[:24].decode("ascii", "replace").replace("\ufffd", ".")
    return f"{len(data):,} bytes starting {''.join(c if c.isprintable() else '.' for c in head)!r}"


EXTENSIONS: Final = {"jpeg": "jpg", "png": "png", "webp": "webp"}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int_range(name: str, value: object, bounds: tuple[int, int]) -> str | None:
    low, high = bounds
    if not _is_int(value):
        return f"{name} must be an integer, got {value!r}"
    assert isinstance(value, int)
    if not low <= value <= high:
        return f"{name} {value} is out of range {low}..{high}"
    return None


def _check_enum(name: str, value: object, allowed: tuple[str, ...]) -> str | None:
    if isinstance(value, str) and value in allowed:
        return None
    hint = did_you_mean(str(value).upper(), allowed) if isinstance(value, str) else ""
    shown = ", ".join(allowed) if len(allowed) <= 8 else f"one of the {len(allowed)} listed values"
    return f"{name} {value!r} is not allowed{hint}; use {shown}"


def _check_resolution(value: object) -> str | None:
    if isinstance(value, str) and value in _RESOLUTION_SET:
        return None
    hint = did_you_mean(str(value).upper(), RESOLUTIONS) if isinstance(value, str) else ""
    return (
        f"resolution {value!r} is not one of the {len(RESOLUTIONS)} supported values{hint}"
        " (e.g. RESOLUTION_1024_1024)"
    )


def _check_hex(value: object) -> bool:
    if not isinstance(value, str) or not value.startswith("#") or len(value) not in (4, 7):
        return False
    return all(c in "0123456789abcdefABCDEF" for c in value[1:])


def _check_palette(value: object) -> str | None:
    if not isinstance(value, Mapping) or len(value) != 1 or not {"name", "members"} >= set(value):
        return 'color_palette must be exactly one of {"name": PRESET} or {"members": [...]}'
    if "name" in value:
        return _check_enum("color_palette.name", value["name"], PALETTE_PRESETS)
    members = value["members"]
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_PALETTE_MEMBERS:
        return f"color_palette.members must be a list of 1..{MAX_PALETTE_MEMBERS} colours"
    low, high = COLOR_WEIGHT_RANGE
    previous = high
    for i, member in enumerate(members):
        where = f"color_palette.members[{i}]"
        if not isinstance(member, Mapping) or not set(member) <= {"color_hex", "color_weight"}:
            return f"{where} must be an object with color_hex and optional color_weight"
        if not _check_hex(member.get("color_hex")):
            return f"{where}.color_hex {member.get('color_hex')!r} must be '#RGB' or '#RRGGBB'"
        if "color_weight" in member:
            weight = member["color_weight"]
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                return f"{where}.color_weight must be a number, got {weight!r}"
            if not low <= weight <= high:
                return f"{where}.color_weight {weight} is out of range {low}..{high}"
            if weight > previous:
                return f"{where}.color_weight {weight}: members must be listed heaviest first"
            previous = weight
    return None


def _check_text(name: str, value: object, *, required: bool) -> str | None:
    if not isinstance(value, str):
        return f"{name} must be a string, got {value!r}"
    if required and not value.strip():
        return f"{name} must not be empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{name} contains characters that are not valid Unicode text"
    return None


def check_field(name: str, value: object) -> str | None:
    """The rule `value` breaks as field `name`, or None. `image_file` is checked elsewhere."""
    match name:
        case "prompt":
            return _check_text(name, value, required=True)
        case "negative_prompt":
            return _check_text(name, value, required=False)
        case "seed":
            return _check_int_range(name, value, SEED_RANGE)
        case "image_weight":
            return _check_int_range(name, value, IMAGE_WEIGHT_RANGE)
        case "style_type":
            return _check_enum(name, value, STYLE_TYPES)
        case "magic_prompt_option":
            return _check_enum(name, value, MAGIC_PROMPT_OPTIONS)
        case "resolution":
            return _check_resolution(value)
        case "color_palette":
            return _check_palette(value)
        case "image_file":
            return _check_text(name, value, required=True)
    return f"unknown parameter {name!r}{did_you_mean(name, FIELDS)}"


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def decode_image_file(value: str) -> bytes | None:
    """The image bytes of a base64 or `data:` URI `image_file`; None for a URL.

    Raises ValueError with a message naming the field when it is neither.
    """
    if is_url(value):
        return None
    payload = value
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if ";base64" not in header:
            raise ValueError("image_file data: URI must be base64-encoded")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "image_file must be an http(s) URL, base64 image data or a data: URI"
        ) from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"image_file is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}")
    if sniff_image(data) is None:
        raise ValueError("image_file must be a JPEG, PNG or WebP image")
    return data


def encode_request(params: Mapping[str, Any], image_json: bytes) -> bytes:
    """The JSON body, with `image_json` (an already-quoted JSON string) spliced in as
    `image_file`: a multi-megabyte base64 string is never escaped or copied by json."""
    rest = json.dumps(
        {k: v for k, v in params.items() if k != "image_file"},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    if rest == b"{}":
        return b'{"image_file":' + image_json + b"}"
    return b'{"image_file":' + image_json + b"," + rest[1:]


def check_body(body: object) -> list[str]:
    """Every rule a request body breaks, as the service would name them."""
    if not isinstance(body, Mapping):
        return ["request body must be a JSON object"]
    problems = [f"{name} is required" for name in REQUIRED if name not in body]
    for name, value in body.items():
        message = check_field(name, value)
        if message:
            problems.append(message)
    return problems
