"""What the ledgers say of each job: a `Cell`, folded from every ledger, and where the
manifests (and so the local source images) may be."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from batchgen import images, ledger
from batchgen.errors import failure_text

ROW_KEY: Final = "image_file"  # the rows: source images
SEED: Final = "seed"


@dataclass
class Cell:
    """One job as the ledgers last left it: a success, once recorded, is never forgotten."""

    job_id: str
    status: str = "pending"  # succeeded | failed | pending (started or interrupted)
    params: dict[str, Any] = field(default_factory=dict)
    output: Path | None = None
    sha256: str | None = None
    error: str | None = None


def collect(paths: Iterable[Path]) -> tuple[dict[str, Cell], list[Path]]:
    """Every job over all ledgers, merged by the one fold every reader uses
    (`ledger.fold`), and where the manifests may be: a local source image's path is
    relative to its manifest's folder, and a `run` line names the manifest as it was
    given (relative to a working directory we cannot know: a few guesses, which the
    image's digest then confirms). The run's model joins each job's parameters, so jobs
    that differ only by model get columns of their own."""
    folded = ledger.fold(ledger.ledgers(paths))
    cells = {job_id: _cell(job_id, job) for job_id, job in folded.jobs.items()}
    folders: list[Path] = []
    for path, runs in folded.manifests.items():
        for name, _ in runs:
            manifest = Path(name)
            folders += [path.parent.parent / manifest.parent, manifest.parent]
    return cells, folders


def _cell(job_id: str, job: ledger.JobRecord) -> Cell:
    params = job.params or {}
    if job.model and job.params is not None:
        params = {**params, "model": job.model}
    if job.status == "succeeded":
        return Cell(job_id, "succeeded", params, job.output_path, job.sha256)
    if job.status == "failed":
        return Cell(job_id, "failed", params, error=failure_text(job.http_status, str(job.error)))
    return Cell(job_id, "pending", params)  # started, interrupted, unwritten or settled


def source_of(params: dict[str, Any]) -> tuple[str, str | None]:
    """(the source image as the manifest named it, or its URL; its sha256 when local)."""
    image = params.get(ROW_KEY)
    name = images.source(image)
    digest = image.get("sha256") if isinstance(image, dict) else None
    return ("unknown image" if name is None else name), digest


def seed_of(params: dict[str, Any]) -> int | None:
    """The job's seed, when it has one (a bool is not one)."""
    seed = params.get(SEED)
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def canon(value: Any) -> str:
    """A parameter's value as canonical JSON: how values are compared and keyed."""
    return json.dumps(value, sort_keys=True)
