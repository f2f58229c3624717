"""The node layout: atomic switch of ``current``, atomic journal writes, crash leftovers."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from knightwatch.agent.errors import SwitchError
from knightwatch.agent.layout import NodeLayout, atomic_write

A = "a" * 64
B = "b" * 64


def make_release(layout: NodeLayout, digest: str, marker: str) -> None:
    """A fake release tree holding one file naming it."""
    tree = layout.release_dir(digest)
    tree.mkdir()
    (tree / "marker").write_text(marker)


class TestEnsure:
    def test_creates_every_directory_and_an_empty_flags_file(self, tmp_path: Path) -> None:
        """ensure() makes the documented layout and writes flags.json as {}."""
        layout = NodeLayout(tmp_path / "root")
        layout.ensure()
        for rel in ("blobs/sha256", "blobs/.partial", "releases", "agent/trusted", "data", "logs"):
            assert (tmp_path / "root" / rel).is_dir(), rel
        assert (tmp_path / "root" / "flags.json").read_text().strip() == "{}"
        assert (tmp_path / "root" / "agent").stat().st_mode & 0o077 == 0

    def test_keeps_existing_flags(self, tmp_path: Path) -> None:
        """An existing flags file is never overwritten by ensure()."""
        layout = NodeLayout(tmp_path / "root")
        layout.ensure()
        atomic_write(layout.flags_file, b'{"x": true}')
        layout.ensure()
        assert layout.flags_file.read_bytes() == b'{"x": true}'


class TestSwitch:
    def test_current_points_at_the_release(self, layout: NodeLayout) -> None:
        """After a switch, current is a relative symlink to releases/<digest>."""
        make_release(layout, A, "a")
        layout.switch_current(A)
        assert os.readlink(layout.current) == f"releases/{A}"
        assert layout.active_digest() == A
        assert (layout.current / "marker").read_text() == "a"

    def test_switch_to_missing_release_is_refused(self, layout: NodeLayout) -> None:
        """Switching to a digest with no tree raises and leaves current alone."""
        make_release(layout, A, "a")
        layout.switch_current(A)
        with pytest.raises(SwitchError, match="does not exist"):
            layout.switch_current(B)
        assert layout.active_digest() == A

    def test_readers_never_see_current_missing(self, layout: NodeLayout) -> None:
        """While current flips between two releases, a reader always finds a complete one."""
        make_release(layout, A, "a")
        make_release(layout, B, "b")
        layout.switch_current(A)
        seen: set[str] = set()
        failures: list[BaseException] = []
        done = threading.Event()

        def read() -> None:
            while not done.is_set():
                try:
                    seen.add((layout.current / "marker").read_text())
                except OSError as exc:
                    failures.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for index in range(300):
                layout.switch_current(B if index % 2 == 0 else A)
        finally:
            done.set()
            reader.join()
        assert failures == []
        assert seen <= {"a", "b"}
        assert not [p for p in os.listdir(layout.root) if p.startswith("current.tmp-")]

    def test_dangling_or_foreign_current_is_no_release(self, layout: NodeLayout) -> None:
        """A current pointing outside releases/ or at a missing tree names no active release."""
        os.symlink("/etc", layout.current)
        assert layout.active_digest() is None
        layout.current.unlink()
        os.symlink(f"releases/{A}", layout.current)
        assert layout.active_digest() is None


class TestAtomicWrite:
    def test_replaces_by_rename(self, tmp_path: Path) -> None:
        """The new content arrives in a new inode (rename), with the requested mode."""
        path = tmp_path / "state.json"
        path.write_bytes(b"old")
        before = path.stat().st_ino
        atomic_write(path, b"new", mode=0o600)
        assert path.read_bytes() == b"new"
        assert path.stat().st_ino != before
        assert path.stat().st_mode & 0o777 == 0o600
        assert sorted(os.listdir(tmp_path)) == ["state.json"]

    def test_failed_write_keeps_the_old_content(self, tmp_path: Path) -> None:
        """A write that fails half-way leaves the old file and no temporary behind."""
        path = tmp_path / "state.json"
        path.write_bytes(b"old")
        with pytest.raises(TypeError):
            atomic_write(path, 42)  # type: ignore[arg-type]
        assert path.read_bytes() == b"old"
        assert sorted(os.listdir(tmp_path)) == ["state.json"]


class TestLeftovers:
    def test_crash_leftovers_are_removed(self, layout: NodeLayout) -> None:
        """Staging dirs, trash dirs, temp symlinks and temp files from a crash are cleaned."""
        staging = layout.staging_dir(A)
        (staging / "sub").mkdir(parents=True)
        (staging / "sub" / "f").write_text("x")
        os.chmod(staging / "sub", 0o555)
        os.symlink(f"releases/{A}", layout.root / "current.tmp-123")
        (layout.root / ".state.json.tmp-abcd").write_text("{")
        make_release(layout, A, "a")
        removed = layout.clean_leftovers()
        assert len(removed) == 3
        assert layout.release_digests() == [A]
        assert sorted(os.listdir(layout.root)) == sorted(
            ["agent", "blobs", "data", "flags.json", "logs", "releases"]
        )

    def test_remove_release_deletes_a_read_only_tree(self, layout: NodeLayout) -> None:
        """A read-only release tree is removed completely, with its kept manifest."""
        make_release(layout, A, "a")
        tree = layout.release_dir(A)
        (tree / "d").mkdir()
        (tree / "d" / "f").write_text("x")
        for path in (tree / "d", tree):
            os.chmod(path, 0o555)
        layout.manifest_file(A).write_text("{}")
        layout.remove_release(A)
        assert layout.release_digests() == []
        assert not layout.manifest_file(A).exists()
        assert os.listdir(layout.releases_dir) == []
