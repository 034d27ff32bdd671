"""The HTTP layer against hostile servers: redirects, cut and oversized bodies, long
waits asked for, kept-alive connections the server drops, bad API bases. Each case is a
whole run against a small server (tests/hostile.py); assertions are on the files, the
ledger, the totals and what the server received."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

import batchgen
from batchgen import api, grid, ledger, manifest, retry
from batchgen.cli import main
from batchgen.client import Answer
from batchgen.errors import ApiError, ApiStatusError, TransportError
from batchgen.ledger import LedgerWriter
from batchgen.pacing import Pacer, RetryBudget
from batchgen.runner import Runner, RunOptions
from batchgen.stops import Stop, StopReason
from tests.helpers import image_bytes
from tests.hostile import (
    JPEG,
    KEY,
    AndClose,
    Connection,
    Seen,
    raw_server,
    read_request,
    response,
    run_against,
    scripted,
    web_server,
)
from tests.runs import FakeSleep, lines, make_project

PRICE = 0.063
PNG = image_bytes("PNG", size=(40, 30))
WEBP = image_bytes("WEBP", size=(40, 30))


def ledger_text(out: Path) -> str:
    return (out / "ledger.jsonl").read_text()


# -- 1. the key goes to the API only --------------------------------------------------


@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirect_is_not_followed_and_stops_the_run(tmp_path: Path, status: int) -> None:
    m = make_project(tmp_path, images=2, prompts=2, seeds=2)  # 8 jobs
    out = tmp_path / "out"

    async def elsewhere(request: web.Request, seen: Seen) -> web.StreamResponse:
        return web.Response(body=JPEG, content_type="image/jpeg")

    async with web_server(elsewhere) as (other, taken):
        # the Location carries the key, the body echoes it: neither may surface anywhere
        target = other.replace("/v1", f"/collect?key={KEY}")

        async def redirect(request: web.Request, seen: Seen) -> web.StreamResponse:
            echoed = f"moved; your key was {request.headers['x-api-key']}"
            return web.Response(status=status, headers={"Location": target}, text=echoed)

        async with web_server(redirect) as (api_base, seen):
            result = await run_against(api_base, m, out, concurrency=2)
    assert taken.requests == 0  # not one request, POST or GET, reached the other host
    assert 1 <= seen.requests <= 2  # the pool stopped at the first answer
    totals = result
    assert totals.stopped is not None and totals.stopped.reason is StopReason.REDIRECT
    other_host = other.removesuffix("/v1")
    assert f"HTTP {status}" in totals.stopped.message and other_host in totals.stopped.message
    assert KEY not in totals.stopped.message
    assert (totals.spent, totals.possibly_billed, totals.succeeded, totals.failed) == (0, 0, 0, 0)
    records = lines(out)
    interrupted = [r for r in records if r["status"] == "interrupted"]
    assert interrupted and all(r["billed"] == "no" and r["cost"] == 0 for r in interrupted)
    assert KEY not in ledger_text(out)


async def test_the_key_is_kept_out_of_error_messages(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"

    async def echo(request: web.Request, seen: Seen) -> web.StreamResponse:
        return web.json_response({"error": f"bad seed for key {KEY}"}, status=400)

    async with web_server(echo) as (api_base, seen):
        result = await run_against(api_base, m, out)
    assert seen.keys == [KEY] and result.failed == 1
    assert KEY not in ledger_text(out) and KEY not in str(result.failures)
    failed = next(r for r in lines(out) if r["status"] == "failed")
    assert failed["error"] == "bad seed for key [the API key]"


# -- 2. only whole images count -------------------------------------------------------


def png_cut(data: bytes) -> bytes:
    return data[:-12]  # the IEND chunk gone


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (JPEG, None),
        (PNG, None),
        (WEBP, None),
        (JPEG[: len(JPEG) // 2], "JPEG is cut short"),
        (JPEG[:-1], "JPEG is cut short"),
        (JPEG + b"\x00", "JPEG is cut short"),  # strict: the image ends at its EOI
        (png_cut(PNG), "PNG is cut short"),
        (PNG[: len(PNG) // 2], "PNG is cut short"),
        (WEBP[:-1], "WEBP is cut short"),
        (WEBP + b"\x00\x00", "WEBP is cut short"),
        (b"RIFF\x00\x00\x00\x00WEBP", "WEBP is cut short"),
        (b"RIFF\x04\x00\x00\x00WEBP", None),  # the smallest size RIFF agrees with
        (b"", "not an image (empty)"),
        (b"<html><body>Welcome</body></html>", "not an image (33 bytes starting '<html>"),
        (b'{"status": "ok"}', "not an image"),
        (b"\xff\xd8", "not an image"),  # too short to be a JPEG at all
    ],
)
def test_image_problem(data: bytes, problem: str | None) -> None:
    found = api.image_problem(data)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


HALF = JPEG[: len(JPEG) // 2]
CUT_ANSWERS = {
    "no Content-Length, cut, closed": response(
        "200 OK", HALF, "Content-Type: image/jpeg", length=False
    ),
    "Content-Length says more, closed": AndClose(
        response("200 OK", HALF, f"Content-Length: {len(JPEG)}", length=False)
    ),
    "chunked, cut, closed": AndClose(
        response(
            "200 OK",
            b"%x\r\n" % len(HALF) + HALF + b"\r\n",
            "Transfer-Encoding: chunked",
            length=False,
        )
    ),
}


@pytest.mark.parametrize("answer", CUT_ANSWERS.values(), ids=CUT_ANSWERS.keys())
async def test_a_cut_image_is_billed_and_retried(tmp_path: Path, answer: bytes) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    async with raw_server(scripted(answer)) as (api_base, seen):
        result = await run_against(api_base, m, out, sleep=FakeSleep())
    totals = result
    assert (totals.succeeded, totals.failed, totals.requests, seen.requests) == (1, 0, 2, 2)
    assert totals.spent == pytest.approx(2 * PRICE) and totals.possibly_billed == 0
    records = lines(out)
    retry = next(r for r in records if r["status"] == "retry")
    assert (retry["http_status"], retry["billed"], retry["cost"]) == (200, "billed", PRICE)
    done = next(r for r in records if r["status"] == "succeeded")
    assert api.image_problem((out / done["output"]).read_bytes()) is None


async def test_cut_images_fail_the_job_after_max_attempts(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    cut = CUT_ANSWERS["no Content-Length, cut, closed"]
    async with raw_server(scripted(*[cut] * 10)) as (api_base, seen):
        result = await run_against(api_base, m, out, sleep=FakeSleep(), max_attempts=3)
    assert seen.requests == 3 and result.failed == 1
    assert result.spent == pytest.approx(3 * PRICE)
    failed = next(r for r in lines(out) if r["status"] == "failed")
    assert (failed["retryable"], failed["billed"], failed["attempts"]) == (True, "billed", 3)
    assert "cut short" in failed["error"]
    assert not list(out.rglob("*.jpg"))


@pytest.mark.parametrize(
    "body", [b"<!doctype html><title>Sign in</title>", b""], ids=["html", "empty"]
)
async def test_a_200_that_is_not_an_image_is_billed_and_rerun_later(
    tmp_path: Path, body: bytes
) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    async with raw_server(scripted(response("200 OK", body, "Content-Type: text/html"))) as (
        api_base,
        seen,
    ):
        first = await run_against(api_base, m, out, sleep=FakeSleep())
        assert seen.requests == 1  # not retried at once: the next one would likely be the same
        assert first.failed == 1 and first.spent == pytest.approx(PRICE)
        failed = next(r for r in lines(out) if r["status"] == "failed")
        assert (failed["http_status"], failed["billed"], failed["retryable"]) == (
            200,
            "billed",
            True,
        )
        second = await run_against(api_base, m, out, sleep=FakeSleep())  # the same out folder
    assert seen.requests == 2 and second.succeeded == 1


def _peak_rss_reset() -> bool:
    """Reset VmHWM to the current RSS (Linux); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.parametrize("declared", [False, True], ids=["streamed", "declared"])
async def test_an_answer_over_the_cap_fails_without_filling_memory(
    tmp_path: Path, declared: bool
) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    size, chunk = 200 * 1024 * 1024, b"\xff\xd8\xff" + bytes(1024 * 1024 - 3)
    sent = [0]

    async def flood(request: web.Request, seen: Seen) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        if declared:
            answer.content_length = size
        await answer.prepare(request)
        with contextlib.suppress(ConnectionError):
            while sent[0] < size:
                await answer.write(chunk)
                sent[0] += len(chunk)
        return answer

    if not _peak_rss_reset():
        pytest.skip("cannot reset the peak RSS here")
    before = _peak_rss_bytes()
    async with web_server(flood) as (api_base, seen):
        result = await run_against(api_base, m, out, sleep=FakeSleep())
    growth = _peak_rss_bytes() - before
    assert growth < 100 * 1024 * 1024, f"peak RSS grew by {growth / 2**20:.0f} MB"
    assert sent[0] < size  # the client stopped reading; the server could not finish
    assert seen.requests == 1 and result.failed == 1
    assert result.spent == pytest.approx(PRICE)
    failed = next(r for r in lines(out) if r["status"] == "failed")
    assert (failed["billed"], failed["retryable"]) == ("billed", False)
    assert "cap" in failed["error"]


# -- 3. a 429 never stalls a night ----------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Retry-After": "3600"},
        {"x-rate-limit-reset-at-utc": "2031-01-01T00:00:00Z"},
    ],
)
async def test_a_long_wait_asked_for_is_capped(
    tmp_path: Path, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"

    async def limited(request: web.Request, seen: Seen) -> web.StreamResponse:
        if seen.requests <= 3:
            return web.json_response({"error": "rate limited"}, status=429, headers=headers)
        return web.Response(body=JPEG, content_type="image/jpeg")

    sleep = FakeSleep()
    with caplog.at_level(logging.WARNING, logger="batchgen"):
        async with web_server(limited) as (api_base, seen):
            result = await run_against(api_base, m, out, sleep=sleep)
    assert result.succeeded == 1 and seen.requests == 4
    assert max(sleep.pauses) == pytest.approx(60.0)  # never the hour (or years) asked for
    assert sleep.now <= 3 * 60 + 5
    capped = [r.getMessage() for r in caplog.records if "capped" in r.getMessage()]
    assert len(capped) == 1 and capped[0].startswith("waiting 60 s: the service asked for")


@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan", "Thu, 01 Jan 2015 00:00:00 GMT"])
async def test_a_useless_retry_after_means_our_own_backoff(tmp_path: Path, value: str) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"

    async def limited(request: web.Request, seen: Seen) -> web.StreamResponse:
        if seen.requests <= 4:
            return web.json_response({"error": "slow"}, status=429, headers={"Retry-After": value})
        return web.Response(body=JPEG, content_type="image/jpeg")

    sleep = FakeSleep()
    async with web_server(limited) as (api_base, seen):
        result = await run_against(api_base, m, out, sleep=sleep, rpm=6000)
    assert result.succeeded == 1 and seen.requests == 5
    assert [p for p in sleep.pauses if p >= 1.0][:4] == [2.0, 4.0, 8.0, 16.0]


# -- 4. a request that never left is not possibly billed ------------------------------


def closes_idle_connections(delays: list[float]) -> Connection:
    """Answers one request per connection, keep-alive as HTTP/1.1 implies, no
    `Connection: close`, then drops the connection: at once, or after a few ms idle,
    by turns. A request sent on it meanwhile is never read."""

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen
    ) -> None:
        request = await read_request(reader)
        if request is None:
            return
        seen.requests += 1
        seen.keys.append(request.header("x-api-key") or "")
        writer.write(response("200 OK", JPEG, "Content-Type: image/jpeg"))
        await writer.drain()
        seen.answered += 1
        await asyncio.sleep(delays[seen.answered % len(delays)])

    return handle


async def test_kept_alive_connections_closed_silently_cost_nothing(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=10, prompts=5, seeds=4)  # 200 jobs
    out = tmp_path / "out"
    handler = closes_idle_connections([0.0, 0.002, 0.01])
    async with raw_server(handler) as (api_base, seen):
        result = await run_against(api_base, m, out, sleep=FakeSleep(), concurrency=8)
    totals = result
    assert (totals.succeeded, totals.failed, totals.stopped) == (200, 0, None)
    assert seen.requests == 200  # every image made once, none twice
    assert totals.possibly_billed == 0 and totals.spent == pytest.approx(200 * PRICE)
    records = lines(out)
    assert not [r for r in records if r.get("billed") in ("maybe", "billed")]
    # what failed went out on a connection the server had closed: sent again at once
    # (after MAX_STALE_RESENDS in a row for one job, with a backoff), never billed
    resends = [r for r in records if r["status"] == "retry"]
    assert all(r["billed"] == "no" and r["cost"] == 0 for r in resends)
    assert all("already closed" in r["error"] for r in resends), {r["error"] for r in resends}


async def test_a_request_read_then_dropped_is_possibly_billed(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    async with raw_server(scripted(AndClose(b""))) as (api_base, seen):
        result = await run_against(api_base, m, out, sleep=FakeSleep())
    assert seen.requests == 2 and result.succeeded == 1
    assert result.possibly_billed == pytest.approx(PRICE)
    retry = next(r for r in lines(out) if r["status"] == "retry")
    assert (retry["billed"], retry["http_status"], retry["cost"]) == ("maybe", None, PRICE)
    assert "already closed" not in retry["error"]  # a new connection: it may have run


def drops_the_second_request_after(seconds: float) -> Connection:
    """Keep-alive: answers the first request on a connection, then reads the next one
    and, `seconds` later, drops the connection without a byte of answer, as a proxy's
    idle timeout cutting a long generation does. The service may have billed it."""

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen
    ) -> None:
        served = 0
        while (request := await read_request(reader)) is not None:
            seen.requests += 1
            seen.keys.append(request.header("x-api-key") or "")
            served += 1
            if served == 2:
                await asyncio.sleep(seconds)
                return
            writer.write(response("200 OK", JPEG, "Content-Type: image/jpeg"))
            await writer.drain()
            seen.answered += 1

    return handle


async def test_a_kept_alive_request_dropped_after_a_while_is_possibly_billed(
    tmp_path: Path,
) -> None:
    """Before, any reused connection that died before an answer was taken for one the
    server had closed while idle, and sent again for free: paid twice if it had run."""
    m = make_project(tmp_path, images=2, prompts=1, seeds=1)
    out = tmp_path / "out"
    handler = drops_the_second_request_after(retry.STALE_WINDOW_S + 0.5)
    async with raw_server(handler) as (api_base, seen):
        result = await run_against(api_base, m, out, sleep=FakeSleep(), concurrency=1)
    assert result.succeeded == 2 and seen.requests == 3
    assert result.possibly_billed == pytest.approx(PRICE)
    retry_line = next(r for r in lines(out) if r["status"] == "retry")
    assert (retry_line["billed"], retry_line["cost"]) == ("maybe", PRICE)
    assert "already closed" not in retry_line["error"]


# -- 5. a bad API base is a usage error -----------------------------------------------


@pytest.mark.parametrize(
    ("flag", "env"),
    [
        ("not-a-url", None),
        ("ftp://x", None),
        ("http://", None),
        ("https:///v1", None),
        ("", None),
        (None, "not-a-url"),
        (None, "ftp://x"),
        (None, "http://"),
    ],
)
def test_a_bad_api_base_is_a_usage_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flag: str | None,
    env: str | None,
) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    monkeypatch.setenv("SEGMIND_API_KEY", KEY)
    if env is not None:
        monkeypatch.setenv("SEGMIND_API_BASE", env)
    argv = ["run", str(m), "--out", str(out), "--no-progress"]
    argv += ["--api-base", flag] if flag is not None else []
    assert main(argv) == 2
    message = capsys.readouterr().err
    assert ("--api-base" if flag is not None else "SEGMIND_API_BASE") in message
    assert repr(flag if flag is not None else env) in message
    assert not out.exists()  # nothing planned, nothing written, nothing sent


# -- 6. a first 429 without --rpm is a brief slow-down --------------------------------


async def test_one_429_as_the_first_answer_costs_a_brief_slow_down(tmp_path: Path) -> None:
    """Before, the adaptive rate measured its first 10 ms, saw nothing let through and
    fell to 3 a minute: these 20 jobs took 58 s."""
    m = make_project(tmp_path, images=5, prompts=2, seeds=2)  # 20 jobs
    out = tmp_path / "out"

    async def once(request: web.Request, seen: Seen) -> web.StreamResponse:
        if seen.requests == 1:
            return web.json_response({"error": "slow down"}, status=429)
        await asyncio.sleep(0.01)
        return web.Response(body=JPEG, content_type="image/jpeg")

    began = time.monotonic()
    async with web_server(once) as (api_base, seen):
        result = await run_against(api_base, m, out)
    took = time.monotonic() - began
    assert (result.succeeded, result.throttled, seen.requests) == (20, 1, 21)
    assert took < 3.0, f"20 jobs took {took:.1f} s after one 429"


# -- 7. outages: the pool waits, probing; the retry budget is for a broken service ----


def closed_port() -> str:
    """An api_base on a loopback port nobody listens on: every connect is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def test_a_sustained_outage_stops_the_run_at_the_outage_limit(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=5, prompts=4, seeds=2)  # 40 jobs
    out = tmp_path / "out"
    sleep = FakeSleep()
    result = await run_against(closed_port(), m, out, sleep=sleep, concurrency=4,
                               outage_limit=60.0)  # fmt: skip
    totals = result
    assert totals.stopped == Stop(
        StopReason.OUTAGE, "the service was unreachable for 1m 00s (connection refused); stopping"
    )
    assert (totals.succeeded, totals.failed, totals.not_run) == (0, 0, 40)
    assert totals.possibly_billed == 0 and totals.spent == 0  # it never reached the service
    # the failures that opened the breaker, then one probe at 1, 2, 4 ... s (jittered)
    assert totals.requests <= 4 + 10, totals.requests
    records = lines(out)
    probes = [r for r in records if r["status"] == "started" and r.get("probe")]
    assert 5 <= len(probes) <= 10
    assert not [r for r in records if r["status"] == "failed"]  # not the jobs' fault
    assert [r["status"] for r in records].count("interrupted") == 1  # the last probe's job


def test_the_cli_gives_up_after_outage_limit_with_exit_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    m = make_project(tmp_path, images=2, prompts=1, seeds=1)
    monkeypatch.setenv("SEGMIND_API_KEY", KEY)
    argv = ["run", str(m), "--out", str(tmp_path / "out"), "--api-base", closed_port(),
            "--no-progress", "--outage-limit", "1.5"]  # fmt: skip
    began = time.monotonic()
    assert main(argv) == 3
    assert time.monotonic() - began < 10
    printed = capsys.readouterr().out
    assert "the service was unreachable for 2s (connection refused); stopping" in printed
    assert "not run     2" in printed


async def test_a_service_answering_500_to_everything_is_stopped_by_the_retry_budget(
    tmp_path: Path,
) -> None:
    """Reachable and broken, answering at once: not an outage (the breaker would close
    on the first probe); the retry budget stops the run within a few requests."""
    m = make_project(tmp_path, images=5, prompts=10, seeds=10)  # 500 jobs
    out = tmp_path / "out"

    async def broken(request: web.Request, seen: Seen) -> web.StreamResponse:
        return web.json_response({"error": "internal error"}, status=500)

    async with web_server(broken) as (api_base, seen):
        result = await run_against(api_base, m, out, sleep=FakeSleep())
    assert result.stopped is not None and result.stopped.reason is StopReason.RETRY_BUDGET
    assert seen.requests <= 20, seen.requests  # 20 before the breaker too
    assert result.not_run == 500 and result.failed == 0


# -- 8. a stop ends every wait at once ------------------------------------------------


async def until_ledger(out: Path, holds: Callable[[list[str]], bool]) -> None:
    """Until `holds` is true of the ledger's statuses (and "outage" for each line that
    says it): a wait on the run's own record, never a fixed sleep."""
    deadline = time.monotonic() + 10.0
    while True:
        try:
            got = [r["status"] for r in lines(out)] + ["outage" for r in lines(out)
                                                       if r.get("outage")]  # fmt: skip
        except (FileNotFoundError, ValueError):  # not there yet; a line being written
            got = []
        if holds(got):
            return
        assert time.monotonic() < deadline, f"the ledger never got there: {got}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("rpm", [None, 600.0], ids=["adaptive", "fixed"])
async def test_a_signal_ends_a_long_429_pause_at_once(tmp_path: Path, rpm: float | None) -> None:
    m = make_project(tmp_path, images=4, prompts=2, seeds=1)  # 8 jobs
    out = tmp_path / "out"

    asked = asyncio.Event()

    async def limited(request: web.Request, seen: Seen) -> web.StreamResponse:
        asked.set()
        return web.json_response({"error": "slow"}, status=429, headers={"Retry-After": "60"})

    async with web_server(limited) as (api_base, seen):
        run = asyncio.create_task(
            run_against(api_base, m, out, rpm=rpm, concurrency=2, handle_signals=True)
        )
        await asked.wait()
        # every request sent has its 429 recorded: the pool is in its 60 s pause now
        await until_ledger(out, lambda got: 0 < got.count("started") == got.count("retry"))
        before = seen.requests
        os.kill(os.getpid(), signal.SIGTERM)
        began = time.monotonic()
        result = await asyncio.wait_for(run, timeout=10)
        took = time.monotonic() - began
    assert took < 1.0, f"the run took {took:.1f} s to stop"
    assert result.stopped == Stop(StopReason.SIGNAL, "interrupted by SIGTERM")
    assert seen.requests == before and result.not_run == 8


async def test_a_signal_ends_the_breakers_pause_at_once(tmp_path: Path) -> None:
    m = make_project(tmp_path, images=2, prompts=1, seeds=1)
    out = tmp_path / "out"
    run = asyncio.create_task(
        run_against(closed_port(), m, out, concurrency=2, handle_signals=True)
    )
    await until_ledger(out, lambda got: "outage" in got)  # the breaker is open, waiting to probe
    os.kill(os.getpid(), signal.SIGTERM)
    began = time.monotonic()
    result = await asyncio.wait_for(run, timeout=10)
    assert time.monotonic() - began < 1.0
    assert (
        result.stopped == Stop(StopReason.SIGNAL, "interrupted by SIGTERM") and result.not_run == 2
    )
    assert any(r.get("outage") for r in lines(out))  # it was the breaker's pause


# -- 9. a free resend is the same attempt ---------------------------------------------


class CountingBudget(RetryBudget):
    firsts = 0

    def first_attempt(self) -> None:
        self.firsts += 1
        super().first_attempt()


class Scripted:
    """A client whose first answers are the given errors, then whole JPEGs."""

    def __init__(self, *errors: ApiError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def generate(self, model: str, body: bytes, *, fresh: bool = False) -> Answer:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Answer(JPEG, "jpeg", {})


@pytest.mark.parametrize(
    "errors",
    [
        [TransportError("dead kept-alive connection", sent=False, stale=True)] * 2,
        [ApiStatusError(429, "slow down")],
    ],
    ids=["resent", "throttled"],
)
async def test_a_resend_is_not_a_second_first_attempt(
    tmp_path: Path, errors: list[ApiError]
) -> None:
    m = make_project(tmp_path, images=1, prompts=1, seeds=1)
    out = tmp_path / "out"
    loaded = manifest.load(m)
    budget, client, sleep = CountingBudget(), Scripted(*errors), FakeSleep()
    async with LedgerWriter(out / ledger.DEFAULT_NAME) as writer:
        runner = Runner(model=loaded.model, price=PRICE, client=client,  # type: ignore[arg-type]
                        ledger=writer, state=ledger.LedgerState(), out=out,
                        options=RunOptions(concurrency=1),
                        pacer=Pacer(6000, sleep=sleep, clock=sleep.clock),
                        budget=budget, sleep=sleep)  # fmt: skip
        totals = await runner.run(grid.expand(loaded))
    assert totals.succeeded == 1 and client.calls == len(errors) + 1
    assert budget.firsts == 1  # the budget saw one first attempt, not one per send
    started = [r for r in lines(out) if r["status"] == "started"]
    assert [r["attempt"] for r in started] == [1] * len(started)  # none of them used one up
    if isinstance(errors[0], TransportError):
        assert [r.get("resend", False) for r in started] == [False, True, True]
    assert ledger.load_state([out / ledger.DEFAULT_NAME]).records  # the scanner reads it


@pytest.mark.parametrize(
    ("header", "each"),
    [("0.1", 0.1), ("0", 0.0), ("abc", api.PRICE_USD), ("-1", api.PRICE_USD),
     ("nan", api.PRICE_USD), (None, api.PRICE_USD)],
)  # fmt: skip
async def test_the_money_is_what_x_cost_says_the_service_charged(
    tmp_path: Path, header: str | None, each: float
) -> None:
    """A 200's `x-cost` (USD credits) is the money in the ledger, the result and the
    report; the manifest's price stands in only when the answer says no usable figure."""
    m = make_project(tmp_path, images=2, prompts=1, seeds=2)  # 4 jobs
    out = tmp_path / "out"

    async def charging(request: web.Request, seen: Seen) -> web.StreamResponse:
        headers = {"x-cost": header} if header is not None else {}
        return web.Response(body=JPEG, content_type="image/jpeg", headers=headers)

    async with web_server(charging) as (api_base, _seen):
        result = await run_against(api_base, m, out, concurrency=2)
    assert result.succeeded == 4 and result.spent == pytest.approx(4 * each)
    assert [r["cost"] for r in lines(out) if r["status"] == "succeeded"] == [each] * 4
    assert batchgen.report(out).spent == pytest.approx(4 * each)
