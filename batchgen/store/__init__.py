"""Object stores as `--out`: any fsspec URL (`s3://bucket/prefix`, `gs://`, `az://`).

A plain path (or `file://`) keeps the local code path exactly (temp file, fsync, rename,
flock); a URL goes through this package, with fsspec's async backends used inside the
run's own event loop. Credentials and endpoints come from each backend's own standard
configuration (for S3: AWS_* variables, AWS_ENDPOINT_URL for MinIO or moto, ~/.aws);
batchgen adds none of its own.

What a run keeps on a store, under the prefix:

    p0/prompt-101-84acae90.jpg                one PUT per image (atomic by nature)
    ledger.jsonl.d/000001.jsonl ...           the ledger: immutable segments, one per
                                              group commit, each created exclusively
    ledger.jsonl.d/000001-000042.jsonl        a clean finish merges them (compaction)
    ledger.jsonl.lease                        the run lock: a lease, renewed while running
    ledger.shard-1-of-4.jsonl.d/...           each shard its own
    gallery.html, thumbs/...                  the contact sheet, links relative

The modules, in the order a run uses them:

    location.py   a URL told from a path, parsed into a `Location`; the backend checked
    objects.py    `Store`: the store's few operations, conditional writes included
    ledgers.py    reading ledgers back: segments in order, as `StoredLedger`s
    lease.py      `Lease`: the run lock, a lease object renewed while running
    segments.py   `SegmentWriter`: the ledger writer, a segment object per group commit
    planning.py   `plan` on a store, and the resume state a run plans from (no lease)
    running.py    `run` on a store, under its lease
    reading.py    the ledgers a URL names, `report`, one object (`inspect`); `blocking`
    gallery.py    `gallery` on a store

Resume state and settlement's reads and writes on a store are `batchgen.settle.store`.
The names below are the ones the rest of batchgen uses, as `store.X`.
"""

from batchgen.store.ledgers import StoredLedger, read_ledgers
from batchgen.store.location import Location, is_url, location_arg
from batchgen.store.objects import Conflict, Store

__all__ = [
    "Conflict",
    "Location",
    "Store",
    "StoredLedger",
    "is_url",
    "location_arg",
    "read_ledgers",
]
