"""Which history rows are a job's: keys of its parameters and of a request body (pure).

batchgen rebuilds an attempt's body from the job's parameters, as the ledger recorded
them (`started` lines carry them, a local image by its sha256): a row matches when the
canonical JSON of its `request_body`, with a base64 image replaced by the sha256 of its
bytes, equals the parameters' (compared first without the image, which is cheap). Rows
whose ids a line already claims do not count.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from batchgen import api
from batchgen.history import Row
from batchgen.ledger.fold import Attempt


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def params_keys(params: Mapping[str, Any]) -> tuple[str, str]:
    """(the parameters without the image, the image) in the form rows are compared in:
    a local image by the sha256 of its bytes, a URL as is."""
    rest = _canonical({k: v for k, v in params.items() if k != "image_file"})
    image = params.get("image_file")
    if isinstance(image, Mapping) and isinstance(image.get("sha256"), str):
        return rest, "sha256:" + image["sha256"]
    return rest, _canonical(image)


def body_keys(body: Mapping[str, Any], cache: dict[str, str] | None = None) -> tuple[str, str]:
    """The same keys of a request body as sent (a base64 or data: image decoded and
    hashed; `cache` keeps the digest of each image string already seen, and may be
    seeded with the asset URLs of uploaded images, `url -> "sha256:..."`)."""
    rest = _canonical({k: v for k, v in body.items() if k != "image_file"})
    image = body.get("image_file")
    if isinstance(image, str) and cache is not None and image in cache:
        return rest, cache[image]  # an asset URL batchgen uploaded is seeded in it
    if not isinstance(image, str) or api.is_url(image):
        return rest, _canonical(image)
    payload = image.partition(",")[2] if image.startswith("data:") else image
    try:
        digest = "sha256:" + hashlib.sha256(base64.b64decode(payload, validate=True)).hexdigest()
    except (binascii.Error, ValueError):
        digest = _canonical(image)
    if cache is not None:
        cache[image] = digest
    return rest, digest


def rows_by_job(
    attempts: Mapping[str, Sequence[Attempt]],
    jobs: set[str],
    rows: Sequence[Row],
    claimed: set[str],
    assets: Mapping[str, str] | None = None,
) -> dict[str, list[Row]]:
    """The unclaimed rows whose bodies are each job's (`attempts`: each job's, whose
    parameters say what its body was): the parameters compared first, so only a
    candidate's image is decoded and hashed; an uploaded image's URL (`assets`,
    url -> sha256) stands for its digest."""
    wanted: dict[str, dict[str, list[str]]] = {}  # rest -> image -> jobs
    for job_id in jobs:
        params = next((a.params for a in attempts[job_id] if a.params), None)
        if params is None:
            continue
        rest, image = params_keys(params)
        wanted.setdefault(rest, {}).setdefault(image, []).append(job_id)
    found: dict[str, list[Row]] = {}
    cache = {url: "sha256:" + digest for url, digest in (assets or {}).items()}
    for row in rows:
        if row.body is None or row.request_id in claimed:
            continue
        rest = _canonical({k: v for k, v in row.body.items() if k != "image_file"})
        if rest not in wanted:
            continue
        _, image = body_keys(row.body, cache)
        for job_id in wanted[rest].get(image, []):
            found.setdefault(job_id, []).append(row)
    return found
