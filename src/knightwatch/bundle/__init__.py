"""Release bundles: build, hash, sign and verify; SBOM; flag declarations (P8)."""

from knightwatch.bundle.build import BuildPlan, BuildResult, build_release, plan_build
from knightwatch.bundle.diff import ReleaseDiff, diff_releases, downstream_of
from knightwatch.bundle.manifest import FileEntry, Manifest, SourceInfo, release_id
from knightwatch.bundle.release_store import ReleaseStore, StoredRelease
from knightwatch.bundle.signing import (
    SigningKey,
    TrustedKey,
    generate_keypair,
    load_signing_key,
    load_trusted_key,
)
from knightwatch.bundle.spec import ReleaseSpec, load_spec, parse_spec
from knightwatch.bundle.verify import VerifyReport, verify_release

__all__ = [
    "BuildPlan",
    "BuildResult",
    "FileEntry",
    "Manifest",
    "ReleaseDiff",
    "ReleaseSpec",
    "ReleaseStore",
    "SigningKey",
    "SourceInfo",
    "StoredRelease",
    "TrustedKey",
    "VerifyReport",
    "build_release",
    "diff_releases",
    "downstream_of",
    "generate_keypair",
    "load_signing_key",
    "load_spec",
    "load_trusted_key",
    "parse_spec",
    "plan_build",
    "release_id",
    "verify_release",
]
