"""The build's hash cache: an unchanged rebuild reads nothing, a changed file is always hashed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from knightwatch.bundle import ReleaseStore, SigningKey, build_release
from knightwatch.bundle.hashcache import RACY_NS, SourceHashCache
from tests.helpers import MakeSource

EPOCH = {"SOURCE_DATE_EPOCH": "1343826000"}


def file_digest(store: Path, digest: str, path: str) -> str:
    """The digest the stored manifest of release ``digest`` gives ``path``."""
    manifest = ReleaseStore(store).load(digest).manifest
    return next(f.digest for f in manifest.files if f.path == path) or ""


@pytest.fixture
def settled_source(make_source: MakeSource) -> Path:
    """A source tree whose files changed longer ago than the racy window."""
    source = make_source()
    time.sleep(RACY_NS / 1e9 + 0.2)
    return source


def test_an_unchanged_rebuild_takes_digests_from_the_cache(
    settled_source: Path, tmp_path: Path, signing_key: SigningKey
) -> None:
    """The second build finds every file in the cache and hashes none; the result is the same."""
    store = tmp_path / "store"
    first = build_release(settled_source, store, signing_key, environ=EPOCH)
    cache = SourceHashCache(store, settled_source).load()
    regular = [p for p in settled_source.rglob("*") if p.is_file() and p.name != "knightwatch.toml"]
    assert len(cache) == len(regular)
    second = build_release(settled_source, store, signing_key, environ=EPOCH)
    assert second.digest == first.digest and second.blobs_written == 0


def test_a_file_changed_with_its_mtime_restored_is_hashed_again(
    settled_source: Path, tmp_path: Path, signing_key: SigningKey
) -> None:
    """Same size, mtime put back: ctime moved, so the cache does not answer for it."""
    store = tmp_path / "store"
    first = build_release(settled_source, store, signing_key, environ=EPOCH)
    victim = next(p for p in sorted(settled_source.rglob("*.py")))
    rel = victim.relative_to(settled_source).as_posix()
    before = victim.stat()
    data = bytearray(victim.read_bytes())
    data[0] ^= 0x20
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    second = build_release(settled_source, store, signing_key, environ=EPOCH)
    assert second.digest != first.digest
    assert file_digest(store, second.digest, rel) != file_digest(store, first.digest, rel)


def test_rehash_ignores_a_cache_that_lies(
    settled_source: Path, tmp_path: Path, signing_key: SigningKey
) -> None:
    """A cache entry naming other bytes (a forged ctime) is believed by default, not by --rehash.

    The test plays what only root moving the clock could do: it rewrites the
    cache so an unchanged stat key maps to another file's digest.
    """
    store = tmp_path / "store"
    first = build_release(settled_source, store, signing_key, environ=EPOCH)
    cache = SourceHashCache(store, settled_source)
    data = json.loads(cache.file.read_text())
    paths = sorted(data["files"])
    data["files"][paths[0]][1] = data["files"][paths[1]][1]
    cache.file.write_text(json.dumps(data))
    lied = build_release(settled_source, store, signing_key, environ=EPOCH)
    assert lied.digest != first.digest
    honest = build_release(settled_source, store, signing_key, environ=EPOCH, rehash=True)
    assert honest.digest == first.digest


@pytest.mark.parametrize("damage", ["not json", '{"version": 1}', '{"version": 1, "files": 3}'])
def test_a_damaged_cache_means_hashing_everything(
    settled_source: Path, tmp_path: Path, signing_key: SigningKey, damage: str
) -> None:
    """The cache is a hint: unreadable, it is ignored and the build is exact."""
    store = tmp_path / "store"
    first = build_release(settled_source, store, signing_key, environ=EPOCH)
    SourceHashCache(store, settled_source).file.write_text(damage)
    again = build_release(settled_source, store, signing_key, environ=EPOCH)
    assert again.digest == first.digest


def test_fresh_files_are_not_cached(
    make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
) -> None:
    """Files changed within the racy window are hashed next time too: no cache file at all."""
    store = tmp_path / "store"
    source = make_source()
    build_release(source, store, signing_key, environ=EPOCH)
    assert not SourceHashCache(store, source).file.exists()
