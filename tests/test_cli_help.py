"""`--help` for people: every subcommand says what it does, every option its default."""

from __future__ import annotations

import argparse
import re

import pytest

from batchgen import commands
from batchgen.cli import build_parser, main


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    choices: dict[str, argparse.ArgumentParser] = found[0].choices
    return choices


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--help"])
    assert caught.value.code == 0
    return capsys.readouterr().out


def option_entries(text: str) -> dict[str, str]:
    """Each option's entry in a --help, its lines joined: `--timeout TIMEOUT ... (default: 120)`."""
    entries: dict[str, str] = {}
    flags: list[str] = []
    for line in text.splitlines():
        if line.startswith("  -"):
            names = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
            flags = re.findall(r"(?<!\S)--?[\w-]+", names)
            entries.update(dict.fromkeys(flags, line))
        elif flags and line.startswith("    "):
            entries.update({flag: f"{entries[flag]} {line}" for flag in flags})
        else:
            flags = []
    return {flag: " ".join(entry.split()) for flag, entry in entries.items()}


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_subcommand_describes_itself_and_its_defaults(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sub = subcommands()[name]
    text = help_text(capsys, name)
    description = text.split("\n\n")[1].strip()  # after the usage
    assert description and "\n" not in description and description == sub.description
    entries = option_entries(text)
    for action in sub._actions:
        if action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        default = action.default
        if not action.option_strings or default is None or default is False:
            continue  # positionals, flags that are off, options with no default
        if default == argparse.SUPPRESS:
            continue  # --help itself
        entry = entries[action.option_strings[-1]]
        assert "default" in entry.lower(), entry


def test_run_shows_the_figures_people_ask_about(capsys: pytest.CaptureFixture[str]) -> None:
    entries = option_entries(help_text(capsys, "run"))
    assert entries["--concurrency"].endswith("(default: 64)")
    assert entries["--max-attempts"].endswith("(default: 6)")
    assert entries["--timeout"].endswith("(default: 120)")
    assert entries["--confirm-above"].endswith("(default: 5)")
    assert "default 0" in entries["--wait-lock"]  # said in its own words, not twice
    assert "(default:" not in entries["--wait-lock"]
    assert entries["--yes"].startswith("-y, --yes")
    demo = option_entries(help_text(capsys, "demo"))
    assert demo["--out"].endswith("output folder (default: demo-out)")
    assert demo["--concurrency"].endswith("(default: 4)")


def test_every_option_that_shapes_a_run_is_repeated_by_the_resume_hint() -> None:
    """A new `run` option must be added to RESUMED_OPTIONS (or here, with a reason)."""
    not_repeated = {"--help", "--out", "--verbose"}  # --out is always in the hint; -v shapes
    # what is said, not the run
    options = {a.option_strings[-1]: a for a in subcommands()["run"]._actions if a.option_strings}
    resumed = {flag: default for flag, _, default in commands.RESUMED_OPTIONS}
    assert set(options) - not_repeated == set(resumed)
    for flag, action in options.items():
        if flag in resumed:
            assert action.default == resumed[flag], flag  # the hint knows each default
