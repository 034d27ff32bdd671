"""Manifests as people write them: spreadsheet exports, extra columns, YAML's booleans.

Each through `batchgen plan`, as a user meets it: the exit code and what it prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchgen.cli import main
from tests.helpers import make_image, write


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    make_image(tmp_path / "photos" / "a.jpg", colour=1)
    make_image(tmp_path / "photos" / "b.jpg", colour=2)
    return tmp_path


def listed(capsys: pytest.CaptureFixture[str], manifest: Path) -> list[dict[str, object]]:
    """The jobs `plan --list` gives (exit 0)."""
    assert main(["plan", str(manifest), "--list"]) == 0, capsys.readouterr().err
    return [json.loads(line)["params"] for line in capsys.readouterr().out.splitlines()]


def refused(capsys: pytest.CaptureFixture[str], manifest: Path) -> list[str]:
    """What `plan` prints for a manifest it refuses (exit 2, nothing on stdout)."""
    assert main(["plan", str(manifest)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return [line.removeprefix("batchgen: ") for line in captured.err.splitlines()]


# -- CSV delimiters -------------------------------------------------------------


@pytest.mark.parametrize("sep", [",", ";", "\t"], ids=["comma", "semicolon", "tab"])
def test_a_csv_manifest_in_any_delimiter(
    folder: Path, capsys: pytest.CaptureFixture[str], sep: str
) -> None:
    m = folder / "jobs.csv"
    rows = [
        ["image_file", "prompt", "seed", "style_type"],
        ["photos/a.jpg", '"hello, world; again\tand again"', "101", "ANIME"],
        ["photos/b.jpg", "second", "", ""],
    ]
    m.write_text("\ufeff" + "".join(sep.join(r) + "\r\n" for r in rows), encoding="utf-8")
    jobs = listed(capsys, m)
    assert [j["prompt"] for j in jobs] == ["hello, world; again\tand again", "second"]
    assert jobs[0]["seed"] == 101 and jobs[0]["style_type"] == "ANIME"
    assert "seed" not in jobs[1] and jobs[1]["style_type"] == "GENERAL"


@pytest.mark.parametrize("sep", [",", ";", "\t"], ids=["comma", "semicolon", "tab"])
def test_rows_table_in_any_delimiter(
    folder: Path, capsys: pytest.CaptureFixture[str], sep: str
) -> None:
    (folder / "table.csv").write_text(
        f'\ufeffprompt{sep}style_type\n"a{sep} quoted{sep} prompt"{sep}ANIME\nplain{sep}REALISTIC\n',
        encoding="utf-8",
    )
    m = write(folder / "m.yaml", "grid:\n  image_file: [photos/a.jpg]\n  rows: table.csv\n")
    jobs = listed(capsys, m)
    assert [(j["prompt"], j["style_type"]) for j in jobs] == [
        (f"a{sep} quoted{sep} prompt", "ANIME"),
        ("plain", "REALISTIC"),
    ]


def test_a_header_without_delimiters_is_one_column(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "prompts.csv").write_text(
        "prompt\nA panda playing football, caricature style\na fox; in snow\n", encoding="utf-8"
    )
    m = write(folder / "m.yaml", "grid:\n  image_file: [photos/a.jpg]\n  rows: prompts.csv\n")
    jobs = listed(capsys, m)
    assert [j["prompt"] for j in jobs] == [
        "A panda playing football, caricature style",
        "a fox; in snow",
    ]


def test_semicolon_rows_still_name_the_row(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = folder / "jobs.csv"
    m.write_text("image_file;prompt;seed\nphotos/a.jpg;x;101\nphotos/a.jpg;y;7\n")
    assert refused(capsys, m) == [f"{m}:3 (row 2): seed 7 is out of range 100..999999"]
    m.write_text("image_file;prompt\nphotos/a.jpg\n")
    assert refused(capsys, m) == [f"{m}:2 (row 1): row has 1 fields but the header has 2"]


# -- extra columns: rows: {file: ..., ignore: [...]} ----------------------------


def test_named_extra_columns_are_ignored(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "table.csv").write_text(
        "prompt;notes;style_type;owner\nfox;try twice;ANIME;ana\nowl;;DESIGN;bo\n"
    )
    m = write(
        folder / "m.yaml",
        """
        grid:
          image_file: [photos/a.jpg]
          rows: {file: table.csv, ignore: [notes, owner]}
        """,
    )
    jobs = listed(capsys, m)
    assert [(j["prompt"], j["style_type"]) for j in jobs] == [("fox", "ANIME"), ("owl", "DESIGN")]
    assert not any("notes" in j or "owner" in j for j in jobs)


def test_an_unknown_column_says_how_to_ignore_it(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "rows.csv").write_text("prompt,notes,sede\nfox,n1,101\nowl,n2,202\nbat,n3,303\n")
    m = write(folder / "night.yaml", "grid:\n  image_file: [photos/a.jpg]\n  rows: rows.csv\n")
    assert refused(capsys, m) == [  # once for the file, not once a row
        "rows.csv:1: unknown column 'notes': unknown parameter 'notes'"
        " (or ignore it: rows: {file: rows.csv, ignore: [notes]})",
        "rows.csv:1: unknown column 'sede': unknown parameter 'sede' (did you mean 'seed'?)"
        " (or ignore it: rows: {file: rows.csv, ignore: [sede]})",
    ]
    # with some ignored already, the suggestion adds to them
    write(
        m,
        """
        grid:
          image_file: [photos/a.jpg]
          rows: {file: rows.csv, ignore: [notes]}
        """,
    )
    assert refused(capsys, m) == [
        "rows.csv:1: unknown column 'sede': unknown parameter 'sede' (did you mean 'seed'?)"
        " (or ignore it: rows: {file: rows.csv, ignore: [notes, sede]})",
    ]


def test_an_unknown_column_of_a_csv_manifest(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = folder / "jobs.csv"
    m.write_text("image_file;prompt;my notes\nphotos/a.jpg;x;keep\n")
    assert refused(capsys, m) == [
        f"{m}:1: unknown column 'my notes': unknown parameter 'my notes' (or ignore it:"
        " name it from a YAML manifest, grid: {rows: {file: jobs.csv, ignore: [my notes]}})"
    ]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (
            "{file: rows.csv, ignore: [notes, owner]}",
            "m.yaml:3: rows: ignore names 'owner', which is not a column of rows.csv;"
            " its columns: prompt, notes",
        ),
        (
            "{file: rows.csv, ignore: [notes, nots]}",
            "m.yaml:3: rows: ignore names 'nots', which is not a column of rows.csv"
            " (did you mean 'notes'?); its columns: prompt, notes",
        ),
        (
            "{file: rows.csv, ignore: notes}",
            "m.yaml:3: rows: ignore must be a list of column names, got 'notes':"
            " rows: {file: table.csv, ignore: [notes]}",
        ),
        (
            "{file: rows.csv, ignore: [notes, 7]}",
            'm.yaml:3: rows: ignore[1] got the number 7: write it in quotes, "7"',
        ),
        (
            "{file: rows.csv, ignore: [notes, no]}",
            "m.yaml:3: rows: ignore[1] got the boolean false (YAML reads off/no/yes/on as"
            ' booleans): write it in quotes, "no"',
        ),
        (
            "{file: rows.csv, ignroe: [notes]}",
            "m.yaml:3: unknown key 'ignroe' in rows (did you mean 'ignore'?);"
            " write rows: {file: table.csv, ignore: [notes]}",
        ),
        (
            "{ignore: [notes]}",
            "m.yaml:3: rows needs a CSV file name: rows: {file: table.csv, ignore: [notes]}",
        ),
    ],
)
def test_the_ignore_option_is_checked(
    folder: Path, capsys: pytest.CaptureFixture[str], rows: str, expected: str
) -> None:
    (folder / "rows.csv").write_text("prompt,notes\nfox,n1\n")
    m = write(folder / "m.yaml", f"grid:\n  image_file: [photos/a.jpg]\n  rows: {rows}\n")
    assert refused(capsys, m) == [f"{folder}/{expected}"]


# -- YAML's booleans and numbers given to string fields ----------------------------


def test_yaml_booleans_say_to_quote(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = write(
        folder / "night.yaml",
        """
        params:
          style_type: GENERAL
        grid:
          magic_prompt_option: off
          image_file: [photos/a.jpg]
          prompt: [fox, no]
        jobs:
          - {image_file: photos/a.jpg, prompt: owl, magic_prompt_option: yes}
          - {image_file: photos/a.jpg, prompt: bat, style_type: yes}
          - {image_file: yes, prompt: bat, negative_prompt: On}
        """,
    )
    head = "got the boolean {} (YAML reads off/no/yes/on as booleans)"
    assert refused(capsys, m) == [
        f'{m}:4: magic_prompt_option {head.format("false")}: write it in quotes, "OFF"',
        f'{m}:6: prompt {head.format("false")}: write it in quotes, "no"',
        f'{m}:8: magic_prompt_option {head.format("true")}: write it in quotes, "ON"',
        f"{m}:9: style_type {head.format('true')}: style_type 'yes' is not allowed;"
        " use GENERAL, REALISTIC, DESIGN, RENDER_3D, ANIME",
        f'{m}:10: image_file {head.format("true")}: write it in quotes, "yes"',
        f'{m}:10: negative_prompt {head.format("true")}: write it in quotes, "On"',
    ]
    write(
        m,
        """
        grid:
          magic_prompt_option: "OFF"
          image_file: [photos/a.jpg]
          prompt: [fox, "no"]
        """,
    )
    jobs = listed(capsys, m)
    assert [(j["magic_prompt_option"], j["prompt"]) for j in jobs] == [
        ("OFF", "fox"),
        ("OFF", "no"),
    ]


def test_yaml_numbers_given_to_text_say_to_quote(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = write(
        folder / "m.yaml",
        """
        grid:
          image_file: [photos/a.jpg]
          prompt: [1984, 12:30]
          negative_prompt: 1.50
          resolution: 1024
        """,
    )
    assert refused(capsys, m) == [
        f'{m}:3: prompt got the number 1984: write it in quotes, "1984"',
        f'{m}:3: prompt got the number 12:30: write it in quotes, "12:30"',  # YAML 1.1: 750
        f'{m}:4: negative_prompt got the number 1.50: write it in quotes, "1.50"',
        # quoting would not make it a resolution: the rule alone
        f"{m}:5: resolution 1024 is not one of the 78 supported values (e.g. RESOLUTION_1024_1024)",
    ]
