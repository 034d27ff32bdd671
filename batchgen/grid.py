"""Lazy expansion of a manifest into jobs, each with a stable identity.

A job's id is the first 128 bits of the sha256 of the canonical JSON of the
model and the full request (defaults filled in, a local image by the digest of
its bytes). Same request, same id, on any machine; change anything, new id.
Resume keys on it, so editing a manifest never maps old results onto new jobs.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from batchgen import api, images, outputs
from batchgen.errors import InputError, Problem
from batchgen.manifest import Block, Manifest

ID_HEX_CHARS: Final = 32
_SEED_SPAN: Final = api.SEED_RANGE[1] - api.SEED_RANGE[0] + 1


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    params: Mapping[str, Any]  # the full request; image_file is a LocalImage or a URL
    output: str  # path under --out, with "{ext}" still to fill from the answer's bytes


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def describe(params: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-able parameters: a local image by its path and digest, never its bytes."""
    if "image_file" not in params:
        return dict(params)
    return {**params, "image_file": images.recorded(params["image_file"])}


def _identity(model: str, params: Mapping[str, Any]) -> str:
    image = params.get("image_file")
    request = dict(params)
    if isinstance(image, images.LocalImage):
        request["image_file"] = {"sha256": image.sha256}
    return canonical({"model": model, "request": request})


def job_id(model: str, params: Mapping[str, Any]) -> str:
    return hashlib.sha256(_identity(model, params).encode()).hexdigest()[:ID_HEX_CHARS]


def derive_seeds(model: str, params: Mapping[str, Any], count: int) -> list[int]:
    """`count` distinct seeds in range, a pure function of the rest of the job."""
    return list(itertools.islice(seed_sequence(model, params), count))


def seed_sequence(model: str, params: Mapping[str, Any]) -> Iterator[int]:
    """The distinct seeds `seed: {count: N}` takes the first N of, in order, for a job
    without its seed. A local image may be given as `{"sha256": ...}` (as a ledger
    records it): its identity is its digest either way, so the gallery can tell a
    derived seed's slot from the ledger alone."""
    base = _identity(model, params).encode()
    seen: set[int] = set()
    for i in itertools.count():
        digest = hashlib.sha256(base + b"#%d" % i).digest()
        seed = api.SEED_RANGE[0] + int.from_bytes(digest[:8], "big") % _SEED_SPAN
        if seed not in seen:
            seen.add(seed)
            yield seed


@functools.lru_cache(maxsize=1)
def _template_fields(template: str) -> frozenset[str]:
    return frozenset(name for _, name, _, _ in string.Formatter().parse(template) if name)


def _image_stem(image: Any) -> str:
    if isinstance(image, images.LocalImage):
        return image.stem
    path = urlsplit(str(image)).path.rstrip("/")
    stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return stem or "url"


def render_output(template: str, model: str, jid: str, params: Mapping[str, Any]) -> str:
    fields: dict[str, Any] = {}
    for name in _template_fields(template):
        if name == "image":
            fields[name] = _image_stem(params["image_file"])
        elif name == "job_id":
            fields[name] = jid
        elif name == "model":
            fields[name] = model
        elif name != "ext":
            fields[name] = params.get(name, "default")
    return outputs.render(template, fields)  # which makes every value a safe path piece


def make_job(manifest: Manifest, params: Mapping[str, Any]) -> Job:
    jid = job_id(manifest.model, params)
    return Job(jid, params, render_output(manifest.output, manifest.model, jid, params))


def candidates(manifest: Manifest) -> Iterator[Job]:
    """Every job the manifest describes, identical ones included, lazily."""
    for block in manifest.blocks:
        yield from _block_jobs(manifest, block)


def _block_jobs(manifest: Manifest, block: Block) -> Iterator[Job]:
    start = {**api.DEFAULTS, **block.fixed}
    for combo in itertools.product(*(axis.choices for axis in block.axes)):
        params = start.copy()
        for choice in combo:
            params.update(choice)
        if block.seed_count:
            params.pop("seed", None)
            for seed in derive_seeds(manifest.model, params, block.seed_count):
                yield make_job(manifest, {**params, "seed": seed})
        else:
            yield make_job(manifest, params)


def expand(manifest: Manifest, *, check_paths: bool = True) -> Iterator[Job]:
    """The distinct jobs, lazily. Identical jobs run once; with `check_paths`, two
    different jobs that would write the same file, or a path that breaks a rule of
    `outputs.check_path` (`..`, an empty or dot-only name), raise InputError naming
    the job (before anything is sent, when the caller drains this once first, as
    `run` does).

    Memory does not grow with the jobs streamed: every axis holds distinct values
    (`manifest.distinct` drops repeats), so a block never repeats a job, and only the jobs of
    the blocks after the first (explicit `jobs:` entries, few) are remembered, to drop
    any the grid or an earlier entry already gave. The path check alone keeps one int
    per job (about 70 bytes); `run` does it in its validating pass only.
    """
    later = {job.job_id for block in manifest.blocks[1:] for job in _block_jobs(manifest, block)}
    given: set[str] = set()
    paths: set[int] = set()
    for job in candidates(manifest):
        if job.job_id in later:
            if job.job_id in given:
                continue
            given.add(job.job_id)
        if check_paths:
            rule = outputs.check_path(job.output)
            if rule is not None:
                raise _bad_path(manifest, job, rule)
            key = hash(job.output)
            if key in paths:
                raise _collision(manifest, job)
            paths.add(key)
        yield job


def _collision(manifest: Manifest, job: Job) -> InputError:
    first = next(j for j in expand(manifest, check_paths=False) if j.output == job.output)
    return InputError(
        Problem(
            manifest.display,
            "output",
            f"output template {manifest.output!r} gives the same path {job.output!r} to two "
            f"different jobs ({_label(first)} and {_label(job)}); add a field that tells them "
            "apart, e.g. {job_id:.8}",
        )
    )


def _bad_path(manifest: Manifest, job: Job, rule: str) -> InputError:
    return InputError(
        Problem(
            manifest.display,
            "output",
            f"output template {manifest.output!r} gives {_label(job)} the path "
            f"{job.output!r}: {rule}",
        )
    )


def _label(job: Job) -> str:
    name = images.source(job.params.get("image_file"))
    params = job.params
    return (
        f"job {job.job_id[:8]}: {name}, prompt {params.get('prompt')!r}, seed {params.get('seed')}"
    )


def axis_sizes(manifest: Manifest) -> dict[str, int]:
    """How many values each axis has (over all blocks; explicit jobs counted apart)."""
    sizes: dict[str, int] = {}
    explicit = 0
    for block in manifest.blocks:
        if block.kind == "job":
            explicit += 1
            continue
        for axis in block.axes:
            sizes[axis.name] = max(sizes.get(axis.name, 0), len(axis.choices))
        if block.seed_count:
            sizes["seed"] = max(sizes.get("seed", 0), block.seed_count)
    if explicit:
        sizes["explicit jobs"] = explicit
    return sizes
