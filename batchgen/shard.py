"""Shards: split one manifest over machines the way their schedulers already count.

A job belongs to shard `int(job_id[:16], 16) % N + 1`: balanced, and stable when the
manifest grows (a job's shard depends only on its own id). Kubernetes Indexed Jobs
give a 0-based JOB_COMPLETION_INDEX and do not tell a pod the number of completions
(so N comes from --shard-count); Slurm arrays give SLURM_ARRAY_TASK_ID, which starts
at SLURM_ARRAY_TASK_MIN (0 or 1, as the script's --array says), and the task count.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from batchgen.errors import InputError


@dataclass(frozen=True, slots=True)
class Shard:
    index: int  # 1-based
    count: int

    def owns(self, job_id: str) -> bool:
        return shard_of(job_id, self.count) == self.index

    @property
    def ledger_name(self) -> str:
        return f"ledger.shard-{self.index}-of-{self.count}.jsonl"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(job_id: str, count: int) -> int:
    return int(job_id[:16], 16) % count + 1


def parse(spec: str, *, shard_count: int | None, environ: Mapping[str, str]) -> Shard:
    """`I/N` or `auto` (from the scheduler's environment) -> a Shard; InputError otherwise."""
    if spec == "auto":
        return _from_environment(shard_count, environ)
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not match:
        raise InputError(f"--shard {spec!r} must be I/N (e.g. 2/8, 1-based) or 'auto'")
    return _checked(int(match[1]), int(match[2]), f"--shard {spec}")


def _checked(index: int, count: int, source: str) -> Shard:
    if count < 1 or not 1 <= index <= count:
        raise InputError(f"{source}: shard {index} of {count} does not exist (shards are 1..N)")
    return Shard(index, count)


def _integer(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not a whole number") from None


def _from_environment(shard_count: int | None, environ: Mapping[str, str]) -> Shard:
    k8s_index = _integer(environ, "JOB_COMPLETION_INDEX")
    if k8s_index is not None:
        if shard_count is None:
            raise InputError(
                "--shard auto found JOB_COMPLETION_INDEX (a Kubernetes Indexed Job), which does "
                "not say how many shards there are: pass --shard-count N (the Job's completions)"
            )
        return _checked(k8s_index + 1, shard_count, "JOB_COMPLETION_INDEX")
    task = _integer(environ, "SLURM_ARRAY_TASK_ID")
    if task is not None:
        first = _integer(environ, "SLURM_ARRAY_TASK_MIN")
        first = 0 if first is None else first
        count = shard_count or _integer(environ, "SLURM_ARRAY_TASK_COUNT")
        if count is None:
            raise InputError("--shard auto: SLURM_ARRAY_TASK_COUNT is not set; pass --shard-count")
        return _checked(task - first + 1, count, "SLURM_ARRAY_TASK_ID")
    raise InputError(
        "--shard auto needs JOB_COMPLETION_INDEX (Kubernetes) or SLURM_ARRAY_TASK_ID (Slurm) "
        "in the environment; or give --shard I/N"
    )
