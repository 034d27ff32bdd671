"""What an HTTP status a Segmind surface answered means, in words: one home for the
text of every refusal (the endpoint, the request history, asset upload, the balance),
so a 401 reads the same wherever it came from and a redirect always says it was not
followed and why (the key goes to the API's host only)."""

from __future__ import annotations

import yarl


def meaning(status: int, *, forbidden: str, missing: str) -> str | None:
    """The plain meaning of a refusing status, or None for one with no special meaning.
    `forbidden` says what a 403 denies ("read it"), `missing` what a 404 means."""
    return {
        401: "the API key was refused",
        403: f"the API key may not {forbidden}",
        404: missing,
        406: "the account has insufficient credits",
    }.get(status)


def redirect(location: str | None, host: str) -> str:
    """A 3xx, named with where it pointed (its host, never the full URL)."""
    try:
        to = yarl.URL(location).host if location else None
    except ValueError:
        to = None
    where = f" to {to}" if to else ""
    return f"a redirect{where} (not followed: the key goes to the {host} host only)"


def refusal(
    where: str,
    status: int,
    *,
    forbidden: str,
    missing: str,
    detail: str | None = None,
    location: str | None = None,
    host: str = "API",
) -> str:
    """`{where} answered HTTP {status}: {meaning}: {detail}`, e.g. "the request history
    at https://… answered HTTP 401: the API key was refused"."""
    head = f"{where} answered HTTP {status}"
    if 300 <= status < 400:
        return f"{head}: {redirect(location, host)}"
    parts = [part for part in (meaning(status, forbidden=forbidden, missing=missing), detail)
             if part]  # fmt: skip
    return f"{head}: {': '.join(parts) or 'an error'}"


def endpoint_redirect(status: int, url: yarl.URL, location: str) -> str:
    """The endpoint's own 3xx: where it pointed (scheme, host and port, resolved against
    the request's URL), and what to check."""
    try:
        target = url.join(yarl.URL(location)) if location else None
    except ValueError:
        target = None
    if target is None or not target.host:
        where = "no usable Location"
    else:
        port = f":{target.port}" if target.port and not target.is_default_port() else ""
        where = f"{target.scheme}://{target.host}{port}"
    return (
        f"the API answered with a redirect (HTTP {status}) to {where}; batchgen "
        "does not follow redirects, so the key is sent to the API only: check --api-base"
    )
