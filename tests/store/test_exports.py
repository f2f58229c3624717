"""The public API of knightwatch.store."""

from __future__ import annotations

import knightwatch.store


def test_all_is_sorted_and_complete() -> None:
    """``__all__`` is sorted, every name in it exists, and every public class is in it."""
    exported = knightwatch.store.__all__
    assert exported == sorted(exported)
    for name in exported:
        assert hasattr(knightwatch.store, name), name
    public = {n for n in vars(knightwatch.store) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(exported)
