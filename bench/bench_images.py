"""Target 6, image reuse: a 5 MB image used by 1,000 jobs is read and encoded once;
the memory held for encoded images stays under its bound for a folder of thousands.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import tempfile
import time
from pathlib import Path

from PIL import Image

from batchgen.images import EncodedImages
from bench.common import emulator, machine, run_batchgen, scratch, verdict


def noise_jpeg(path: Path, size: int, seed: int, target_bytes: int | None = None) -> int:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95 if target_bytes else 80)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return len(buffer.getvalue())


def one_big_image(folder: Path, jobs: int) -> int:
    size = noise_jpeg(folder / "big" / "photo.jpg", 2080, 1, target_bytes=5_000_000)
    body = {"output": "{prompt}-{seed}.{ext}",
            "grid": {"image_file": ["big/photo.jpg"], "prompt": [f"p{i}" for i in range(jobs // 10)],
                     "seed": list(range(101, 111))}}  # fmt: skip
    (folder / "big.yaml").write_text(json.dumps(body))
    cache = EncodedImages()
    began = time.perf_counter()
    once = base64.b64encode((folder / "big" / "photo.jpg").read_bytes())
    encode_ms = (time.perf_counter() - began) * 1000
    with emulator("--image-scale", "0.01") as emu:
        result, wall, _ = asyncio.run(
            run_batchgen(folder / "big.yaml", folder / "out", emu.url, concurrency=8, images=cache)
        )
    done = result.totals.succeeded
    return verdict(done == jobs and cache.encodes == 1,
                   f"a {size / 1e6:.1f} MB image in {done} jobs: read and encoded {cache.encodes} time(s) "
                   f"(one read+encode costs {encode_ms:.1f} ms, {len(once) / 1e6:.1f} MB held); "
                   f"run took {wall:.1f}s")  # fmt: skip


def many_images(folder: Path, count: int, bound_mb: int) -> int:
    for i in range(count):
        noise_jpeg(folder / "many" / f"img{i:05d}.jpg", 96, i)
    body = {"output": "{image}-{prompt}.{ext}",
            "grid": {"image_file": ["many/"], "prompt": ["a", "b"], "seed": [101]}}  # fmt: skip
    (folder / "many.yaml").write_text(json.dumps(body))
    cache = EncodedImages(max_bytes=bound_mb * 1024 * 1024)
    with emulator("--image-scale", "0.01") as emu:
        result, wall, _ = asyncio.run(
            run_batchgen(
                folder / "many.yaml", folder / "out2", emu.url, concurrency=8, images=cache
            )
        )
    done = result.totals.succeeded
    total = sum(p.stat().st_size for p in (folder / "many").iterdir()) * 4 / 3
    return verdict(done == 2 * count and cache.peak_bytes <= bound_mb * 1024 * 1024,
                   f"{count} images ({total / 1e6:.0f} MB as base64) in {done} jobs: peak held "
                   f"{cache.peak_bytes / 2**20:.2f} MiB under a {bound_mb} MiB bound, "
                   f"{cache.encodes} encodes; run took {wall:.1f}s")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--images", type=int, default=3000)
    args = parser.parse_args(argv)
    print(f"bench_images: {machine()}")
    failures = 0
    with tempfile.TemporaryDirectory(dir=scratch()) as tmp:
        failures += one_big_image(Path(tmp), args.jobs)
    with tempfile.TemporaryDirectory(dir=scratch()) as tmp:
        failures += many_images(Path(tmp), args.images, bound_mb=4)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
