"""Staging releases from a local release store: exact trees, or a clear refusal."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from knightwatch.agent.errors import StagingError
from knightwatch.agent.faults import PAUSE_ENV
from knightwatch.agent.fetch import BlobFetcher, StagingCancelledError
from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.source import BlobStream, LocalReleaseSource
from knightwatch.agent.staging import Stager
from knightwatch.bundle import TrustedKey
from knightwatch.bundle.release_store import MANIFEST_FILE
from knightwatch.testing import wait_until
from tests.agent.conftest import Releases


class RecordingSource(LocalReleaseSource):
    """The local source, noting the offset of every blob request."""

    def __init__(self, store_root: Path) -> None:
        super().__init__(store_root)
        self.offsets: list[int] = []

    def open_blob(self, digest: str, offset: int) -> AbstractContextManager[BlobStream]:
        """Record the offset, then serve as usual."""
        self.offsets.append(offset)
        return super().open_blob(digest, offset)


def staging_leftovers(layout: NodeLayout) -> list[str]:
    """Names in releases/ that are not published releases."""
    return [n for n in os.listdir(layout.releases_dir) if n.startswith(".")]


def leftovers(layout: NodeLayout) -> list[str]:
    """Staging leftovers and partial downloads."""
    return staging_leftovers(layout) + os.listdir(layout.partial_dir)


class TestStagedTree:
    def test_tree_is_the_manifest(
        self, releases: Releases, layout: NodeLayout, stager: Stager
    ) -> None:
        """Every file, mode, symlink and data link is in place, read-only, and nothing else."""
        built = releases.build(symlinks={"lib/link.txt": "a.txt"})
        staged = stager.prepare(LocalReleaseSource(releases.store), built.digest)
        tree = layout.release_dir(built.digest)
        assert staged.directory == tree and not staged.reused
        manifest = releases.manifest(built.digest)
        for entry in manifest.files:
            path = tree / entry.path
            st = os.lstat(path)
            if entry.symlink is not None:
                assert os.readlink(path) == entry.symlink
            elif entry.executable:
                assert stat.S_IMODE(st.st_mode) == 0o555, entry.path
                assert st.st_ino != layout.blobs.path_of(entry.digest or "").stat().st_ino
            else:
                assert stat.S_IMODE(st.st_mode) == 0o444, entry.path
                assert st.st_ino == layout.blobs.path_of(entry.digest or "").stat().st_ino
        data = tree / "var" / "db"
        assert data.is_symlink() and not os.path.isabs(os.readlink(data))
        assert data.resolve() == (layout.data_dir / "var" / "db").resolve()
        assert stat.S_IMODE(tree.stat().st_mode) == 0o555
        assert stat.S_IMODE((tree / "lib").stat().st_mode) == 0o555
        assert (
            layout.manifest_file(built.digest).read_bytes()
            == (releases.store / "releases" / built.digest / MANIFEST_FILE).read_bytes()
        )
        assert stager.verify(manifest, tree).ok
        assert leftovers(layout) == []

    def test_shared_content_is_fetched_once(
        self, releases: Releases, layout: NodeLayout, stager: Stager
    ) -> None:
        """Two files with the same bytes use one blob, fetched once."""
        built = releases.build()
        staged = stager.prepare(LocalReleaseSource(releases.store), built.digest)
        blobs = {f.digest for f in releases.manifest(built.digest).files if f.digest}
        assert staged.blobs_fetched == len(blobs) < len(releases.manifest(built.digest).files)

    def test_many_files_are_verified_in_parallel(
        self, releases: Releases, layout: NodeLayout, stager: Stager
    ) -> None:
        """A release of hundreds of files stages and verifies (the process-pool path)."""
        files = {f"lib/f{i:04d}.txt": f"file {i}\n".encode() for i in range(300)}
        built = releases.build(files={**files, "bin/serve.py": b"pass\n"})
        stager.prepare(LocalReleaseSource(releases.store), built.digest)
        assert len(list((layout.release_dir(built.digest) / "lib").iterdir())) == 300

    def test_prepare_again_reverifies_and_keeps_the_tree(
        self, releases: Releases, layout: NodeLayout, stager: Stager
    ) -> None:
        """A second prepare of a staged release re-verifies it and fetches nothing."""
        built = releases.build()
        source = LocalReleaseSource(releases.store)
        stager.prepare(source, built.digest)
        inode = layout.release_dir(built.digest).stat().st_ino
        again = stager.prepare(source, built.digest)
        assert again.reused and again.blobs_fetched == 0
        assert layout.release_dir(built.digest).stat().st_ino == inode

    def test_damaged_tree_is_rebuilt(
        self, releases: Releases, layout: NodeLayout, stager: Stager
    ) -> None:
        """A staged tree with an extra file is replaced by an exact one on the next prepare."""
        built = releases.build()
        source = LocalReleaseSource(releases.store)
        stager.prepare(source, built.digest)
        tree = layout.release_dir(built.digest)
        os.chmod(tree / "lib", 0o755)
        (tree / "lib" / "power_peg.py").write_text("dead code\n")
        os.chmod(tree / "lib", 0o555)
        again = stager.prepare(source, built.digest)
        assert not again.reused
        assert not (tree / "lib" / "power_peg.py").exists()

    def test_damaged_active_tree_is_refused_not_removed(
        self, releases: Releases, layout: NodeLayout, stager: Stager
    ) -> None:
        """The active release is never deleted from under its service: the damage is reported."""
        built = releases.build()
        source = LocalReleaseSource(releases.store)
        stager.prepare(source, built.digest)
        tree = layout.release_dir(built.digest)
        os.chmod(tree / "lib", 0o755)
        (tree / "lib" / "power_peg.py").write_text("dead code\n")
        with pytest.raises(StagingError, match=r"differs from its manifest: lib/power_peg.py"):
            stager.prepare(source, built.digest, protected=frozenset({built.digest}))
        assert (tree / "lib" / "power_peg.py").exists()


class TestRefusals:
    def test_blob_with_wrong_content(
        self, releases: Releases, layout: NodeLayout, stager: Stager
    ) -> None:
        """A blob whose bytes do not hash to its name is refused, named, and not kept."""
        built = releases.build()
        entry = next(f for f in releases.manifest(built.digest).files if f.path == "lib/b.txt")
        assert entry.digest is not None
        blob = releases.blob(entry.digest)
        blob.chmod(0o644)
        blob.write_bytes(b"BRAVO\n")
        with pytest.raises(StagingError) as caught:
            stager.prepare(LocalReleaseSource(releases.store), built.digest)
        assert f"blob {entry.digest[:12]}… served with wrong content (sha256 " in str(caught.value)
        assert not layout.blobs.has(entry.digest)
        assert not (layout.partial_dir / entry.digest).exists()
        assert layout.release_digests() == [] and staging_leftovers(layout) == []

    def test_untrusted_signature(
        self, releases: Releases, layout: NodeLayout, untrusted_key: TrustedKey
    ) -> None:
        """A release signed by a key the node does not trust is refused before any fetch."""
        built = releases.build()
        stager = Stager(layout, [untrusted_key])
        with pytest.raises(StagingError, match="signature: no valid signature by a trusted key"):
            stager.prepare(LocalReleaseSource(releases.store), built.digest)
        assert os.listdir(layout.blobs.blobs_dir) == []

    def test_no_trusted_key_at_all(self, releases: Releases, layout: NodeLayout) -> None:
        """An agent that trusts no key refuses every release and says how to fix it."""
        built = releases.build()
        with pytest.raises(StagingError, match="trusts no release-signing key"):
            Stager(layout, []).prepare(LocalReleaseSource(releases.store), built.digest)

    def test_manifest_of_another_release(
        self, releases: Releases, layout: NodeLayout, stager: Stager
    ) -> None:
        """Manifest bytes that do not hash to the digest asked for are refused."""
        one = releases.build(version="1.0.0")
        two = releases.build(version="2.0.0")
        target = releases.store / "releases" / two.digest / MANIFEST_FILE
        target.write_bytes((releases.store / "releases" / one.digest / MANIFEST_FILE).read_bytes())
        with pytest.raises(StagingError, match="not the release digest"):
            stager.prepare(LocalReleaseSource(releases.store), two.digest)

    def test_release_id_must_match_the_command(
        self, releases: Releases, layout: NodeLayout, stager: Stager
    ) -> None:
        """A command naming another release ID than the manifest's is refused."""
        built = releases.build()
        with pytest.raises(StagingError, match=r"the command names app@9\.9\.9"):
            stager.prepare(
                LocalReleaseSource(releases.store), built.digest, release_id="app@9.9.9+0"
            )

    def test_read_only_releases_directory(
        self, releases: Releases, layout: NodeLayout, stager: Stager
    ) -> None:
        """A read-only file system under releases/ is refused with the path and the cause."""
        built = releases.build()
        with _read_only_mount(layout.releases_dir), pytest.raises(StagingError) as caught:
            stager.prepare(LocalReleaseSource(releases.store), built.digest)
        assert str(caught.value) == f"cannot write {layout.releases_dir}: Read-only file system"

    def test_corrupt_cached_blob_is_evicted(
        self, releases: Releases, layout: NodeLayout, stager: Stager
    ) -> None:
        """A cached blob that went bad fails verification, is evicted, and a retry succeeds."""
        built = releases.build()
        source = LocalReleaseSource(releases.store)
        entry = next(f for f in releases.manifest(built.digest).files if f.path == "lib/b.txt")
        assert entry.digest is not None
        BlobFetcher(layout, source).ensure(entry.digest, entry.size)
        cached = layout.blobs.path_of(entry.digest)
        cached.chmod(0o644)
        cached.write_bytes(b"BRAVO\n")
        cached.chmod(0o444)
        with pytest.raises(StagingError, match=r"lib/b.txt: content differs"):
            stager.prepare(source, built.digest)
        assert not cached.exists()
        assert stager.prepare(source, built.digest).directory.is_dir()

    def test_cancel_stops_and_cleans_up(
        self, releases: Releases, layout: NodeLayout, stager: Stager
    ) -> None:
        """A staging cancelled by shutdown leaves no staging directory behind."""
        built = releases.build()
        stager.cancel.set()
        with pytest.raises(StagingCancelledError):
            stager.prepare(LocalReleaseSource(releases.store), built.digest)
        assert layout.release_digests() == [] and staging_leftovers(layout) == []


class TestPausePoint:
    def test_prepare_pauses_before_publishing_until_cancelled(
        self,
        releases: Releases,
        layout: NodeLayout,
        stager: Stager,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """With the fault hook set, prepare stalls before publishing; shutdown unblocks it."""
        built = releases.build()
        monkeypatch.setenv(PAUSE_ENV, "prepare")
        errors: list[BaseException] = []

        def prepare() -> None:
            try:
                stager.prepare(LocalReleaseSource(releases.store), built.digest)
            except StagingError as exc:
                errors.append(exc)

        worker = threading.Thread(target=prepare)
        worker.start()
        try:
            wait_until(
                lambda: bool(staging_leftovers(layout)),
                timeout=60,
                what="prepare to reach the pause",
            )
            time.sleep(0.2)
            assert worker.is_alive() and layout.release_digests() == []
        finally:
            stager.cancel.set()
            worker.join(timeout=60)
        assert [type(e) for e in errors] == [StagingCancelledError]
        assert staging_leftovers(layout) == [] and layout.release_digests() == []


class TestResume:
    def test_partial_download_resumes_from_its_end(
        self, releases: Releases, layout: NodeLayout
    ) -> None:
        """A blob half downloaded earlier is completed from the offset it reached."""
        data = os.urandom(300_000)
        built = releases.build(files={"bin/serve.py": b"pass\n", "big.bin": data})
        entry = next(f for f in releases.manifest(built.digest).files if f.path == "big.bin")
        assert entry.digest is not None
        (layout.partial_dir / entry.digest).write_bytes(data[:100_000])
        source = RecordingSource(releases.store)
        assert BlobFetcher(layout, source).ensure(entry.digest, entry.size)
        assert source.offsets == [100_000]
        assert layout.blobs.path_of(entry.digest).read_bytes() == data
        assert stat.S_IMODE(layout.blobs.path_of(entry.digest).stat().st_mode) == 0o444
        assert os.listdir(layout.partial_dir) == []

    def test_bad_partial_is_discarded(self, releases: Releases, layout: NodeLayout) -> None:
        """A partial download holding wrong bytes fails the digest check and is deleted."""
        data = os.urandom(50_000)
        built = releases.build(files={"bin/serve.py": b"pass\n", "big.bin": data})
        entry = next(f for f in releases.manifest(built.digest).files if f.path == "big.bin")
        assert entry.digest is not None
        (layout.partial_dir / entry.digest).write_bytes(b"\0" * 10_000)
        with pytest.raises(StagingError, match="served with wrong content"):
            BlobFetcher(layout, LocalReleaseSource(releases.store)).ensure(entry.digest, entry.size)
        assert os.listdir(layout.partial_dir) == []
        assert BlobFetcher(layout, LocalReleaseSource(releases.store)).ensure(
            entry.digest, entry.size
        )


@contextlib.contextmanager
def _read_only_mount(directory: Path) -> Iterator[None]:
    """Mount an empty read-only tmpfs on ``directory`` (skip the test if we cannot)."""
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(directory)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)
