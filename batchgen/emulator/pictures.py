"""The emulator's pictures: cheap, deterministic images shaped like the real answer.

The real model returns a new picture derived from the input image, the prompt, the seed, the style
and the palette. The emulator imitates the *shape* of that answer, not its art: a real JPEG or PNG
at the requested size that changes whenever an input changes and stays byte-identical when none
does. At the tiny sizes tests and benchmarks ask for, a render costs well under a millisecond, so
they measure the client rather than Pillow.

The steps, each visible in the output so a human looking at demo results can tell inputs apart:
input fitted (resized and centre-cropped) to the frame, or a placeholder gradient for a URL input
that an offline emulator never fetches; a style effect; a tint from the palette (or from the seed)
whose strength falls as `image_weight` rises; a few seeded shapes; the prompt as a caption.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from PIL import Image, ImageColor, ImageDraw, ImageFont, ImageOps

from batchgen import api
from batchgen.lru import BytesLRU

RGB = tuple[int, int, int]

# What each preset looks like. The names are the API's (api.PALETTE_PRESETS); the colours are
# only the emulator's rendition of them.
PRESET_COLOURS: Final[Mapping[str, tuple[str, ...]]] = {
    "EMBER": ("#E25822", "#F8C630", "#7A1F0F"),
    "FRESH": ("#8BD3C7", "#F6F7EB", "#3E8E7E"),
    "JUNGLE": ("#2E6B30", "#8DB600", "#1B3A1F"),
    "MAGIC": ("#6A0DAD", "#C77DFF", "#240046"),
    "MELON": ("#FEBAAD", "#77DD77", "#F25C54"),
    "MOSAIC": ("#D7263D", "#1B998B", "#F46036"),
    "PASTEL": ("#FFD1DC", "#AEC6CF", "#FDFD96"),
    "ULTRAMARINE": ("#120A8F", "#4166F5", "#0B0B45"),
}
CAPTION_MIN_HEIGHT: Final = 24  # below this a caption is unreadable noise; skip it
JPEG_QUALITY: Final = 85
PNG_COMPRESS_LEVEL: Final = 1  # fast; the emulator's PNGs are not meant to be small


class InvalidImage(ValueError):
    """The input passed the magic-byte sniff but Pillow cannot decode it (truncated, corrupt)."""


@dataclass(frozen=True, slots=True)
class RenderSpec:
    """Everything that decides the output picture; equal specs give identical bytes."""

    width: int
    height: int
    source: bytes | str  # decoded input image bytes, or the URL it was given as
    prompt: str
    seed: int
    style_type: str
    palette: tuple[RGB, ...]  # heaviest first; empty when the request named no palette
    image_weight: int
    salt: str  # a digest of the inputs not drawn directly (negative prompt, magic prompt option)
    fmt: str  # "jpeg" or "png"


def palette_colours(value: object) -> tuple[RGB, ...]:
    """The colours of an already validated `color_palette` value, heaviest first."""
    if not isinstance(value, Mapping):
        return ()
    if "name" in value:
        hexes: tuple[str, ...] = PRESET_COLOURS.get(str(value["name"]), ())
    else:
        hexes = tuple(str(member["color_hex"]) for member in value.get("members", ()))
    return tuple(_rgb(h) for h in hexes)


def scaled_size(resolution: str, scale: float) -> tuple[int, int]:
    """The size the emulator draws `resolution` at: each side times `scale`, at least 1 px."""
    width, height = api.resolution_size(resolution)
    return max(1, round(width * scale)), max(1, round(height * scale))


def seed_for(body: Mapping[str, Any], request_fingerprint: str, base_seed: int) -> int:
    """The request's seed, or one picked from its fingerprint: the real service would pick a
    random one, but the emulator promises that the same request gives the same picture."""
    if "seed" in body:
        return int(body["seed"])
    low, high = api.SEED_RANGE
    digest = hashlib.sha256(f"{base_seed}:{request_fingerprint}".encode()).digest()
    return low + int.from_bytes(digest[:8], "big") % (high - low + 1)


def request_spec(
    body: Mapping[str, Any], seed: int, scale: float, fmt: str, source: bytes | str
) -> RenderSpec:
    """The RenderSpec of a body that passed api.check_body; `source` is its decoded image_file."""
    settings = {**api.DEFAULTS, **body}
    width, height = scaled_size(settings["resolution"], scale)
    unseen = f"{settings.get('negative_prompt', '')}\0{settings['magic_prompt_option']}"
    return RenderSpec(
        width=width,
        height=height,
        source=source,
        prompt=settings["prompt"],
        seed=seed,
        style_type=settings["style_type"],
        palette=palette_colours(settings.get("color_palette")),
        image_weight=settings["image_weight"],
        salt=hashlib.sha256(unseen.encode()).hexdigest()[:16],
        fmt=fmt,
    )


def render(spec: RenderSpec) -> bytes:
    """Draw the answer for `spec` and encode it. Raises InvalidImage for undecodable input."""
    size = (spec.width, spec.height)
    picture = _stylise(_base(spec.source, size), spec.style_type)
    tint = spec.palette[0] if spec.palette else _seed_colour(spec.seed)
    strength = 0.15 + 0.6 * (1 - spec.image_weight / 100)
    picture = Image.blend(picture, Image.new("RGB", size, tint), strength)
    draw = ImageDraw.Draw(picture)
    _draw_shapes(draw, spec)
    if spec.height >= CAPTION_MIN_HEIGHT:
        _draw_caption(draw, spec.prompt, size)
    return _encode(picture, spec.fmt)


def _rgb(hex_colour: str) -> RGB:
    red, green, blue = ImageColor.getrgb(hex_colour)[:3]
    return red, green, blue


def _seed_colour(seed: int) -> RGB:
    digest = hashlib.sha256(f"tint:{seed}".encode()).digest()
    return digest[0], digest[1], digest[2]


def _base(source: bytes | str, size: tuple[int, int]) -> Image.Image:
    if isinstance(source, str):
        return _placeholder(source, size)
    try:
        with Image.open(io.BytesIO(source)) as opened:
            opened.draft("RGB", size)  # JPEG only: decode at a reduced scale, much cheaper
            return ImageOps.fit(opened.convert("RGB"), size, Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        # Pillow's decoding failures; anything else is a bug in the emulator and must surface.
        raise InvalidImage(f"image_file could not be decoded as an image: {err}") from None


def _placeholder(url: str, size: tuple[int, int]) -> Image.Image:
    """A stand-in for a URL input: the emulator is offline, so it never fetches the URL.
    Four corner colours from the URL's digest, blended by a bilinear resize (cheap at any size)."""
    digest = hashlib.sha256(url.encode()).digest()
    corners = Image.frombytes("RGB", (2, 2), digest[:12])
    return corners.resize(size, Image.Resampling.BILINEAR)


def _posterize(bits: int) -> Callable[[Image.Image], Image.Image]:
    return lambda image: ImageOps.posterize(image, bits)


_STYLES: Final[Mapping[str, Callable[[Image.Image], Image.Image]]] = {
    "GENERAL": lambda image: image,
    "REALISTIC": ImageOps.autocontrast,
    "DESIGN": _posterize(3),
    "RENDER_3D": ImageOps.equalize,
    "ANIME": _posterize(2),
}


def _stylise(image: Image.Image, style_type: str) -> Image.Image:
    return _STYLES.get(style_type, _STYLES["GENERAL"])(image)


def _draw_shapes(draw: ImageDraw.ImageDraw, spec: RenderSpec) -> None:
    """A few seeded ellipses: the visible difference between two seeds of the same request."""
    rng = random.Random(f"{spec.seed}:{spec.salt}:{spec.prompt}")
    colours = spec.palette or (_seed_colour(spec.seed),)
    for i in range(4):
        x, y = rng.randrange(spec.width), rng.randrange(spec.height)
        radius = max(1, min(spec.width, spec.height) // rng.randint(6, 12))
        box = (x - radius, y - radius, x + radius, y + radius)
        draw.ellipse(box, fill=colours[i % len(colours)], outline=(255, 255, 255))


def _draw_caption(draw: ImageDraw.ImageDraw, prompt: str, size: tuple[int, int]) -> None:
    width, height = size
    font_size = max(6, height // 28)
    band = int(font_size * 1.6)
    draw.rectangle((0, height - band, width, height), fill=(0, 0, 0))
    # ASCII only: the built-in font lacks most glyphs, and the caption is a debugging aid.
    text = "".join(c for c in prompt.encode("ascii", "replace").decode() if c.isprintable())
    font = ImageFont.load_default(size=font_size)
    fits = max(1, int(width / (font_size * 0.55)))
    if len(text) > fits:
        text = text[: max(1, fits - 3)] + "..."
    draw.text((font_size // 2, height - band + font_size // 4), text, fill="white", font=font)


def _encode(picture: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt == "png":
        picture.save(out, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        picture.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


class RenderCache(BytesLRU):
    """A small LRU of rendered bytes by request fingerprint: load tests repeat requests,
    and a cache hit skips Pillow entirely."""

    def __init__(self, *, max_entries: int = 64, max_bytes: int = 64 * 1024 * 1024) -> None:
        super().__init__(max_bytes, max_entries=max_entries)
