"""Recovering a billed attempt's image instead of paying again: its `generation_url`
downloaded (no key), checked as an answer is, its parameters embedded, written atomically
to the job's output path, and a `succeeded` line with `recovered: true` after it (the
row's `request_id`, its `credits_deduction` as `cost`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from batchgen import api, metadata
from batchgen.history import DownloadError, History, Row
from batchgen.ledger.fold import Attempt
from batchgen.ledger_sink import LedgerSink
from batchgen.settle.lines import recovered_line
from batchgen.settle.targets import Targets

log = logging.getLogger("batchgen")


async def recover(
    history: History,
    writer: LedgerSink,
    attempt: Attempt,
    row: Row,
    targets: Targets,
    extra: Mapping[str, Any] | None = None,
) -> bool:
    """Download the row's image and put it in place, its `succeeded` line after it."""
    assert row.generation_url is not None
    try:
        image = await history.download(row.generation_url)
    except DownloadError as err:
        log.warning("batchgen: cannot fetch the image of request %s (job %s): %s",
                    row.request_id, attempt.job_id[:12], err)  # fmt: skip
        return False
    kind = api.sniff_image(image)
    assert kind is not None  # download checked it
    recorded, target = targets.place(attempt.job_id, attempt.ledger, api.EXTENSIONS[kind])
    params = dict(attempt.params)
    image_ref = params.get("image_file")
    source = image_ref.get("path") if isinstance(image_ref, dict) else image_ref
    provenance = {**params, "model": attempt.model, "job_id": attempt.job_id,
                  "source": source}  # fmt: skip
    body = metadata.embed(image, kind, provenance)
    record = {**recovered_line(attempt, row, recorded, body), **(extra or {})}
    failure = await writer.submit(record, output=(target, body))
    if failure is not None:
        log.warning("batchgen: recovered the image of job %s but cannot write it: %s",
                    attempt.job_id[:12], failure)  # fmt: skip
        return False
    return True
