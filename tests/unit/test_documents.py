"""The control plane's in-memory release documents."""

from __future__ import annotations

from knightwatch.server.documents import ReleaseDocuments


def test_a_release_is_read_from_the_store_once() -> None:
    """Repeated requests for one release load it once; both documents come from that load."""
    loads: list[str] = []

    def load() -> tuple[bytes, bytes]:
        loads.append("r1")
        return b"manifest-1", b"envelope-1"

    documents = ReleaseDocuments()
    assert documents.get("r1", "manifest", load) == b"manifest-1"
    assert documents.get("r1", "envelope", load) == b"envelope-1"
    assert documents.get("r1", "manifest", load) == b"manifest-1"
    assert loads == ["r1"]


def test_an_unknown_release_is_not_remembered() -> None:
    """A miss returns None and is asked again next time (the release may be pushed later)."""
    answers: list[tuple[bytes, bytes] | None] = [None, (b"m", b"e")]
    documents = ReleaseDocuments()
    assert documents.get("r2", "manifest", lambda: answers.pop(0)) is None
    assert documents.get("r2", "manifest", lambda: answers.pop(0)) == b"m"


def test_the_least_recently_served_release_is_dropped_beyond_capacity() -> None:
    """Capacity 2: serving a third release evicts the one served longest ago."""
    loads: list[str] = []

    def loader(digest: str) -> tuple[bytes, bytes]:
        loads.append(digest)
        return digest.encode(), b"e"

    documents = ReleaseDocuments(capacity=2)
    for digest in ("a", "b", "a", "c", "a", "b"):
        documents.get(digest, "manifest", lambda d=digest: loader(d))
    assert loads == ["a", "b", "c", "b"]
