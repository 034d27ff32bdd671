"""The byte-bounded LRU both caches use (batchgen/lru.py), against a plain model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from batchgen.lru import BytesLRU

operations = st.lists(
    st.tuples(st.sampled_from("abcdef"), st.one_of(st.none(), st.binary(max_size=40))),
    max_size=60,
)


@given(operations, st.integers(0, 100), st.one_of(st.none(), st.integers(1, 4)))
def test_the_cache_keeps_the_most_recent_entries_that_fit(
    ops: list[tuple[str, bytes | None]], max_bytes: int, max_entries: int | None
) -> None:
    cache = BytesLRU(max_bytes, max_entries=max_entries)
    model: list[tuple[str, bytes]] = []  # least recent first
    peak = 0
    for key, data in ops:
        if data is None:  # a get
            hit = next((v for k, v in model if k == key), None)
            assert cache.get(key) == hit
            if hit is not None:
                model = [(k, v) for k, v in model if k != key] + [(key, hit)]
            continue
        cache.put(key, data)
        model = [(k, v) for k, v in model if k != key] + [(key, data)]
        while len(model) > 1 and (
            sum(len(v) for _, v in model) > max_bytes
            or (max_entries is not None and len(model) > max_entries)
        ):
            model.pop(0)
        assert cache.get(key) == data  # the last put is always kept, however big
        model = [(k, v) for k, v in model if k != key] + [(key, data)]
        assert len(cache) == len(model)
        assert cache.held_bytes == sum(len(v) for _, v in model)
        assert cache.peak_bytes >= cache.held_bytes
        peak = max(peak, cache.held_bytes)
        assert cache.peak_bytes == peak  # the most held once a put is done, never more
        if len(model) > 1:
            assert cache.held_bytes <= max_bytes


def test_clear_drops_everything_held() -> None:
    cache = BytesLRU(10)
    cache.put("a", b"12345")
    cache.clear()
    assert len(cache) == 0 and cache.held_bytes == 0 and cache.get("a") is None
