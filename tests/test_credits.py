"""`plan --credits` and `batchgen.credits()`: the balance, and whether it covers the batch."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from pathlib import Path

import pytest

import batchgen
from batchgen import account
from batchgen.cli import main
from tests.runs import emulated, make_project

KEY = "secret-key-never-printed"


def cli(*argv: str) -> asyncio.Future[int]:
    """The CLI in a thread of its own, so the emulator on this loop keeps answering."""
    return asyncio.ensure_future(asyncio.to_thread(main, list(argv)))


async def test_the_library_reads_the_balance() -> None:
    async with emulated(credits=12.40) as served:
        balance = await batchgen.credits_async(api_key=served.api_key, api_base=served.url)
        assert balance == pytest.approx(12.40)
        assert served.stats.credit_checks == 1
        assert served.stats.requests_total == 0  # not a generation: nothing billed
        assert await asyncio.to_thread(batchgen.credits, served.api_key, served.url) == 12.40
    async with emulated() as served:  # the emulator's unlimited account
        assert math.isinf(await batchgen.credits_async(served.api_key, served.url))
    assert "credits" in batchgen.__all__


async def test_plan_credits_when_the_balance_falls_short(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    m = make_project(tmp_path, images=1, prompts=24, seeds=10)  # 240 jobs at $0.063
    async with emulated(credits=12.40) as served:
        monkeypatch.setenv("SEGMIND_API_KEY", served.api_key)
        assert await cli("plan", str(m), "--credits", "--api-base", served.url) == 0
        text = capsys.readouterr().out
        assert "credits    balance $12.40 covers 196 of 240 images ($15.12)" in text
        assert await cli("plan", str(m), "--credits", "--api-base", served.url, "--json") == 0
        figures = json.loads(capsys.readouterr().out)
        assert (figures["credits"], figures["credits_cover"], figures["to_run"]) == (12.4, 196, 240)


async def test_plan_credits_when_the_balance_covers_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = make_project(tmp_path, images=1, prompts=24, seeds=10)
    async with emulated(credits=20.0, api_key=KEY) as served:
        key_file = tmp_path / "key"
        key_file.write_text(KEY + "\n")
        argv = (
            "plan",
            str(m),
            "--credits",
            "--api-base",
            served.url,
            "--api-key-file",
            str(key_file),
        )
        assert await cli(*argv) == 0
    assert "credits    balance $20.00 covers all 240 images ($15.12)" in capsys.readouterr().out


async def test_plan_credits_with_a_wrong_key_exits_3_and_never_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    monkeypatch.setenv("SEGMIND_API_KEY", KEY)
    async with emulated(credits=5.0) as served:
        assert await cli("plan", str(m), "--credits", "--api-base", served.url) == 3
    captured = capsys.readouterr()
    assert "answered HTTP 401: the API key was refused" in captured.err
    assert KEY not in captured.err + captured.out
    assert captured.out == ""  # no half a plan


async def test_plan_credits_against_nothing_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    monkeypatch.setenv("SEGMIND_API_KEY", KEY)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    assert await cli("plan", str(m), "--credits", "--api-base", url) == 3
    assert "cannot be reached" in capsys.readouterr().err


def test_plan_credits_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    assert main(["plan", str(m), "--credits"]) == 2  # no key
    assert "SEGMIND_API_KEY is not set" in capsys.readouterr().err
    monkeypatch.setenv("SEGMIND_API_KEY", KEY)
    assert main(["plan", str(m), "--credits", "--api-base", "nowhere"]) == 2
    assert "is not an http(s) URL" in capsys.readouterr().err
    assert main(["plan", str(m)]) == 0  # without --credits: no key, no network needed


def test_the_coverage_line() -> None:
    assert (
        account.coverage_line(12.40, 0.063, 240)
        == "balance $12.40 covers 196 of 240 images ($15.12)"
    )
    assert (
        account.coverage_line(15.12, 0.063, 240) == "balance $15.12 covers all 240 images ($15.12)"
    )
    assert account.coverage_line(0.0, 0.063, 1) == "balance $0.00 covers 0 of 1 image ($0.06)"
    assert account.coverage_line(3.0, 0.063, 0) == "balance $3.00; nothing to run"
    assert (
        account.coverage_line(math.inf, 0.063, 2) == "balance unlimited covers all 2 images ($0.13)"
    )


def test_answers_without_a_balance_are_service_errors() -> None:
    assert account.parse_balance(b'{"credits": 12.345, "free-credits": 0}') == 12.345
    assert account.parse_balance(b'{"credits": "7.5"}') == 7.5
    for bad in (b"<html>", b"{}", b'{"credits": true}', b'{"credits": "lots"}'):
        with pytest.raises(batchgen.ServiceError, match="answered without one"):
            account.parse_balance(bad)
