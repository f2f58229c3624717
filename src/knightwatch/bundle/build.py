"""Building a release: source tree in, signed content-addressed release out.

The order is what makes a refused build leave the store untouched: the spec
and the whole tree are validated first; blobs and the release directory are
then staged in a private area; only when every file hashed cleanly, the SBOM
was made and the manifest signed are the blobs and finally the release
directory published by ``rename(2)``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knightwatch.bundle.blobstore import StagingArea, sync_filesystem
from knightwatch.bundle.hashcache import SourceHashCache, SourceStat
from knightwatch.bundle.hashing import FileDigest, HashTask, digest_files, hash_task
from knightwatch.bundle.identity import identity_bytes, source_info
from knightwatch.bundle.manifest import FileEntry, Manifest, SourceInfo
from knightwatch.bundle.release_store import ENVELOPE_FILE, MANIFEST_FILE, SBOM_FILE, ReleaseStore
from knightwatch.bundle.sbom import build_sbom
from knightwatch.bundle.signing import PREDICATE_TYPE, STATEMENT_TYPE, SigningKey, sign_statement
from knightwatch.bundle.source import IDENTITY_PATH, SourceEntry, scan_source
from knightwatch.bundle.spec import ReleaseSpec, load_spec
from knightwatch.canonical import canonical_json, sha256_hex
from knightwatch.errors import InvalidInputError, SourceTreeError, SpecError

__all__ = ["BuildResult", "build_release", "release_statement"]


@dataclass(frozen=True)
class BuildResult:
    """What a build produced and what it cost."""

    release_id: str
    digest: str
    name: str
    version: str
    files: int
    total_bytes: int
    blobs_written: int
    bytes_written: int
    created: bool
    keyid: str
    sbom_sha256: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """Return the result as plain JSON data."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class BuildPlan:
    """A validated source tree, ready to hash: nothing has been written yet."""

    spec: ReleaseSpec
    entries: list[SourceEntry]
    source: SourceInfo

    @property
    def total_bytes(self) -> int:
        """Bytes of all regular files to hash."""
        return sum(e.size for e in self.entries)


def plan_build(source: Path, environ: Mapping[str, str] | None = None) -> BuildPlan:
    """Validate ``source`` (spec and every path) without touching any store."""
    if not source.is_dir():
        raise InvalidInputError(
            f"{source} is not a directory",
            hint="pass the root of a source tree holding knightwatch.toml",
        )
    spec = load_spec(source)
    entries = scan_source(source, spec)
    _refuse_empty_components(spec, entries, source)
    newest = max((e.mtime for e in entries), default=0.0)
    info = source_info(source, newest, os.environ if environ is None else environ)
    return BuildPlan(spec, entries, info)


def build_release(
    source: Path,
    store_root: Path,
    key: SigningKey,
    *,
    environ: Mapping[str, str] | None = None,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    plan: BuildPlan | None = None,
    rehash: bool = False,
) -> BuildResult:
    """Build, sign and publish the release in ``source`` into the store at ``store_root``.

    Files whose stat is unchanged since the store's last build of ``source``
    keep their digest (:mod:`knightwatch.bundle.hashcache`); ``rehash`` hashes
    every file.
    """
    started = time.perf_counter()
    started_ns = time.time_ns()
    plan = plan or plan_build(source, environ)
    store = ReleaseStore(store_root)
    cache = SourceHashCache(store_root, source)
    if not rehash:
        cache.load()
    with StagingArea(store_root, "build") as staging:
        blob_stage = staging.path / "blobs"
        blob_stage.mkdir()
        digests = _hash_sources(plan, store, blob_stage, workers, on_progress, cache)
        identity = _stage_identity(plan, store, blob_stage)
        manifest = _manifest(plan, digests, identity)
        existing = store.releases_dir / manifest.digest
        if existing.is_dir():  # an unchanged rebuild: nothing new to describe or sign
            written, written_bytes = _publish_blobs(store, blob_stage)
            sbom = (existing / SBOM_FILE).read_bytes()
            created = False
        else:
            sbom = build_sbom(manifest)
            envelope = sign_statement(release_statement(manifest, sha256_hex(sbom)), key)
            release_dir = staging.path / "release"
            release_dir.mkdir()
            (release_dir / MANIFEST_FILE).write_bytes(manifest.canonical_bytes())
            (release_dir / SBOM_FILE).write_bytes(sbom)
            (release_dir / ENVELOPE_FILE).write_bytes(canonical_json(envelope))
            written, written_bytes = _publish_blobs(store, blob_stage)
            created = store.publish(release_dir, manifest.digest)
    cache.save(_cache_rows(plan, digests), started_ns)
    return BuildResult(
        release_id=manifest.release_id,
        digest=manifest.digest,
        name=manifest.name,
        version=manifest.version,
        files=len(manifest.files),
        total_bytes=sum(f.size for f in manifest.files),
        blobs_written=written,
        bytes_written=written_bytes,
        created=created,
        keyid=key.keyid,
        sbom_sha256=sha256_hex(sbom),
        seconds=time.perf_counter() - started,
    )


def release_statement(manifest: Manifest, sbom_sha256: str) -> dict[str, Any]:
    """Return the in-toto Statement that a release signature covers."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {
                "name": f"{manifest.release_id}/{MANIFEST_FILE}",
                "digest": {"sha256": manifest.digest},
            }
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "release_id": manifest.release_id,
            "name": manifest.name,
            "version": manifest.version,
            "sbom": {"name": SBOM_FILE, "sha256": sbom_sha256},
            "source": manifest.source.model_dump(mode="json"),
        },
    }


def _refuse_empty_components(spec: ReleaseSpec, entries: list[SourceEntry], source: Path) -> None:
    owned = {e.component for e in entries}
    for index, component in enumerate(spec.component):
        if component.name not in owned:
            raise SpecError(
                f"component {component.name!r}: its paths {component.paths} match no file",
                file=str(source / "knightwatch.toml"),
                key=f"component[{index}].paths",
                hint="fix the globs or remove the component",
            )


def _hash_sources(
    plan: BuildPlan,
    store: ReleaseStore,
    blob_stage: Path,
    workers: int | None,
    on_progress: Callable[[int], None] | None,
    cache: SourceHashCache,
) -> dict[str, FileDigest]:
    regular = [e for e in plan.entries if e.symlink_target is None]
    by_path: dict[str, FileDigest] = {}
    to_hash: list[SourceEntry] = []
    for entry in regular:
        known = cache.digest(entry.path, entry.stat) if entry.stat is not None else None
        if known is not None and os.path.exists(store.blobs.path_text(known)):
            by_path[entry.path] = FileDigest(os.fspath(entry.absolute), known, entry.size)
            if on_progress is not None:
                on_progress(entry.size)
        else:
            to_hash.append(entry)
    tasks = [
        HashTask(os.fspath(e.absolute), os.fspath(store.blobs.blobs_dir), os.fspath(blob_stage))
        for e in to_hash
    ]

    def done(result: FileDigest) -> None:
        if on_progress is not None:
            on_progress(result.size)

    results = digest_files(tasks, workers=workers, on_done=done)
    for entry, result in zip(to_hash, results, strict=True):
        if result.error is not None:
            raise SourceTreeError(
                entry.path,
                result.error,
                hint="fix the file's permissions or stop what writes to it",
            )
        if result.size != entry.size:
            raise SourceTreeError(entry.path, "changed size while the build ran")
        by_path[entry.path] = result
    return by_path


def _cache_rows(
    plan: BuildPlan, digests: Mapping[str, FileDigest]
) -> Iterator[tuple[str, SourceStat, str]]:
    for entry in plan.entries:
        result = digests.get(entry.path)
        if entry.stat is not None and result is not None and result.digest is not None:
            yield entry.path, entry.stat, result.digest


def _stage_identity(plan: BuildPlan, store: ReleaseStore, blob_stage: Path) -> FileEntry:
    data = identity_bytes(plan.spec, plan.source)
    temp = blob_stage.parent / "identity.json"
    temp.write_bytes(data)
    result = hash_task(
        HashTask(os.fspath(temp), os.fspath(store.blobs.blobs_dir), os.fspath(blob_stage))
    )
    temp.unlink()
    return FileEntry(
        path=IDENTITY_PATH, size=len(data), executable=False, digest=result.digest, component=None
    )


def _manifest(plan: BuildPlan, digests: dict[str, FileDigest], identity: FileEntry) -> Manifest:
    files = [identity]
    for entry in plan.entries:
        result = digests.get(entry.path)
        files.append(
            FileEntry(
                path=entry.path,
                size=entry.size,
                executable=entry.executable,
                digest=result.digest if result else None,
                component=entry.component,
                symlink=entry.symlink_target,
            )
        )
    files.sort(key=lambda f: f.path)
    spec = plan.spec
    return Manifest(
        name=spec.release.name,
        version=spec.release.version,
        description=spec.release.description,
        source=plan.source,
        spec=spec,
        files=files,
    )


def _publish_blobs(store: ReleaseStore, blob_stage: Path) -> tuple[int, int]:
    """Make the staged blobs durable, then move them into place.

    Return the number of blobs and bytes written. Blobs go first and the
    release directory last, so a crash in between leaves only unreferenced
    (harmless, content-addressed) blobs and never a release missing its bytes.
    """
    staged = [p for p in blob_stage.iterdir() if not p.name.startswith(".")]
    if not staged:
        return 0, 0
    sync_filesystem([store.root])
    written_bytes = sum(p.stat().st_size for p in staged)
    for shard in {p.name[:2] for p in staged}:
        (store.blobs.blobs_dir / shard).mkdir(parents=True, exist_ok=True)
    for path in staged:
        os.replace(path, store.blobs.path_of(path.name))
    sync_filesystem([store.root])
    return len(staged), written_bytes
