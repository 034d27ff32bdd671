"""Target 5, scale: a million-job plan, a million-line resume scan, a 100,000-job run.

- `plan` of 100 URLs x 1,000 prompts x 10 seeds: < 30 s and < 300 MB peak RSS;
- loading a 1,000,000-line ledger (the resume scan): < 10 s;
- `run` over 100,000 zero-latency jobs: memory flat (RSS sampled as jobs finish).
Each measured in its own process, as a user would run it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batchgen import ledger
from batchgen.ledger import schema
from bench.common import KEY, emulator, machine, scratch, verdict, write_manifest


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout) of a child process."""
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command} exited {process.returncode}")
    return time.perf_counter() - began, usage.ru_maxrss / 1024, out


def million_plan(folder: Path) -> int:
    body = {"grid": {"image_file": [f"https://example.com/{i}.jpg" for i in range(100)],
                     "prompt": [f"prompt number {i}" for i in range(1000)],
                     "seed": list(range(100, 110))}}  # fmt: skip
    (folder / "million.yaml").write_text(json.dumps(body))
    wall, rss, out = timed(
        [sys.executable, "-m", "batchgen", "plan", str(folder / "million.yaml"), "--json"]
    )
    jobs = json.loads(out)["jobs"]
    return verdict(jobs == 1_000_000 and wall < 30 and rss < 300,
                   f"plan of {jobs:,} jobs: {wall:.1f}s (< 30), peak RSS {rss:.0f} MB (< 300)")  # fmt: skip


def million_lines(folder: Path) -> int:
    path = folder / "ledger.jsonl"
    with path.open("wb") as handle:
        for i in range(500_000):
            job = f"{i:032x}"
            params = {"style_type": "GENERAL", "magic_prompt_option": "AUTO", "image_weight": 50,
                      "resolution": "RESOLUTION_1024_1024", "prompt": f"prompt number {i % 1000}",
                      "seed": 100 + i % 10, "image_file": f"https://example.com/{i % 100}.jpg"}  # fmt: skip
            now = 1_795_737_600.0  # 2026-11-27T00:00:00Z: the writer's lines, by the schema
            started = schema.started(job, attempt=1, price=0.063, params=params)
            done = schema.succeeded(job, output=f"x/{i}.jpg", cost=0.063, size=1000,
                                    sha256="ab" * 32, attempts=1, headers={}, params=params)  # fmt: skip
            handle.write(ledger.encode(schema.envelope(started, now)))
            handle.write(ledger.encode(schema.envelope(done, now)))
    code = f"from pathlib import Path; from batchgen import ledger; s = ledger.load_state([Path({str(path)!r})]); print(len(s.records))"
    wall, rss, out = timed([sys.executable, "-c", code])
    return verdict(int(out) == 500_000 and wall < 10,
                   f"resume scan of 1,000,000 ledger lines ({path.stat().st_size / 1e6:.0f} MB): "
                   f"{wall:.1f}s (< 10), peak RSS {rss:.0f} MB")  # fmt: skip


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def flat_run(folder: Path, jobs: int) -> int:
    m = write_manifest(folder, images=10, prompts=100, seeds=max(1, jobs // 1000))
    with emulator("--image-scale", "0.01") as emu:
        env = {**os.environ, "SEGMIND_API_KEY": KEY, "SEGMIND_API_BASE": emu.url}
        command = [sys.executable, "-m", "batchgen", "run", str(m), "--out", str(folder / "out"),
                   "--no-progress", "--concurrency", "16"]  # fmt: skip
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        samples: list[tuple[float, float]] = []
        ledger_file = folder / "out" / "ledger.jsonl"
        while process.poll() is None:
            time.sleep(1.0)
            size = ledger_file.stat().st_size if ledger_file.exists() else 0
            try:
                rss = rss_mb(process.pid)
            except FileNotFoundError:
                break
            if rss > 0:  # 0 once the process has exited and is only a zombie
                samples.append((size, rss))
        billed = emu.stats()["billed_total"]
    if len(samples) < 4:
        return verdict(False, f"run too short to sample ({len(samples)} samples)")
    final = samples[-1][0]
    marks = [next(rss for size, rss in samples if size >= final * f) for f in (0.25, 0.5, 0.75)]
    last = samples[-1][1]
    growth = last - marks[0]
    return verdict(billed == jobs and growth < 25,
                   f"run of {jobs:,} jobs: RSS {marks[0]:.0f} / {marks[1]:.0f} / {marks[2]:.0f} / "
                   f"{last:.0f} MB at 25/50/75/100% of the ledger; growth {growth:+.1f} MB (< 25)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-jobs", type=int, default=100_000)
    args = parser.parse_args(argv)
    print(f"bench_scale: {machine()}")
    failures = 0
    with tempfile.TemporaryDirectory(dir=scratch()) as tmp:
        failures += million_plan(Path(tmp))
    with tempfile.TemporaryDirectory(dir=scratch()) as tmp:
        failures += million_lines(Path(tmp))
    with tempfile.TemporaryDirectory(dir=scratch()) as tmp:
        failures += flat_run(Path(tmp), args.run_jobs)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
