"""Output paths stay inside --out; files land whole, in batches or alone."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen import durable, ledger, outputs
from batchgen.cli import main
from tests.helpers import make_image, write


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_value_slugs_to_a_safe_path_piece(value: str) -> None:
    piece = outputs.slug(value)
    assert piece and "/" not in piece and piece not in (".", "..")
    assert len(piece) <= outputs.MAX_FIELD_CHARS
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in piece)


@pytest.mark.parametrize("relative", ["../x.jpg", "a/../../x.jpg", "/etc/passwd", "."])
def test_confine_refuses_escapes(tmp_path: Path, relative: str) -> None:
    with pytest.raises(ValueError, match="escapes the output folder"):
        outputs.confine(str(tmp_path.resolve()), relative)


def test_confine_keeps_paths_inside(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    assert outputs.confine(str(root), "a/b/c.jpg") == str(root / "a" / "b" / "c.jpg")


@pytest.mark.parametrize("count", [1, 3, 4, 25])  # one by one below 4 files, syncfs from 4
def test_a_commit_puts_every_file_in_place(tmp_path: Path, count: int) -> None:
    files = [(tmp_path / f"d{i % 3}" / f"f{i}.jpg", bytes([i]) * (i + 1)) for i in range(count)]
    (tmp_path / "d0").mkdir()
    (tmp_path / "d0" / "f0.jpg").write_bytes(b"an older, lost attempt")

    async def commit() -> list[ledger.WriteFailure | None]:  # together: one batch, as under load
        async with ledger.LedgerWriter(tmp_path / "ledger.jsonl") as writer:
            return await asyncio.gather(
                *(writer.submit({"job_id": f"j{i}", "status": "succeeded"}, output=(str(p), d))
                  for i, (p, d) in enumerate(files))
            )  # fmt: skip

    assert asyncio.run(commit()) == [None] * count
    for path, data in files:
        assert path.read_bytes() == data
    assert not list(tmp_path.rglob("*.part"))
    assert len(list(ledger.read(tmp_path / "ledger.jsonl"))) == count


def test_write_atomic_replaces_whole(tmp_path: Path) -> None:
    target = tmp_path / "new" / "x.png"
    durable.write_atomic(target, b"first")
    durable.write_atomic(target, b"second")
    assert target.read_bytes() == b"second" and not list(tmp_path.rglob("*.part"))


JOB_ID = "0123456789abcdef0123456789abcdef"
LONG_TEMPLATES = [
    "{prompt}-{prompt}-{job_id:.8}.{ext}",
    outputs.DEFAULT_TEMPLATE,
    "{prompt}/{prompt}/{prompt}/{prompt}/{prompt}-{negative_prompt}-{image}-{job_id}.{ext}",
    "{image}/{prompt}-{negative_prompt}-{style_type}-{seed}/{prompt}_{job_id:.12}.{ext}",
]


@settings(max_examples=150, deadline=None)
@given(
    template=st.sampled_from(LONG_TEMPLATES),
    prompt=st.text(min_size=1, max_size=400),
    negative=st.text(max_size=200),
    image=st.text(max_size=100),
)
def test_long_values_are_cut_never_the_job_id_or_the_extension(
    template: str, prompt: str, negative: str, image: str
) -> None:
    fields = {
        "prompt": prompt, "negative_prompt": negative, "image": image, "seed": 965220,
        "style_type": "RENDER_3D", "job_id": JOB_ID,
    }  # fmt: skip
    assert outputs.check_template(template) is None
    path = outputs.render(template, fields)
    precision = template.split("{job_id", 1)[1].split("}", 1)[0]  # "" or ":.N"
    job_id = JOB_ID[: int(precision[2:])] if precision else JOB_ID
    assert path.endswith(f"{job_id}.{outputs.EXT_TOKEN}")
    assert len(path) <= outputs.MAX_PATH_CHARS
    assert all(len(name) <= outputs.MAX_COMPONENT_CHARS for name in path.split("/"))
    assert path.count("/") == template.count("/")  # the template's own text is all there
    assert outputs.check_path(path) is None
    assert outputs.render(template, dict(reversed(fields.items()))) == path  # deterministic


def test_two_long_prompts_share_the_cut_and_short_paths_are_untouched() -> None:
    fields = {"prompt": "a watercolour fox in the snow " * 10, "job_id": JOB_ID}
    path = outputs.render("{prompt}-{prompt}-{job_id:.8}.{ext}", fields)
    assert len(path) <= outputs.MAX_COMPONENT_CHARS
    prompts, tail = path[: -len("-01234567.{ext}")], path[-len("-01234567.{ext}") :]
    assert tail == "-01234567.{ext}"
    first, second = prompts[: len(prompts) // 2], prompts[len(prompts) // 2 + 1 :]
    assert first == second and first.startswith("a-watercolour-fox")  # cut alike
    assert outputs.render("{prompt}/{seed}.{ext}", {"prompt": "fox", "seed": 101}) == (
        "fox/101.{ext}"
    )


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("a/../../x.{ext}", "contains '..'"),
        ("../x.{ext}", "contains '..'"),
        ("a/.../x.{ext}", "only dots ('...')"),
        ("./x.{ext}", "only dots ('.')"),
        ("a//x.{ext}", "is empty"),
        ("a/x.{ext}/", "is empty"),
        ("/x.{ext}", "must be relative"),
        ("a/" + "x" * 121, "longer than 120"),
        ("/".join(["x" * 100] * 3), "longer than 240"),
    ],
)
def test_check_path_names_the_rule(path: str, rule: str) -> None:
    found = outputs.check_path(path)
    assert found is not None and rule in found


@pytest.mark.parametrize("path", ["a/b.{ext}", ".hidden/x.{ext}", "a/.b/x..{ext}", "x" * 120])
def test_check_path_accepts_fine_paths(path: str) -> None:
    assert outputs.check_path(path) is None


@pytest.mark.parametrize(
    ("value", "readable"),
    [
        ("熊猫踢足球", "XiongMaoTiZuQiu-"),
        ("🐼 playing ⚽", "panda_face-playing-soccer-"),
        ("Привет мир", "Privet-mir-"),
        ("été", "ete-"),
    ],
)
def test_non_ascii_values_are_transliterated_and_marked(value: str, readable: str) -> None:
    name = outputs.slug(value)
    assert name.startswith(readable) and len(name) == len(readable) + 6
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name)


def test_values_transliteration_would_merge_stay_apart() -> None:
    assert outputs.slug("妈") != outputs.slug("马")  # both read "Ma"
    assert outputs.slug("ete") == "ete" != outputs.slug("été")
    assert re.fullmatch(r"[0-9a-f]{6}", outputs.slug("\u0301\u0301"))  # nothing readable left


@given(st.text(min_size=1, max_size=300))
def test_any_text_slugs_to_a_safe_bounded_name(text: str) -> None:
    name = outputs.slug(text)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name) and len(name) <= outputs.MAX_FIELD_CHARS
    assert name not in (".", "..")


def test_plan_lists_readable_names_for_chinese_and_emoji_prompts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_image(tmp_path / "p.jpg")
    m = write(tmp_path / "m.yaml", """
        output: "{prompt}-{job_id:.8}.{ext}"
        grid: {image_file: [p.jpg], prompt: ["熊猫踢足球", "一只熊猫", "🐼🐼"], seed: [101]}
        """)  # fmt: skip
    assert main(["plan", str(m), "--list"]) == 0
    paths = [json.loads(line)["output"] for line in capsys.readouterr().out.splitlines()]
    assert [p.split("-")[0] for p in paths] == ["XiongMaoTiZuQiu", "YiZhiXiongMao", "panda_face"]
    assert len(set(paths)) == 3
