"""Building releases: content-addressed, self-describing, reproducible."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from knightwatch.bundle import ReleaseStore, SigningKey, build_release
from knightwatch.bundle.release_store import ENVELOPE_FILE, MANIFEST_FILE, SBOM_FILE
from knightwatch.canonical import sha256_hex
from tests.helpers import MakeSource

EPOCH = {"SOURCE_DATE_EPOCH": "1343826000"}


def store_files(store: Path) -> list[str]:
    """Every path under ``store``, relative and sorted."""
    return sorted(str(p.relative_to(store)) for p in store.rglob("*"))


class TestBlobStore:
    def test_blob_names_are_their_sha256sum(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """``sha256sum`` of every blob equals the blob's name (first 2 hex + rest)."""
        store = tmp_path / "store"
        build_release(make_source(), store, signing_key, environ=EPOCH)
        blobs = sorted((store / "blobs" / "sha256").rglob("*"))
        blobs = [b for b in blobs if b.is_file()]
        done = subprocess.run(
            ["sha256sum", *map(str, blobs)], capture_output=True, text=True, check=True
        )
        for line, blob in zip(done.stdout.splitlines(), blobs, strict=True):
            assert line.split()[0] == blob.parent.name + blob.name

    def test_identical_files_stored_once(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """Two files with the same bytes share one blob."""
        result = build_release(make_source(), tmp_path / "store", signing_key, environ=EPOCH)
        # six source files (two identical) plus the embedded identity file
        assert result.files == 7
        assert result.blobs_written == 6

    def test_second_build_writes_nothing(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """Rebuilding an unchanged tree writes zero blobs and reports the release as existing."""
        source, store = make_source(), tmp_path / "store"
        first = build_release(source, store, signing_key, environ=EPOCH)
        before = store_files(store)
        second = build_release(source, store, signing_key, environ=EPOCH)
        assert (second.digest, second.blobs_written, second.created) == (first.digest, 0, False)
        assert store_files(store) == before

    def test_no_staging_left_behind(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """A successful build leaves only blobs/ and releases/ in the store."""
        store = tmp_path / "store"
        build_release(make_source(), store, signing_key, environ=EPOCH)
        assert sorted(p.name for p in store.iterdir()) == ["blobs", "releases"]


class TestManifest:
    def test_records_every_file(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """Each file's path, size, executable bit, digest and component are recorded."""
        source = make_source()
        result = build_release(source, tmp_path / "store", signing_key, environ=EPOCH)
        manifest = ReleaseStore(tmp_path / "store").load(result.digest).manifest
        entries = {f.path: f for f in manifest.files}
        shop = entries["bin/shop"]
        assert (shop.executable, shop.component, shop.size) == (True, "cli", 20)
        assert shop.digest == sha256_hex((source / "bin/shop").read_bytes())
        assert entries["core/util/money.py"].component == "core"
        assert entries["core/book.py"].executable is False
        assert [f.path for f in manifest.files] == sorted(entries)

    def test_release_digest_is_manifest_sha256(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """The digest is the SHA-256 of the stored canonical manifest; the ID embeds it."""
        result = build_release(make_source(), tmp_path / "store", signing_key, environ=EPOCH)
        data = (tmp_path / "store" / "releases" / result.digest / MANIFEST_FILE).read_bytes()
        assert sha256_hex(data) == result.digest
        assert result.release_id == f"shop@1.0.0+{result.digest[:12]}"
        assert b"\n" not in data and b": " not in data

    def test_embedded_version_id(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """``.knightwatch/release.json`` is a file of the manifest naming the release."""
        store = tmp_path / "store"
        result = build_release(make_source(), store, signing_key, environ=EPOCH)
        manifest = ReleaseStore(store).load(result.digest).manifest
        entry = next(f for f in manifest.files if f.path == ".knightwatch/release.json")
        assert entry.digest is not None
        identity = json.loads(ReleaseStore(store).blobs.read(entry.digest))
        assert (identity["name"], identity["version"]) == ("shop", "1.0.0")
        assert identity["source"]["build_time"] == "2012-08-01T13:00:00Z"
        assert identity["source"]["build_time_source"] == "SOURCE_DATE_EPOCH"


class TestReproducibility:
    def test_same_source_same_bytes(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """Two stores built from the same source hold byte-identical release directories."""
        source = make_source()
        first = build_release(source, tmp_path / "a", signing_key, environ=EPOCH)
        second = build_release(source, tmp_path / "b", signing_key, environ=EPOCH)
        assert first.digest == second.digest
        for name in (MANIFEST_FILE, SBOM_FILE, ENVELOPE_FILE):
            a = (tmp_path / "a" / "releases" / first.digest / name).read_bytes()
            b = (tmp_path / "b" / "releases" / first.digest / name).read_bytes()
            assert a == b, name

    def test_copied_tree_same_digest(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """A copy of the tree elsewhere (``cp -a``) builds to the same digest without any env."""
        source = make_source()
        copy = tmp_path / "elsewhere"
        subprocess.run(["cp", "-a", str(source), str(copy)], check=True)
        first = build_release(source, tmp_path / "a", signing_key, environ={})
        second = build_release(copy, tmp_path / "b", signing_key, environ={})
        assert first.digest == second.digest
        assert first.sbom_sha256 == second.sbom_sha256

    def test_process_pool_matches_single_process(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """Hashing in worker processes gives the same release as one process."""
        files = {f"core/m{i:03}.py": f"X = {i}\n".encode() * (i + 1) for i in range(300)}
        source = make_source(
            files={**files, "router/r.py": b"", "bin/shop": b"#!/bin/sh\n", "docs/a.md": b"a"}
        )
        pooled = build_release(source, tmp_path / "a", signing_key, environ=EPOCH, workers=2)
        single = build_release(source, tmp_path / "b", signing_key, environ=EPOCH, workers=1)
        assert pooled.digest == single.digest
        assert pooled.blobs_written == single.blobs_written == 304

    def test_large_file_streamed(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """A file over the in-memory threshold is hashed and stored correctly."""
        big = os.urandom(1024) * (17 * 1024)
        source = make_source(
            files={"core/big.bin": big, "router/r.py": b"r", "bin/shop": b"s", "docs/d.md": b"d"}
        )
        store = tmp_path / "store"
        build_release(source, store, signing_key, environ=EPOCH)
        digest = sha256_hex(big)
        assert (store / "blobs" / "sha256" / digest[:2] / digest[2:]).read_bytes() == big

    def test_epoch_changes_digest(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """The build time is part of the identity: another SOURCE_DATE_EPOCH, another digest."""
        source = make_source()
        first = build_release(source, tmp_path / "a", signing_key, environ=EPOCH)
        later = build_release(
            source, tmp_path / "b", signing_key, environ={"SOURCE_DATE_EPOCH": "1343829600"}
        )
        assert first.digest != later.digest


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
class TestGitSource:
    def _git(self, source: Path, *args: str) -> str:
        env = {
            **os.environ,
            "GIT_AUTHOR_DATE": "1343826000 +0000",
            "GIT_COMMITTER_DATE": "1343826000 +0000",
        }
        done = subprocess.run(
            [
                "git",
                "-C",
                str(source),
                "-c",
                "user.name=kw",
                "-c",
                "user.email=kw@example.invalid",
                *args,
            ],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        return done.stdout.strip()

    def test_commit_and_commit_time(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """In a git work tree the commit is recorded and its time is the build time."""
        source = make_source()
        self._git(source, "init", "-q")
        self._git(source, "add", "-A")
        self._git(source, "commit", "-qm", "release")
        head = self._git(source, "rev-parse", "HEAD")
        store = tmp_path / "store"
        result = build_release(source, store, signing_key, environ={})
        info = ReleaseStore(store).load(result.digest).manifest.source
        assert (info.vcs, info.commit, info.dirty) == ("git", head, False)
        assert (info.build_time, info.build_time_source) == ("2012-08-01T13:00:00Z", "commit")

    def test_dirty_tree_is_marked(
        self, make_source: MakeSource, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """Uncommitted changes are recorded as dirty; .git itself is never part of a release."""
        source = make_source()
        self._git(source, "init", "-q")
        self._git(source, "add", "-A")
        self._git(source, "commit", "-qm", "release")
        (source / "core" / "book.py").write_text("BOOK = {'changed': True}\n")
        store = tmp_path / "store"
        result = build_release(source, store, signing_key, environ={})
        manifest = ReleaseStore(store).load(result.digest).manifest
        assert manifest.source.dirty is True
        assert not any(f.path.startswith(".git/") for f in manifest.files)


class TestSbom:
    def test_valid_cyclonedx_1_6(
        self, example_source: Path, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """The SBOM passes cyclonedx-python-lib's strict JSON validator for 1.6."""
        result = build_release(example_source, tmp_path / "s", signing_key, environ=EPOCH)
        sbom = (tmp_path / "s" / "releases" / result.digest / SBOM_FILE).read_text()
        assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom) is None

    def test_components_files_and_dependencies(
        self, example_source: Path, tmp_path: Path, signing_key: SigningKey
    ) -> None:
        """One component per declared component, its files nested, depends_on as the graph."""
        result = build_release(example_source, tmp_path / "s", signing_key, environ=EPOCH)
        sbom = json.loads((tmp_path / "s" / "releases" / result.digest / SBOM_FILE).read_text())
        assert sbom["specVersion"] == "1.6"
        by_name = {c["name"]: c for c in sbom["components"]}
        assert set(by_name) == {"core", "router", "config"}
        assert by_name["router"]["version"] == "2.0.0"
        assert {f["name"] for f in by_name["router"]["components"]} == {
            "bin/smars-router",
            "smars/router.py",
        }
        deps = {d["ref"]: d.get("dependsOn", []) for d in sbom["dependencies"]}
        assert deps["smars/router"] == ["smars/core"]
        assert sbom["serialNumber"].startswith("urn:uuid:")
        assert sbom["metadata"]["timestamp"].startswith("2012-08-01T13:00:00")
