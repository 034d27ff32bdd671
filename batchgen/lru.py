"""A least-recently-used map of byte strings, bounded by their total size.

One home for the two caches that hold bytes by key: the client's base64 of local
images (`images.EncodedImages`) and the emulator's rendered pictures. Bounded by
bytes because what fills memory is a folder of big photos, not a count of entries.
"""

from __future__ import annotations

from collections import OrderedDict


class BytesLRU:
    """At most `max_bytes` held (and at most `max_entries`, when given), except that the
    entry put last is always kept: a caller that needs one big value right now holds it
    anyway, and evicting it at once would only make the next hit a miss."""

    def __init__(self, max_bytes: int, *, max_entries: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.held_bytes = 0
        self.peak_bytes = 0
        self._entries: OrderedDict[str, bytes] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        data = self._entries.get(key)
        if data is not None:
            self._entries.move_to_end(key)
        return data

    def put(self, key: str, data: bytes) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.held_bytes -= len(old)
        self._entries[key] = data
        self.held_bytes += len(data)
        while len(self._entries) > 1 and self._over():
            _, evicted = self._entries.popitem(last=False)
            self.held_bytes -= len(evicted)
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)  # what stays held

    def clear(self) -> None:
        self._entries.clear()
        self.held_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def _over(self) -> bool:
        too_many = self.max_entries is not None and len(self._entries) > self.max_entries
        return too_many or self.held_bytes > self.max_bytes
