"""Hash proofs: a deploy hashes only what it has not hashed, and nothing unverified gets in."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from knightwatch.agent.errors import StagingError
from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.releaseindex import stat_key
from knightwatch.agent.source import LocalReleaseSource
from knightwatch.agent.staging import Stager
from knightwatch.agent.treeaudit import TreeAudit
from knightwatch.bundle import TrustedKey
from knightwatch.clock import VirtualClock
from knightwatch.protocol.audit import FindingKind
from tests.agent.conftest import Releases

FILES = {f"lib/f{i:03d}.txt": f"file {i}\n".encode() * 50 for i in range(80)}


def tamper_keeping_stat(path: Path) -> None:
    """Flip one byte in place, same size, and put the mtime back (ctime moves; it must)."""
    before = os.stat(path)
    os.chmod(path, 0o644)
    with path.open("r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 0x20]))
    os.chmod(path, before.st_mode & 0o7777)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def one_changed(files: dict[str, bytes]) -> dict[str, bytes]:
    """The same files with the first one's bytes changed."""
    first = sorted(files)[0]
    return {**files, first: b"changed\n"}


def test_a_redeploy_hashes_only_what_arrived(releases: Releases, stager: Stager) -> None:
    """Blobs are hashed as they arrive; a one-file redeploy hashes nothing twice."""
    source = LocalReleaseSource(releases.store)
    v1 = releases.build(files=FILES)
    v2 = releases.build(files=one_changed(FILES), version="1.0.1")
    first = stager.prepare(source, v1.digest)
    assert first.blobs_fetched > 0 and first.files_hashed == 0
    second = stager.prepare(source, v2.digest)
    assert second.blobs_fetched == 2  # the changed file and the version file
    assert second.files_hashed == 0
    # Linking into v2 moved the shared inodes' ctime; the proofs moved with it.
    assert stager.verify(releases.manifest(v1.digest), stager.layout.release_dir(v1.digest)).ok


def test_an_agent_without_proofs_hashes_every_file(
    releases: Releases, layout: NodeLayout, trusted_key: TrustedKey
) -> None:
    """A restarted agent (no proofs in memory) hashes the whole tree once, then trusts it."""
    v1 = releases.build(files=FILES)
    Stager(layout, [trusted_key]).prepare(LocalReleaseSource(releases.store), v1.digest)
    restarted = Stager(layout, [trusted_key])
    manifest = releases.manifest(v1.digest)
    tree = layout.release_dir(v1.digest)
    regular = sum(1 for f in manifest.files if f.digest is not None)
    assert restarted.verify(manifest, tree).files_hashed == regular
    assert restarted.verify(manifest, tree).files_hashed == 0


def test_a_cached_blob_changed_with_its_mtime_restored_never_reaches_a_tree(
    releases: Releases, layout: NodeLayout, stager: Stager
) -> None:
    """Same size, mtime put back, written through the cache path no watch sees: ctime tells."""
    source = LocalReleaseSource(releases.store)
    v1 = releases.build(files=FILES)
    stager.prepare(source, v1.digest)
    victim = next(f for f in releases.manifest(v1.digest).files if f.path == "lib/f000.txt")
    assert victim.digest is not None
    tamper_keeping_stat(layout.blobs.path_of(victim.digest))
    v2 = releases.build(files={**FILES, "lib/extra.txt": b"new\n"}, version="1.0.1")
    with pytest.raises(StagingError, match=r"lib/f000.txt: content differs"):
        stager.prepare(source, v2.digest)
    assert not layout.release_dir(v2.digest).exists()
    assert not layout.blobs.has(victim.digest)  # evicted: the next prepare fetches it again
    staged = stager.prepare(source, v2.digest)
    assert (staged.directory / "lib/f000.txt").read_bytes() == FILES["lib/f000.txt"]


def test_a_proof_is_for_one_digest(releases: Releases, layout: NodeLayout, stager: Stager) -> None:
    """A tree path re-linked to another proven blob is hashed: its proof names other bytes."""
    source = LocalReleaseSource(releases.store)
    v1 = releases.build(files=FILES)
    stager.prepare(source, v1.digest)
    audit = TreeAudit(layout=layout, stager=stager, clock=VirtualClock())
    asyncio.run(audit.load(v1.digest))
    assert audit.findings() == []
    tree = layout.release_dir(v1.digest)
    manifest = releases.manifest(v1.digest)
    other = next(f for f in manifest.files if f.path == "lib/f001.txt")
    assert other.digest is not None
    os.chmod(tree / "lib", 0o755)
    os.unlink(tree / "lib/f000.txt")
    os.link(layout.blobs.path_of(other.digest), tree / "lib/f000.txt")
    os.chmod(tree / "lib", 0o555)
    asyncio.run(audit.sweep_changed())
    kinds = {(f.path, f.kind) for f in audit.findings()}
    assert ("lib/f000.txt", FindingKind.MODIFIED) in kinds


def test_the_scheduled_re_hash_trusts_no_proof(
    releases: Releases, layout: NodeLayout, stager: Stager
) -> None:
    """A change stat cannot see is caught by the full re-hash, not by the stat sweep.

    User space cannot put ctime back, so the test plays the one thing that
    can (root moving the clock, or writing the disk underneath): it records a
    proof that matches the tampered file's stat as of now.
    """
    source = LocalReleaseSource(releases.store)
    v1 = releases.build(files=FILES)
    stager.prepare(source, v1.digest)
    audit = TreeAudit(layout=layout, stager=stager, clock=VirtualClock())
    asyncio.run(audit.load(v1.digest))
    victim = layout.release_dir(v1.digest) / "lib/f002.txt"
    entry = next(f for f in releases.manifest(v1.digest).files if f.path == "lib/f002.txt")
    assert entry.digest is not None
    tamper_keeping_stat(victim)
    stager.proofs.record([(stat_key(os.lstat(victim)), entry.digest)])  # the forged ctime
    asyncio.run(audit.sweep_changed())
    assert audit.findings() == []  # stat and proof agree: the incremental look is fooled
    asyncio.run(audit.sweep())
    assert [(f.path, f.kind) for f in audit.findings()] == [("lib/f002.txt", FindingKind.MODIFIED)]


def test_lost_watch_events_forget_every_proof(releases: Releases, stager: Stager) -> None:
    """After the watch lost events, the next staging hashes every file again."""
    source = LocalReleaseSource(releases.store)
    v1 = releases.build(files=FILES)
    stager.prepare(source, v1.digest)
    audit = TreeAudit(layout=stager.layout, stager=stager, clock=VirtualClock())
    audit.forget_proofs()
    assert len(stager.proofs) == 0
    manifest = releases.manifest(v1.digest)
    regular = sum(1 for f in manifest.files if f.digest is not None)
    assert stager.verify(manifest, stager.layout.release_dir(v1.digest)).files_hashed == regular
