"""Where a recovered image goes: its job's output path, from the manifest when it is
known, else `recovered/{job_id}.{ext}` beside the ledger.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Final

from batchgen import outputs
from batchgen.errors import InputError

RECOVERED_FOLDER: Final = "recovered"  # where an image goes when its job's path is unknown


class Targets:
    """Where a job's image goes: its output template under its out folder when the job
    is known (from the manifest), else `recovered/{job_id}.{ext}` beside the ledger."""

    def __init__(self, jobs: Mapping[str, tuple[Path, str]] | None = None) -> None:
        self._jobs = dict(jobs or {})

    def add(self, job_id: str, out: Path, template: str) -> None:
        self._jobs[job_id] = (out, template)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def place(self, job_id: str, ledger_path: Path, ext: str) -> tuple[str, str]:
        """(the output as the ledger records it: relative to its folder, the absolute path)."""
        folder = ledger_path.parent
        known = self._jobs.get(job_id)
        if known is None:
            relative = f"{RECOVERED_FOLDER}/{job_id}.{ext}"
            return relative, outputs.confine(str(folder.resolve()), relative)
        out, template = known
        relative = outputs.final_path(template, ext)
        where = PurePosixPath(os.path.relpath(out, folder)).as_posix()
        recorded = relative if where == "." else f"{where}/{relative}"
        return recorded, outputs.confine(str(out.resolve()), relative)


def targets_from_manifests(manifests: Mapping[Path, list[tuple[str, str]]]) -> Targets:
    """Job output paths from the manifests the ledgers' `run` lines name, when they are
    still there with the same digest (tried as given, and from the ledger's folder).
    A guess that fails is passed over for the next: a file gone or unreadable
    (OSError), or one `manifest.load` refuses (InputError, which it raises for
    everything it finds wrong, an image since gone or changed included); its jobs'
    images then go to `recovered/`."""
    from batchgen import grid, manifest

    targets = Targets()
    for ledger_path, named in manifests.items():
        for name, digest in dict.fromkeys(named):
            for candidate in (Path(name), ledger_path.parent.parent / name):
                try:
                    if hashlib.sha256(candidate.read_bytes()).hexdigest() != digest:
                        continue
                    loaded = manifest.load(candidate, exclude=(ledger_path.parent,))
                    for job in grid.expand(loaded, check_paths=False):
                        if job.job_id not in targets:
                            targets.add(job.job_id, ledger_path.parent, job.output)
                except (OSError, InputError):  # gone, unreadable, now invalid: the next guess
                    continue
                break
    return targets
