"""Where a run's things are on a store: a URL told from a local path (`is_url`), parsed
into a `Location` (the protocol and `bucket/prefix`), its fsspec backend checked, and the
names a ledger's objects take beside it (its segments' folder, its lease)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from batchgen.errors import InputError

# protocol -> (the extra that installs its backend, the package)
EXTRAS: Final = {
    "s3": ("s3", "s3fs"),
    "s3a": ("s3", "s3fs"),
    "gs": ("gcs", "gcsfs"),
    "gcs": ("gcs", "gcsfs"),
    "az": ("azure", "adlfs"),
    "abfs": ("azure", "adlfs"),
    "abfss": ("azure", "adlfs"),
}
_URL: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
SEGMENTS_SUFFIX: Final = ".d"  # ledger.jsonl.d/ holds ledger.jsonl's segments
LEASE_SUFFIX: Final = ".lease"


def is_url(value: object) -> bool:
    """Whether `value` names an object store rather than a local path (file:// is local)."""
    if not isinstance(value, str):
        return False
    match = _URL.match(value)
    return match is not None and match[1].lower() != "file"


def local(value: str) -> Path:
    """A plain path, or a file:// URL as the plain path it names."""
    match = _URL.match(value)
    if match is not None and match[1].lower() == "file":
        rest = match[2]
        return Path(rest if rest.startswith("/") else "/" + rest.split("/", 1)[-1])
    return Path(value)


def location_arg(value: str) -> str | Path:
    """argparse type: a URL stays a string (Path would fold its `//`), the rest a Path."""
    return value.rstrip("/") if is_url(value) else local(value)


@dataclass(frozen=True)
class Location:
    """Where a run's things are on a store: the protocol and `bucket/prefix`."""

    protocol: str
    root: str  # bucket/prefix, no slash at either end

    @classmethod
    def parse(cls, url: str) -> Location:
        match = _URL.match(url)
        if match is None:
            raise InputError(f"{url}: not a URL")
        protocol, root = match[1].lower(), match[2].strip("/")
        if not root:
            raise InputError(f"{url}: name a bucket (and a prefix): {protocol}://bucket/prefix")
        check_backend(protocol)
        return cls(protocol, root)

    def url(self, key: str | None = None) -> str:
        return f"{self.protocol}://{key or self.root}"

    def key(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    @property
    def folder(self) -> Path:
        """The virtual folder a run's paths hang from (never touched on the local disk):
        the records' `folder`, and the Runner's `out`."""
        return Path(self.root)

    def __str__(self) -> str:
        return self.url()


def check_backend(protocol: str) -> None:
    """InputError naming the extra when the scheme's fsspec backend is not installed."""
    extra, package = EXTRAS.get(protocol, (None, None))
    hint = f"pip install 'batchgen[{extra}]'" if extra else "install its fsspec backend"
    try:
        import fsspec
    except ImportError:
        raise InputError(f"{protocol}:// needs batchgen[{extra or 's3'}]: {hint}") from None
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError:
        raise InputError(
            f"{protocol}:// needs batchgen[{extra}]: {hint}"
            if extra
            else f"{protocol}:// needs its fsspec backend ({package or 'unknown'}): {hint}"
        ) from None
    except ValueError:
        raise InputError(f"{protocol}:// is not a storage scheme fsspec knows") from None
