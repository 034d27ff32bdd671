"""Manifests: every rule a user can break gives a located, readable error."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from batchgen import grid, manifest
from batchgen.cli import main
from batchgen.errors import InputError
from batchgen.manifest import yaml_lines
from tests.helpers import image_bytes, make_image, write


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for i, name in enumerate(["a.jpg", "b.PNG", "c.webp"]):
        fmt = {"jpg": "JPEG", "PNG": "PNG", "webp": "WEBP"}[name.split(".")[1]]
        make_image(tmp_path / "photos" / name, fmt, colour=i)
    return tmp_path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(InputError) as caught:
        manifest.load(path)
    return [str(p) for p in caught.value.problems]


def test_grid_from_folder_glob_file_and_url(folder: Path) -> None:
    make_image(folder / "shots" / "deep" / "x.jpg", colour=9)
    m = write(
        folder / "m.yaml",
        """
        grid:
          image_file: [photos/, "shots/**/*.jpg", photos/a.jpg, "https://example.com/a.jpg"]
          prompt: [one, two]
          seed: [101, 202]
        """,
    )
    loaded = manifest.load(m)
    names = [c["image_file"] for c in loaded.blocks[0].axes[0].choices]
    # photos/a.jpg, listed twice, is one image: its jobs run once, not twice
    assert [getattr(n, "name", n) for n in names] == [
        "photos/a.jpg", "photos/b.PNG", "photos/c.webp", "shots/deep/x.jpg",
        "https://example.com/a.jpg",
    ]  # fmt: skip
    assert loaded.size == len(list(grid.expand(loaded))) == 5 * 2 * 2


def test_identical_jobs_anywhere_run_once(folder: Path) -> None:
    make_image(folder / "copy" / "same.jpg", colour=0)  # the same bytes as photos/a.jpg
    m = write(
        folder / "m.yaml",
        """
        grid:
          image_file: [photos/a.jpg, copy/same.jpg]
          prompt: [x, x, y]
          seed: [101]
        jobs:
          - {image_file: photos/a.jpg, prompt: x, seed: 101}
          - {image_file: photos/a.jpg, prompt: z, seed: 101}
          - {image_file: photos/a.jpg, prompt: z, seed: 101}
        """,
    )
    jobs = list(grid.expand(manifest.load(m)))
    assert sorted(j.params["prompt"] for j in jobs) == ["x", "y", "z"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("grid: {image_file: [photos/a.jpg], prompt: [x], seed: [5]}", ":1: seed 5 is out of range 100..999999"),
        ("grid: {image_file: [photos/a.jpg], prompt: [x], seed: [1000000]}", "seed 1000000 is out of range"),
        ("grid: {image_file: [photos/a.jpg], prompt: [x], seed: ['12x']}", "seed must be an integer"),
        ("grid: {image_file: [photos/a.jpg], prompt: [x], image_weight: [0]}", "image_weight 0 is out of range 1..100"),
        ("grid: {image_file: [photos/a.jpg], prompt: [x], image_weight: [2.5]}", "image_weight must be an integer"),
        ("grid: {image_file: [photos/a.jpg], prompt: [x], style_type: [ANIMEE]}", "style_type 'ANIMEE' is not allowed (did you mean 'ANIME'?)"),
        ("grid: {image_file: [photos/a.jpg], prompt: [x], magic_prompt_option: [MAYBE]}", "magic_prompt_option 'MAYBE' is not allowed"),
        ("grid: {image_file: [photos/a.jpg], prompt: [x], resolution: [RESOLUTION_800_1280]}", "resolution 'RESOLUTION_800_1280' is not one of the 78"),
        ("grid: {image_file: [photos/a.jpg], prompt: ['  ']}", "prompt must not be empty"),
        ("grid: {image_file: [photos/a.jpg], prompt: [x], sead: [101]}", "unknown parameter 'sead' (did you mean 'seed'?)"),
        ("grid: {image_file: [photos/a.jpg]}", "prompt is required"),
        ("grid: {prompt: [x]}", "image_file is required"),
        ("gird: {}\njobs: []", "unknown key 'gird' (did you mean 'grid'?)"),
        ("params: {color_palette: {name: EMBERS}}\ngrid: {image_file: [photos/a.jpg], prompt: [x]}", "color_palette.name 'EMBERS' is not allowed"),
        ("params: {color_palette: {name: EMBER, members: []}}\ngrid: {image_file: [photos/a.jpg], prompt: [x]}", "exactly one of"),
        ("params: {color_palette: {members: []}}\ngrid: {image_file: [photos/a.jpg], prompt: [x]}", "1..8 colours"),
        ("params: {color_palette: {members: [{color_hex: '#12345'}]}}\ngrid: {image_file: [photos/a.jpg], prompt: [x]}", "must be '#RGB' or '#RRGGBB'"),
        ("params: {color_palette: {members: [{color_hex: '#123', color_weight: 2}]}}\ngrid: {image_file: [photos/a.jpg], prompt: [x]}", "color_weight 2 is out of range"),
        ("params: {color_palette: {members: [{color_hex: '#123', color_weight: 0.1}, {color_hex: '#fff', color_weight: 0.9}]}}\ngrid: {image_file: [photos/a.jpg], prompt: [x]}", "heaviest first"),
        ("grid: {image_file: [missing.jpg], prompt: [x]}", "'missing.jpg' cannot be read"),
        ("grid: {image_file: ['nothing/*.png'], prompt: [x]}", "glob 'nothing/*.png' matches no file"),
        ("grid: {image_file: [notes.txt], prompt: [x]}", "'notes.txt' is not a JPEG, PNG or WebP image"),
        ("grid: {image_file: [fake/], prompt: [x]}", "'fake/liar.jpg' is not a JPEG, PNG or WebP image"),
        ("grid: {image_file: [big.png], prompt: [x]}", "the limit is 10,485,760"),
        ("grid: {image_file: [photos/a.jpg], prompt: [x]}\noutput: '/abs/{ext}'", "must be a relative path"),
        ("grid: {image_file: [photos/a.jpg], prompt: [x]}\noutput: '../{seed}.{ext}'", "must not contain '..'"),
        ("grid: {image_file: [photos/a.jpg], prompt: [x]}\noutput: '{colour}.{ext}'", "field {colour} is unknown"),
        ("grid: {image_file: [photos/a.jpg], prompt: [x]}\noutput: '{seed}'", "must contain {ext}"),
        ("grid: {image_file: [photos/a.jpg], prompt: [x], seed: {count: 0}}", "seed count 0 is out of"),
        ("price: -1\ngrid: {image_file: [photos/a.jpg], prompt: [x]}", "price -1 must be a number"),
        ("grid: {image_file: [photos/a.jpg], prompt: [x]}\ngrid: {}", "key 'grid' appears twice"),
        ("grid: {image_file: [photos/a.jpg], prompt: [x]\n", "invalid YAML"),
        ("!!python/object/apply:os.system ['true']", "invalid YAML"),
        ("- just\n- a list", "manifest must be a YAML mapping"),
        ("jobs: [{image_file: photos/a.jpg, prompt: x, seed: 99}]", ":1: seed 99 is out of range"),
        ("grid: {image_file: [photos/a.jpg], prompt: {file: nope.txt}}", "cannot read 'nope.txt'"),
    ],
)  # fmt: skip
def test_each_rule_has_a_clear_error(folder: Path, body: str, expected: str) -> None:
    (folder / "notes.txt").write_text("not an image")
    (folder / "fake").mkdir()
    (folder / "fake" / "liar.jpg").write_text("not an image either")
    (folder / "big.png").write_bytes(image_bytes("PNG") + b"\0" * (10 * 1024 * 1024))
    m = write(folder / "bad.yaml", body)
    messages = problems_of(m)
    assert any(expected in message for message in messages), messages
    assert all(message.startswith(str(m)) for message in messages)


def test_all_problems_are_reported_together_with_lines(folder: Path) -> None:
    m = write(
        folder / "night.yaml",
        """
        params:
          style_type: GENERAL
        grid:
          image_file: [photos/a.jpg]
          prompt: [fine]
          seed:
            - 101
            - 5
          resolution: [RESOLUTION_1_1]
        """,
    )
    messages = problems_of(m)
    assert f"{m}:8: seed 5 is out of range 100..999999" in messages
    assert any(message.startswith(f"{m}:9: resolution") for message in messages)


def test_values_from_files_and_seed_count(folder: Path) -> None:
    write(folder / "prompts.txt", "# comment\nfirst\n\nsecond\n")
    m = write(
        folder / "m.yaml",
        """
        grid:
          image_file: [photos/a.jpg]
          prompt: {file: prompts.txt}
          seed: {count: 4}
        """,
    )
    jobs = list(grid.expand(manifest.load(m)))
    assert len(jobs) == 8
    assert {job.params["prompt"] for job in jobs} == {"first", "second"}
    seeds = [job.params["seed"] for job in jobs]
    assert all(100 <= seed <= 999_999 for seed in seeds)
    again = [job.params["seed"] for job in grid.expand(manifest.load(m))]
    assert seeds == again  # the same manifest always gives the same seeds


def test_rows_axis_crosses_csv_rows_with_other_axes(folder: Path) -> None:
    (folder / "table.csv").write_text(
        '\ufeffprompt,style_type\n"a, quoted, prompt",ANIME\nplain,REALISTIC\n', encoding="utf-8"
    )
    m = write(
        folder / "m.yaml",
        """
        grid:
          image_file: [photos/a.jpg, photos/b.PNG]
          rows: table.csv
          seed: [101, 202]
        """,
    )
    jobs = list(grid.expand(manifest.load(m)))
    assert len(jobs) == 2 * 2 * 2
    assert {(j.params["prompt"], j.params["style_type"]) for j in jobs} == {
        ("a, quoted, prompt", "ANIME"),
        ("plain", "REALISTIC"),
    }


def test_csv_manifest_each_row_is_a_job(folder: Path) -> None:
    m = folder / "jobs.csv"
    m.write_text(
        "\ufeffimage_file,prompt,seed,color_palette\n"
        'photos/a.jpg,"hello, world",101,EMBER\n'
        "photos/b.PNG,second,,\n",
        encoding="utf-8",
    )
    jobs = list(grid.expand(manifest.load(m)))
    assert [j.params["prompt"] for j in jobs] == ["hello, world", "second"]
    assert jobs[0].params["seed"] == 101 and jobs[0].params["color_palette"] == {"name": "EMBER"}
    assert "seed" not in jobs[1].params and "color_palette" not in jobs[1].params


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("image_file,prompt\nphotos/a.jpg\n", "jobs.csv:2 (row 1): row has 1 fields but the header has 2"),
        ("image_file\nphotos/a.jpg\n", "jobs.csv:2 (row 1): prompt is required"),
        ("image_file,prompt,seed\nphotos/a.jpg,x,101\nphotos/a.jpg,y,7\n", "jobs.csv:3 (row 2): seed 7 is out of range"),
        ("image_file,prompt,sede\nphotos/a.jpg,x,101\n", "unknown parameter 'sede' (did you mean 'seed'?)"),
        ("image_file,prompt,prompt\nphotos/a.jpg,x,y\n", "blank or repeated names"),
        ("", "CSV file is empty"),
        ("image_file,prompt\n", "CSV manifest has no rows"),
    ],
)  # fmt: skip
def test_csv_errors_name_the_row(folder: Path, text: str, expected: str) -> None:
    m = folder / "jobs.csv"
    m.write_text(text, encoding="utf-8")
    messages = problems_of(m)
    assert any(expected in message for message in messages), messages


def test_output_collision_names_both_jobs(folder: Path) -> None:
    make_image(folder / "other" / "a.png", "PNG", colour=42)
    m = write(
        folder / "m.yaml",
        """
        output: "{image}-{seed}.{ext}"
        grid:
          image_file: [photos/a.jpg, other/a.png]
          prompt: [x]
          seed: [101]
        """,
    )
    with pytest.raises(InputError) as caught:
        list(grid.expand(manifest.load(m)))
    message = str(caught.value)
    assert "same path 'a-101.{ext}'" in message
    assert "photos/a.jpg" in message and "other/a.png" in message


def test_yaml_tags_are_refused(folder: Path) -> None:
    m = write(folder / "evil.yaml", "grid: !!python/object/apply:os.system ['echo pwned']\n")
    assert any("invalid YAML" in message for message in problems_of(m))


def billion_laughs(levels: int = 9) -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    names = "abcdefghijklmnopqrstuvwxyz"
    for below, name in itertools.pairwise(names[:levels]):
        lines.append(f"{name}: &{name} [{', '.join([f'*{below}'] * 9)}]")
    return "\n".join(lines) + "\ngrid: {image_file: [photos/a.jpg], prompt: [x]}\n"


def test_an_alias_bomb_is_refused_at_once(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = write(folder / "laughs.yaml", billion_laughs())
    started = time.perf_counter()
    messages = problems_of(m)
    assert time.perf_counter() - started < 2
    assert len(messages) == 1 and messages[0].startswith(f"{m}:7: ")
    assert "aliases expand too far" in messages[0]
    started = time.perf_counter()
    assert main(["plan", str(m)]) == 2
    assert time.perf_counter() - started < 2
    err = capsys.readouterr().err
    assert str(m) in err and "aliases expand too far" in err


def test_aliases_below_the_bound_and_self_reference(folder: Path) -> None:
    fine = billion_laughs(levels=5)  # 9**5 strings: well under a million nodes
    assert yaml_lines.load(fine)[0]["e"][0][0][0][0][0] == "lol"
    with pytest.raises(yaml_lines.YamlProblem, match="aliases expand too far"):
        yaml_lines.load(billion_laughs(levels=7))  # 9**7: past the bound
    with pytest.raises(yaml_lines.YamlProblem, match="refers to itself"):
        yaml_lines.load("a: &a [1, *a]\n")


def test_merge_keys_own_keys_win(folder: Path) -> None:
    m = write(
        folder / "m.yaml",
        """
        base: &base {style_type: ANIME, seed: 101}
        params: {<<: *base, seed: 202}
        grid:
          image_file: [photos/a.jpg]
          prompt: [x]
        jobs:
          - {<<: *base, image_file: photos/b.PNG, prompt: y}
        """,
    )
    jobs = list(grid.expand(manifest.load(m)))
    assert [(j.params["style_type"], j.params["seed"]) for j in jobs] == [
        ("ANIME", 202),  # the grid, over params: its own seed wins over the merged one
        ("ANIME", 101),  # the explicit job merges base after params
    ]
    # several merged mappings: the first listed wins among them, own keys over all
    data, lines = yaml_lines.load(
        "a: &a {x: 1}\nb: &b {x: 2, y: 3}\nc: {<<: [*a, *b], z: 4, y: 5}\n"
    )
    assert data["c"] == {"x": 1, "y": 5, "z": 4}
    assert lines[("c", "x")] == 1 and lines[("c", "y")] == 3


def test_a_key_written_twice_by_hand_is_still_an_error(folder: Path) -> None:
    m = write(
        folder / "m.yaml",
        """
        base: &base {style_type: ANIME}
        params: {<<: *base, seed: 202, seed: 303}
        grid: {image_file: [photos/a.jpg], prompt: [x]}
        """,
    )
    assert any(f"{m}:2: key 'seed' appears twice" in message for message in problems_of(m))
    unused = write(
        folder / "n.yaml", "base: {seed: 101}\ngrid: {image_file: [photos/a.jpg], prompt: [x]}\n"
    )
    assert any("unknown key 'base'" in message for message in problems_of(unused))


def test_an_output_path_leaving_out_is_refused_before_anything_is_sent(
    folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    m = write(
        folder / "m.yaml",
        """
        output: 'a/.{seed:.0}./.{seed:.0}./x-{job_id}.{ext}'
        grid: {image_file: [photos/a.jpg], prompt: [x], seed: [101]}
        """,
    )
    loaded = manifest.load(m)  # the template itself is well formed ...
    assert next(grid.expand(loaded, check_paths=False)).output.startswith("a/../../x-")
    with pytest.raises(InputError) as caught:  # ... the path it gives is not
        list(grid.expand(loaded))
    message = str(caught.value)
    assert message.startswith(f"{m}: ") and "'a/../../x-" in message
    assert "contains '..', which would leave the output folder" in message

    assert main(["plan", str(m)]) == 2
    assert "contains '..'" in capsys.readouterr().err
    monkeypatch.setenv("SEGMIND_API_KEY", "k")
    monkeypatch.setenv("SEGMIND_API_BASE", "http://127.0.0.1:9/v1")  # nothing listens
    out = folder / "out"
    assert main(["run", str(m), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{m}: output template" in err
    assert not out.exists()  # no ledger, no request


def test_dot_only_names_are_refused(folder: Path) -> None:
    m = write(
        folder / "m.yaml",
        "output: '{seed:.0}.../{job_id}.{ext}'\n"
        "grid: {image_file: [photos/a.jpg], prompt: [x], seed: [101]}\n",
    )
    with pytest.raises(InputError, match=r"only dots \('...'\)"):
        list(grid.expand(manifest.load(m)))


def test_template_with_too_much_fixed_text_is_refused(folder: Path) -> None:
    long_name = "x" * 130
    m = write(
        folder / "m.yaml",
        f"output: '{long_name}-{{job_id}}.{{ext}}'\ngrid: {{image_file: [photos/a.jpg], prompt: [x]}}\n",
    )
    assert any("has too much fixed text" in message for message in problems_of(m))
