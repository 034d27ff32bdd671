"""Upload each local input image once to Segmind's asset storage, and remember its URL.

    POST {storage_base}/upload-asset   {"data_urls": ["data:image/jpeg;base64,...", ...]}
                                       -> {"file_urls": ["https://...", ...]} (or "urls")

With `--upload-images`, a run uploads every local image its jobs still to run use, before
it sends anything, in batches of at most `MAX_BATCH_BYTES` of data URLs, and then sends
each image's URL as `image_file` instead of its base64: a 5 MB photo used by 1,000 jobs
travels once, not 1,000 times as 6.7 MB of base64. Asset URLs are public (anyone with
the URL can fetch the image), which is why it is off unless asked.

The URLs are kept per image digest and storage base in `OUT/.batchgen-assets.json`
(written atomically, merged on every write), so a resume and the next night upload
nothing they uploaded before. The cache never changes a job's identity: jobs are keyed
on the image's bytes, the ledger keeps `{path, sha256}`, and settlement maps the URLs
back to digests to recognise a request in the history.

The key goes to the storage host only: redirects are never followed. A failure is an
`UploadError` (status, or None when the service never answered); answers worth another
try (429, 5xx, a dropped connection) are tried `ATTEMPTS` times first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp

from batchgen import api, durable, refusals
from batchgen.errors import ApiStatusError
from batchgen.images import EncodedImages, LocalImage

log = logging.getLogger("batchgen")

STORAGE_BASE: Final = "https://workflows-api.segmind.com"
UPLOAD_PATH: Final = "/upload-asset"
CACHE_NAME: Final = ".batchgen-assets.json"
CACHE_VERSION: Final = 1
MAX_BATCH_BYTES: Final = 20 * 1024 * 1024  # of data URLs per call
ATTEMPTS: Final = 3  # per batch, for 429, 5xx and connection failures
RETRY_DELAYS_S: Final = (1.0, 4.0)
TIMEOUT_S: Final = 300.0  # one batch of up to 20 MB
USER_AGENT: Final = "batchgen"
MIME: Final = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}

Sleep = Callable[[float], Awaitable[None]]


class UploadError(Exception):
    """The images could not be uploaded; nothing was sent. Never names the key."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Uploaded:
    """What one upload pass did: `urls` for every image asked (new and cached)."""

    urls: dict[str, str]  # sha256 -> asset URL
    uploaded: int  # images uploaded now
    uploaded_bytes: int  # their file bytes
    cached: int  # images whose URL the cache already had
    calls: int  # upload-asset calls made


def base64_size(size: int) -> int:
    """Bytes of the base64 of `size` bytes."""
    return 4 * math.ceil(size / 3)


def data_url_size(image: LocalImage) -> int:
    return len(_prefix(image)) + base64_size(image.size)


def _prefix(image: LocalImage) -> str:
    return f"data:{MIME[image.format]};base64,"


# -- the cache ------------------------------------------------------------------------


def cache_path(out: Path) -> Path:
    return out / CACHE_NAME


def _read_cache(out: Path) -> dict[str, dict[str, str]]:
    """{storage base: {sha256: url}}; a missing or unreadable file is empty (a warning
    for the latter: it costs one upload again, nothing more)."""
    path = cache_path(out)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("batchgen: %s cannot be read (%s); images are uploaded again", path, err)
        return {}
    assets = data.get("assets") if isinstance(data, dict) else None
    if not isinstance(assets, dict):
        return {}
    return {
        str(base): {str(k): v for k, v in urls.items() if isinstance(v, str) and api.is_url(v)}
        for base, urls in assets.items()
        if isinstance(urls, dict)
    }


def known(out: Path | None, base: str) -> dict[str, str]:
    """sha256 -> URL of the images uploaded before to `base`, as the cache under `out` says."""
    if out is None:
        return {}
    return dict(_read_cache(out).get(_normal(base), {}))


def digests_by_url(folders: Iterable[Path]) -> dict[str, str]:
    """url -> sha256 of every image uploaded from these output folders (any storage base):
    what settlement needs to recognise a request sent with a URL."""
    found: dict[str, str] = {}
    for folder in dict.fromkeys(folders):
        for urls in _read_cache(folder).values():
            found.update((url, digest) for digest, url in urls.items())
    return found


def remember(out: Path, base: str, urls: Mapping[str, str]) -> None:
    """Add `urls` (sha256 -> URL) for `base` to the cache under `out`: read, merged,
    written atomically. Two shards writing at once may drop each other's newest entries:
    that costs an upload again next time, nothing else."""
    if not urls:
        return
    assets = _read_cache(out)
    assets.setdefault(_normal(base), {}).update(urls)
    text = json.dumps({"v": CACHE_VERSION, "assets": assets}, indent=1, sort_keys=True)
    durable.write_atomic(cache_path(out), text.encode() + b"\n")


def _normal(base: str) -> str:
    return base.strip().rstrip("/")


# -- uploading -----------------------------------------------------------------------


def batches(
    images: Sequence[LocalImage], max_bytes: int = MAX_BATCH_BYTES
) -> Iterator[list[LocalImage]]:
    """The images in order, in groups whose data URLs add up to at most `max_bytes`
    (an image larger than that alone in its group)."""
    group: list[LocalImage] = []
    held = 0
    for image in images:
        size = data_url_size(image)
        if group and held + size > max_bytes:
            yield group
            group, held = [], 0
        group.append(image)
        held += size
    if group:
        yield group


async def upload_images(
    images: Iterable[LocalImage],
    *,
    api_key: str,
    base: str,
    out: Path,
    encoded: EncodedImages | None = None,
    max_batch_bytes: int = MAX_BATCH_BYTES,
    sleep: Sleep = asyncio.sleep,
    timeout: float = TIMEOUT_S,  # noqa: ASYNC109 (per call)
) -> Uploaded:
    """The asset URL of every image: from the cache under `out`, else uploaded now (each
    batch's URLs are cached as soon as it is answered, so a failure later loses nothing).
    Raises UploadError."""
    base = _normal(base)
    cached = known(out, base)
    wanted = list({image.sha256: image for image in images}.values())
    todo = [image for image in wanted if image.sha256 not in cached]
    urls = {image.sha256: cached[image.sha256] for image in wanted if image.sha256 in cached}
    encoded = encoded or EncodedImages()
    calls = sent_bytes = 0
    if todo:
        session_timeout = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(
            headers={"User-Agent": USER_AGENT}, timeout=session_timeout
        ) as session:
            for group in batches(todo, max_batch_bytes):
                data_urls = [_prefix(image) + encoded.get(image).decode() for image in group]
                found = await _post(session, base, api_key, data_urls, sleep)
                calls += 1
                new = {image.sha256: url for image, url in zip(group, found, strict=True)}
                remember(out, base, new)
                urls.update(new)
                sent_bytes += sum(image.size for image in group)
    return Uploaded(urls, len(todo), sent_bytes, len(wanted) - len(todo), calls)


async def _post(
    session: aiohttp.ClientSession, base: str, api_key: str, data_urls: list[str], sleep: Sleep
) -> list[str]:
    """One batch's URLs, in order; tried again on 429, 5xx and connection failures."""
    body = json.dumps({"data_urls": data_urls}).encode()
    headers = {"x-api-key": api_key, "Content-Type": "application/json",
               "Accept": "application/json"}  # fmt: skip
    url = f"{base}{UPLOAD_PATH}"
    for attempt in range(1, ATTEMPTS + 1):
        last = attempt == ATTEMPTS
        try:
            async with session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                payload = await response.read()
                status = response.status
                location = response.headers.get("Location", "")
        except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as err:
            if last:
                raise UploadError(
                    f"the asset storage at {base} cannot be reached ({_why(err)})"
                ) from None
            await sleep(RETRY_DELAYS_S[attempt - 1])
            continue
        if status == 200:
            return _urls_of(payload, len(data_urls), base)
        if (status == 429 or status >= 500) and not last:
            await sleep(RETRY_DELAYS_S[attempt - 1])
            continue
        raise UploadError(_refusal(status, payload, location, base), status)
    raise AssertionError("unreachable")  # pragma: no cover


def _urls_of(payload: bytes, count: int, base: str) -> list[str]:
    """The URLs of a 200 answer, under either name the sources give them."""
    try:
        answer: Any = json.loads(payload)
    except ValueError:
        answer = None
    urls = None
    if isinstance(answer, dict):
        urls = next((answer[k] for k in ("file_urls", "urls") if k in answer), None)
    if (
        not isinstance(urls, list)
        or len(urls) != count
        or not all(isinstance(u, str) and api.is_url(u) for u in urls)
    ):
        raise UploadError(
            f"the asset storage at {base} answered HTTP 200 without {count} http(s) URLs "
            '(expected {"file_urls": [...]})',
            200,
        )
    return urls


def _refusal(status: int, payload: bytes, location: str, base: str) -> str:
    message = (
        None if 300 <= status < 400 else ApiStatusError.from_response(status, payload, {}).message
    )
    return refusals.refusal(f"the asset storage at {base}", status, forbidden="upload",
                            missing="no upload endpoint there", detail=message,
                            location=location, host="storage")  # fmt: skip


def _why(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
