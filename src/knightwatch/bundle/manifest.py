"""The release manifest: every file of a release, plus its parsed spec.

The manifest is stored as canonical JSON; its SHA-256 is the release digest
and ``name@version+<12 hex>`` the release ID. Loading a manifest validates it
as strictly as a spec, because a store can be tampered with too.
"""

from __future__ import annotations

import posixpath
import unicodedata
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from knightwatch.bundle.spec import ReleaseSpec
from knightwatch.canonical import canonical_json, parse_json, sha256_hex
from knightwatch.errors import StoreError

__all__ = [
    "MANIFEST_SCHEMA",
    "FileEntry",
    "Manifest",
    "SourceInfo",
    "component_digest",
    "release_id",
]

MANIFEST_SCHEMA: Literal["knightwatch.manifest/v1"] = "knightwatch.manifest/v1"
Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceInfo(_Strict):
    """Where and when the release's source came from (the embedded version ID)."""

    vcs: Literal["git"] | None = None
    commit: Annotated[str, Field(pattern=r"^[0-9a-f]{40,64}$")] | None = None
    dirty: bool = False
    build_time: Annotated[str, Field(max_length=40)]
    build_time_source: Literal["SOURCE_DATE_EPOCH", "commit", "newest-file"]


class FileEntry(_Strict):
    """One path of a release: a regular file (with a digest) or an in-tree symlink."""

    path: Annotated[str, Field(min_length=1, max_length=4096)]
    size: Annotated[int, Field(ge=0)]
    executable: bool
    digest: Digest | None
    component: str | None
    symlink: Annotated[str, Field(max_length=4096)] | None = None

    @field_validator("path")
    @classmethod
    def _safe_path(cls, path: str) -> str:
        escapes = path.split("/", maxsplit=1)[0] == ".."
        if path.startswith("/") or path != posixpath.normpath(path) or escapes:
            raise ValueError(f"{path!r} is not a plain relative path")
        if "\x00" in path:
            raise ValueError("a path may not contain NUL")
        return path


class Manifest(_Strict):
    """A release's manifest, as stored and signed."""

    schema_: Literal["knightwatch.manifest/v1"] = Field(MANIFEST_SCHEMA, alias="schema")
    name: str
    version: str
    description: str = ""
    source: SourceInfo
    spec: ReleaseSpec
    files: list[FileEntry]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("files")
    @classmethod
    def _sorted_unique(cls, files: list[FileEntry]) -> list[FileEntry]:
        paths = [f.path for f in files]
        if paths != sorted(set(paths)):
            raise ValueError("files must be sorted by path and unique")
        normal = {unicodedata.normalize("NFC", p) for p in paths}
        if len(normal) != len(paths):
            raise ValueError("two paths are equal after Unicode NFC normalisation")
        return files

    def to_json(self) -> dict[str, Any]:
        """Return the manifest as plain JSON data."""
        return self.model_dump(mode="json", by_alias=True)

    def canonical_bytes(self) -> bytes:
        """Return the canonical JSON bytes that are hashed and stored."""
        return canonical_json(self.to_json())

    @cached_property
    def digest(self) -> str:
        """The release digest: SHA-256 of the canonical manifest."""
        return sha256_hex(self.canonical_bytes())

    @property
    def release_id(self) -> str:
        """``name@version+<first 12 hex of the digest>``."""
        return release_id(self.name, self.version, self.digest)

    def component_files(self, component: str) -> list[FileEntry]:
        """Return the files owned by ``component``, sorted by path."""
        return [f for f in self.files if f.component == component]

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str) -> Manifest:
        """Parse and validate stored manifest bytes; raise StoreError naming ``where``."""
        try:
            return cls.model_validate(parse_json(data))
        except (ValueError, ValidationError) as exc:
            first = str(exc).splitlines()
            detail = " ".join(first[:3]) if first else type(exc).__name__
            raise StoreError(f"{where}: not a valid manifest: {detail}") from None


def release_id(name: str, version: str, digest: str) -> str:
    """Return the release ID for a name, version and release digest."""
    return f"{name}@{version}+{digest[:12]}"


def component_digest(files: list[FileEntry]) -> str:
    """Return the SHA-256 over one component's files (path, digest, mode, link)."""
    rows = [[f.path, f.digest, f.executable, f.symlink] for f in files]
    return sha256_hex(canonical_json(rows))
