"""The dry run: what a batch holds, what is already done, what the rest will cost.

Pure: it takes jobs and what the ledgers say of each (`standing`: the ledger reads the
files to tell done from missing), and touches no disk and no network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from batchgen import api
from batchgen.grid import Job
from batchgen.images import LocalImage
from batchgen.manifest import Skipped
from batchgen.shard import shard_of
from batchgen.uploads import data_url_size

# What the ledgers say of a job: never seen; succeeded and its image intact; succeeded but
# its image gone or changed (paid again); failed for good; anything else (run it again).
Standing = Literal["new", "done", "missing", "failed_for_good", "again"]


@dataclass(frozen=True)
class UploadFigures:
    """What `--upload-images` would do for the jobs to run."""

    images: int  # distinct local images those jobs use
    new: int  # of them, not uploaded before (the cache under --out): uploaded by the run
    new_bytes: int  # their bytes
    requests: int  # jobs to run that carry a local image
    base64_bytes: int  # the base64 those requests would carry without the flag
    saved_bytes: int  # base64 not sent with it: that, less the data URLs uploaded once


class ImageTally:
    """Collects, while a plan counts, the local images of the jobs to run (`needed`,
    by digest: what a run with `--upload-images` uploads) and what they would weigh.
    `known`: the digests uploaded before."""

    def __init__(self, known: Container[str] = ()) -> None:
        self.known = known
        self.needed: dict[str, LocalImage] = {}
        self.requests = 0
        self.base64_bytes = 0

    def add(self, image: object) -> None:
        if isinstance(image, LocalImage):
            self.needed.setdefault(image.sha256, image)
            self.requests += 1
            self.base64_bytes += 4 * math.ceil(image.size / 3)

    def figures(self) -> UploadFigures:
        new = [image for digest, image in self.needed.items() if digest not in self.known]
        uploaded = sum(data_url_size(image) for image in new)
        return UploadFigures(
            images=len(self.needed), new=len(new), new_bytes=sum(i.size for i in new),
            requests=self.requests, base64_bytes=self.base64_bytes,
            saved_bytes=max(0, self.base64_bytes - uploaded),
        )  # fmt: skip


@dataclass(frozen=True)
class Plan:
    manifest: str
    model: str
    price: float
    axes: dict[str, int]
    jobs: int
    done: int
    failed: int  # failed for good: skipped unless --retry-failed
    to_run: int
    estimated_cost: float
    estimated_seconds: float | None
    shard: str | None = None  # "I/N" when this plan covers one shard
    shards: list[dict[str, int]] = field(default_factory=list)  # the split, per shard
    skipped: tuple[Skipped, ...] = ()  # input files left out: outputs are never inputs
    missing: int = 0  # succeeded before, but the image is gone or changed: paid again
    uploads: UploadFigures | None = None  # with upload_images: what it uploads and saves
    estimate_bound: str = ""  # which limit the time estimate is bound by, in words

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


IN_FLIGHT_CAP = 10  # images Ideogram runs at once per organisation (429 beyond)


def estimate_seconds(
    jobs: int,
    *,
    concurrency: int | None,
    rpm: float | None,
    latency: float = api.TYPICAL_LATENCY_S,
    cap: int = IN_FLIGHT_CAP,
) -> float | None:
    """Wall time at the pool's limit, as the runner reaches it (Little's law): images a
    second = min(rpm / 60, in flight / latency), in flight the service's cap or
    --concurrency if fewer; about 11 s an image."""
    if jobs <= 0:
        return 0.0
    return float(math.ceil(jobs / _throughput(concurrency, rpm, latency, cap)[0]))


def _throughput(
    concurrency: int | None, rpm: float | None, latency: float, cap: int
) -> tuple[float, str]:
    """(images a second, which term binds, in words)."""
    in_flight = min(cap, concurrency) if concurrency else cap
    by_flight = in_flight / latency
    per_minute = by_flight * 60.0
    held = (
        f"--concurrency {in_flight}"
        if concurrency and concurrency < cap
        else f"the service's {in_flight} in flight"
    )
    if rpm is not None and rpm / 60.0 <= by_flight:
        return rpm / 60.0, (
            f"your {rpm:g}/min limit binds ({in_flight} in flight would allow "
            f"{math.floor(per_minute)}/min)"
        )
    said = f", under your {rpm:g}/min limit" if rpm is not None else ""
    return by_flight, (
        f"{held} binds ({math.floor(per_minute)}/min at {latency:g} s an image{said})"
    )


def estimate_bound(
    *,
    concurrency: int | None,
    rpm: float | None,
    latency: float = api.TYPICAL_LATENCY_S,
    cap: int = IN_FLIGHT_CAP,
) -> str:
    """Which term of `estimate_seconds` binds, in words."""
    return _throughput(concurrency, rpm, latency, cap)[1]


def make_plan(
    *,
    manifest: str,
    model: str,
    price: float,
    axes: dict[str, int],
    jobs: Iterable[Job],
    standing: Callable[[str], Standing],
    retry_failed: bool = False,
    concurrency: int | None = None,
    rpm: float | None = None,
    shard: str | None = None,
    split_into: int | None = None,
    skipped: tuple[Skipped, ...] = (),
    tally: ImageTally | None = None,
) -> Plan:
    """Counts in one pass over the jobs; with `split_into` N, also the jobs and the jobs
    still to run in each of N shards (what `plan --shard-count N` shows); with `tally`,
    the local images of the jobs to run are collected in it (`Plan.uploads`)."""
    total = done = failed = missing = 0
    split = [{"shard": i + 1, "jobs": 0, "to_run": 0} for i in range(split_into or 0)]
    for job in jobs:
        total += 1
        said = standing(job.job_id)
        finished = said == "done"
        if finished:
            done += 1
        elif said == "missing":
            missing += 1
        elif said == "failed_for_good" and not retry_failed:
            failed += 1
        if (
            tally is not None
            and not finished
            and not (said == "failed_for_good" and not retry_failed)
        ):
            tally.add(job.params.get("image_file"))  # a job to run
        if split:
            entry = split[shard_of(job.job_id, len(split)) - 1]
            entry["jobs"] += 1
            entry["to_run"] += not finished
    to_run = total - done - failed
    return Plan(
        manifest=manifest,
        model=model,
        price=price,
        axes=axes,
        jobs=total,
        done=done,
        failed=failed,
        to_run=to_run,
        estimated_cost=round(to_run * price, 6),
        estimated_seconds=estimate_seconds(to_run, concurrency=concurrency, rpm=rpm),
        shard=shard,
        shards=split,
        skipped=skipped,
        missing=missing,
        uploads=tally.figures() if tally is not None else None,
        estimate_bound=estimate_bound(concurrency=concurrency, rpm=rpm),
    )


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def upload_lines(figures: UploadFigures) -> list[str]:
    """What `--upload-images` uploads and saves, for `plan`."""
    if not figures.images:
        return ["upload     nothing: the jobs to run use no local image"]
    before = figures.images - figures.new
    noun = "image" if figures.new == 1 else "images"
    if figures.new:
        text = (f"upload     {figures.new:,} {noun}, {megabytes(figures.new_bytes)}, once, "
                "to public asset URLs")  # fmt: skip
        if before:
            text += f"; {before:,} more uploaded before"
    else:
        noun = "image" if before == 1 else "images"
        text = f"upload     nothing new: {before:,} {noun} uploaded before"
    requests = "request carries" if figures.requests == 1 else "requests carry"
    return [
        text,
        f"saves      {megabytes(figures.saved_bytes)} of base64 not sent "
        f"({figures.requests:,} {requests} a URL instead of {megabytes(figures.base64_bytes)})",
    ]


def render(plan: Plan) -> str:
    sizes = dict(plan.axes)
    explicit = sizes.pop("explicit jobs", 0)
    axes = " x ".join(f"{name} {size}" for name, size in sizes.items())
    if explicit:
        axes = f"{axes} + {explicit} explicit jobs" if axes else f"{explicit} explicit jobs"
    lines = [
        f"manifest   {plan.manifest} (model {plan.model}, ${plan.price:g} per image)",
        f"axes       {axes}" if axes else "axes       (none)",
        *(f"skipped    {entry}" for entry in plan.skipped),
        f"jobs       {plan.jobs:,}" + (f" in shard {plan.shard}" if plan.shard else ""),
        f"done       {plan.done:,}",
    ]
    if plan.missing:
        images = "image is" if plan.missing == 1 else "images are"
        lines.append(
            f"missing    {plan.missing:,} finished {images} missing or changed on disk "
            "and will be paid again"
        )
    if plan.failed:
        lines.append(f"failed     {plan.failed:,} (skipped; --retry-failed runs them again)")
    lines.append(f"to run     {plan.to_run:,}")
    lines.append(f"cost       ${plan.estimated_cost:,.2f} estimated for the jobs to run")
    if plan.estimated_seconds is not None:
        bound = f": {plan.estimate_bound}" if plan.estimate_bound else ""
        lines.append(f"time       about {format_duration(plan.estimated_seconds)}{bound}")
    if plan.uploads is not None:
        lines += upload_lines(plan.uploads)
    for entry in plan.shards:
        lines.append(
            f"shard {entry['shard']:<4} {entry['jobs']:,} jobs, {entry['to_run']:,} to run"
            f"  (batchgen run ... --shard {entry['shard']}/{len(plan.shards)})"
        )
    return "\n".join(lines)
