"""Images remember how they were made; the pixels stay exactly as they were."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from batchgen import metadata
from batchgen.cli import main

META = {
    "prompt": 'a "quoted" <script>alert(1)</script>\nsecond line, été ☃',
    "negative_prompt": "blurry",
    "seed": 965220,
    "style_type": "ANIME",
    "resolution": "RESOLUTION_1024_1024",
    "image_weight": 50,
    "magic_prompt_option": "AUTO",
    "color_palette": {"name": "EMBER"},
    "model": "ideogram-turbo-img-2-img",
    "job_id": "0123456789abcdef0123456789abcdef",
    "api_key": "sk-never-this",
}


def picture(fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 90)).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").tobytes()


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_round_trip_keeps_the_pixels(fmt: str) -> None:
    original = picture(fmt.upper())
    tagged = metadata.embed(original, fmt, META)
    assert tagged != original
    assert pixels(tagged) == pixels(original)
    read = metadata.read(tagged)
    assert read is not None and read["prompt"] == META["prompt"] and read["seed"] == 965220
    assert "api_key" not in read and b"sk-never-this" not in tagged


def test_png_parameters_are_visible_to_other_tools() -> None:
    tagged = metadata.embed(picture("PNG"), "png", META)
    with Image.open(io.BytesIO(tagged)) as image:
        text = image.text  # type: ignore[attr-defined]
    assert text["parameters"].startswith(META["prompt"])
    assert "Seed: 965220, Style: ANIME" in text["parameters"]
    assert json.loads(text["batchgen"])["job_id"] == META["job_id"]


def test_jpeg_carries_an_exif_user_comment() -> None:
    tagged = metadata.embed(picture("JPEG"), "jpeg", META)
    with Image.open(io.BytesIO(tagged)) as image:
        comment = image.getexif().get_ifd(0x8769)[0x9286]
    assert comment.startswith(b"UNICODE\0") and "Seed: 965220" in comment[8:].decode("utf-16-be")


def test_jpeg_with_its_own_exif_and_icc_still_works() -> None:
    exif = Image.Exif()
    exif[0x010F] = "a camera maker"
    with Image.new("RGB", (16, 16), (1, 2, 3)) as image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", exif=exif.tobytes(), icc_profile=b"\0" * 128)
    original = buffer.getvalue()
    tagged = metadata.embed(original, "jpeg", META)
    assert pixels(tagged) == pixels(original)
    assert metadata.read(tagged) is not None
    with Image.open(io.BytesIO(tagged)) as image:
        assert image.getexif()[0x010F] == "a camera maker"


@settings(max_examples=50, deadline=None)
@given(
    prompt=st.text(max_size=300),
    seed=st.integers(100, 999_999),
    fmt=st.sampled_from(["png", "jpeg"]),
)
def test_any_prompt_round_trips(prompt: str, seed: int, fmt: str) -> None:
    prompt = prompt.encode("utf-8", "replace").decode("utf-8", "replace")
    tagged = metadata.embed(picture(fmt.upper()), fmt, {"prompt": prompt, "seed": seed})
    assert metadata.read(tagged) == {"prompt": prompt, "seed": seed}


def test_inspect_prints_it_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(metadata.embed(picture("PNG"), "png", META))
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["style_type"] == "ANIME"
    assert main(["inspect", str(path)]) == 0
    assert "seed" in capsys.readouterr().out
    plain = tmp_path / "plain.png"
    plain.write_bytes(picture("PNG"))
    assert main(["inspect", str(plain)]) == 2
    assert "no batchgen parameters found" in capsys.readouterr().err
