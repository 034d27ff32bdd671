"""Images remember how they were made; the pixels stay exactly as they were."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

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
    "x-api-key": "sk-nor-this",
}
HOSTILE = st.sampled_from(
    ["<script>alert(1)</script>", '"', "'", "\n", "\r\n", "\0", "</", "IEND", "\xff\xd9", "☃"]
)


def picture(fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 90)).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").tobytes()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes, int]]:
    found, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        found.append(
            (kind, body, struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0])
        )
        pos += 12 + length
    return found


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_round_trip_keeps_the_pixels_and_never_a_key(fmt: str) -> None:
    original = picture(fmt.upper())
    tagged = metadata.embed(original, fmt, META)
    assert tagged != original and pixels(tagged) == pixels(original)
    read = metadata.read(tagged)
    assert read == {k: v for k, v in META.items() if k in metadata.FIELDS}
    assert b"sk-n" not in tagged


def test_png_chunks_are_valid_and_visible_to_other_tools() -> None:
    tagged = metadata.embed(picture("PNG"), "png", META)
    chunks = png_chunks(tagged)
    assert all(zlib.crc32(kind + body) == crc for kind, body, crc in chunks)
    assert [kind for kind, _, _ in chunks][-3:] == [b"iTXt", b"iTXt", b"IEND"]
    with Image.open(io.BytesIO(tagged)) as image:
        text = image.text  # type: ignore[attr-defined]
    assert text["parameters"].startswith(META["prompt"] + "\nNegative prompt: blurry\n")
    assert text["parameters"].endswith(
        "Seed: 965220, Style: ANIME, Resolution: RESOLUTION_1024_1024, Image weight: 50, "
        'Magic prompt: AUTO, Model: ideogram-turbo-img-2-img, Job id: 0123456789abcdef0123456789abcdef, Color palette: {"name": "EMBER"}'
    )
    assert json.loads(text["batchgen"])["job_id"] == META["job_id"]


def test_png_written_by_another_tool_as_compressed_text_is_read() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("batchgen", json.dumps({"seed": 5}), zip=True)
    info.add_text("Software", "elsewhere")
    assert metadata.read(picture("PNG", pnginfo=info)) == {"seed": 5}


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_embedding_again_replaces_rather_than_piles_up(fmt: str) -> None:
    once = metadata.embed(picture(fmt.upper()), fmt, META)
    twice = metadata.embed(once, fmt, {**META, "seed": 7})
    assert metadata.read(twice) == {**metadata.read(once), "seed": 7}  # type: ignore[dict-item]
    assert twice.count(b"batchgen") == once.count(b"batchgen")


def test_jpeg_carries_an_exif_user_comment_and_a_com_segment() -> None:
    tagged = metadata.embed(picture("JPEG"), "jpeg", META)
    with Image.open(io.BytesIO(tagged)) as image:
        comment = image.getexif().get_ifd(0x8769)[0x9286]
        assert image.info["comment"].startswith(b"batchgen:{")
    assert comment.startswith(b"UNICODE\0") and "Seed: 965220" in comment[8:].decode("utf-16-be")
    assert tagged[2:4] == b"\xff\xe0"  # JFIF's APP0 still comes first


def test_jpeg_with_its_own_exif_and_icc_still_works() -> None:
    exif = Image.Exif()
    exif[0x010F] = "a camera maker"
    icc = b"\0" * 128
    original = picture("JPEG", exif=exif.tobytes(), icc_profile=icc)
    tagged = metadata.embed(original, "jpeg", META)
    assert pixels(tagged) == pixels(original) and metadata.read(tagged) is not None
    with Image.open(io.BytesIO(tagged)) as image:
        assert image.getexif()[0x010F] == "a camera maker"  # theirs, not replaced by ours
        assert image.info["icc_profile"] == icc


def test_a_prompt_longer_than_a_jpeg_segment_is_split_and_joined() -> None:
    prompt = "été ☃ " * 20_000  # ~200 kB of UTF-8: four COM segments
    tagged = metadata.embed(picture("JPEG"), "jpeg", {"prompt": prompt})
    assert metadata.read(tagged) == {"prompt": prompt}
    assert pixels(tagged) == pixels(picture("JPEG"))


@pytest.mark.parametrize(
    ("data", "fmt"),
    [(b"", "png"), (picture("PNG")[:60], "png"), (picture("JPEG")[:30], "jpeg"),
     (picture("WEBP"), "webp"), (picture("JPEG"), "png"), (b"\xff\xd8\xff", "jpeg")],
)  # fmt: skip
def test_what_it_cannot_tag_it_returns_untouched(data: bytes, fmt: str) -> None:
    assert metadata.embed(data, fmt, META) == data
    assert metadata.read(data) is None


def test_a_source_url_keeps_no_secrets() -> None:
    url = "https://user:pw@bucket.example/a/b.jpg?X-Amz-Signature=abc&token=t#frag"
    tagged = metadata.embed(picture("PNG"), "png", {"prompt": "p", "source": url})
    assert metadata.read(tagged) == {"prompt": "p", "source": "https://bucket.example/a/b.jpg"}


@settings(max_examples=60, deadline=None)
@given(
    prompt=st.lists(st.text(max_size=40) | HOSTILE, max_size=8).map("".join),
    seed=st.integers(0, 2_147_483_647),
    fmt=st.sampled_from(["png", "jpeg"]),
)
def test_any_prompt_round_trips(prompt: str, seed: int, fmt: str) -> None:
    prompt = prompt.encode("utf-8", "replace").decode("utf-8")  # lone surrogates are not text
    original = picture(fmt.upper())
    tagged = metadata.embed(original, fmt, {"prompt": prompt, "seed": seed})
    assert metadata.read(tagged) == {"prompt": prompt, "seed": seed}
    assert pixels(tagged) == pixels(original)


def test_inspect_prints_it_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(metadata.embed(picture("PNG"), "png", META))
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["style_type"] == "ANIME"
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == 'prompt               a "quoted" <script>alert(1)</script>'
    assert out[1] == "                     second line, été ☃"  # the prompt's own line, indented
    assert "seed                 965220" in out


def test_inspect_says_why_it_cannot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain.png"
    plain.write_bytes(picture("PNG"))
    assert main(["inspect", str(plain)]) == 2
    assert capsys.readouterr().err == f"batchgen: {plain}: no batchgen parameters found\n"
    assert main(["inspect", str(tmp_path / "nope.jpg")]) == 2
    assert "cannot read: No such file or directory" in capsys.readouterr().err
