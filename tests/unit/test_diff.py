"""Comparing releases and computing downstream impact."""

from __future__ import annotations

from pathlib import Path

from knightwatch.bundle import ReleaseStore, SigningKey, build_release, diff_releases
from tests.helpers import SMALL_SPEC, MakeSource

EPOCH = {"SOURCE_DATE_EPOCH": "1343826000"}
BASE = {
    "core/book.py": b"BOOK = {}\n",
    "router/route.py": b"route\n",
    "bin/shop": b"#!/bin/sh\n",
    "docs/README.md": b"# shop\n",
}


def build_pair(
    make_source: MakeSource,
    store: Path,
    key: SigningKey,
    new_files: dict[str, bytes],
    new_spec: str | None = None,
):  # type: ignore[no-untyped-def]
    """Build the base release and a changed one; return their manifests."""
    a = build_release(make_source(files=BASE), store, key, environ=EPOCH)
    b = build_release(
        make_source(version="2.0.0", files=new_files, spec=new_spec), store, key, environ=EPOCH
    )
    releases = ReleaseStore(store)
    return releases.load(a.digest).manifest, releases.load(b.digest).manifest


class TestDiff:
    def test_core_change_reaches_everything_downstream(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """Changing core marks router and cli (which depend on it, transitively) downstream."""
        a, b = build_pair(
            make_source, tmp_path / "s", signing_key, {**BASE, "core/book.py": b"BOOK = {'x': 1}\n"}
        )
        diff = diff_releases(a, b)
        assert diff.files_changed == [".knightwatch/release.json", "core/book.py"]
        assert diff.components_changed == ["core"]
        assert diff.downstream == ["cli", "router"]

    def test_leaf_change_has_no_downstream(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """A change to docs (nothing depends on it) has no downstream impact."""
        a, b = build_pair(
            make_source,
            tmp_path / "s",
            signing_key,
            {**BASE, "docs/README.md": b"# new\n", "docs/extra.md": b"x"},
        )
        diff = diff_releases(a, b)
        assert diff.files_added == ["docs/extra.md"]
        assert diff.components_changed == ["docs"]
        assert diff.downstream == []

    def test_removed_file(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """A removed file is listed as removed, not as changed."""
        files = {k: v for k, v in BASE.items() if k != "docs/README.md"}
        files["docs/other.md"] = b"o"
        a, b = build_pair(make_source, tmp_path / "s", signing_key, files)
        diff = diff_releases(a, b)
        assert diff.files_removed == ["docs/README.md"]
        assert diff.files_added == ["docs/other.md"]
        assert "docs/README.md" not in diff.files_changed

    def test_version_bump_alone_changes_component(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """A component whose version changed is changed even if its bytes are not."""
        spec = SMALL_SPEC.format(name="shop", version="2.0.0").replace(
            'name = "router"\nversion = "1.0.0"', 'name = "router"\nversion = "1.1.0"'
        )
        a, b = build_pair(make_source, tmp_path / "s", signing_key, BASE, new_spec=spec)
        diff = diff_releases(a, b)
        assert diff.components_changed == ["router"]
        assert diff.downstream == ["cli"]

    def test_identical(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """A release compared with itself is identical."""
        result = build_release(make_source(files=BASE), tmp_path / "s", signing_key, environ=EPOCH)
        manifest = ReleaseStore(tmp_path / "s").load(result.digest).manifest
        assert diff_releases(manifest, manifest).identical
