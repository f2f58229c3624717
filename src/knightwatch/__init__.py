"""knightwatch: a release-safety control plane.

All-or-nothing deploys, continuous proof of what runs on every node, flags
that flip only on a consistent fleet, a kill switch, escalating alerts, and a
reviewed, tamper-evident record of every change.
"""

from __future__ import annotations

import importlib
import typing

from knightwatch.errors import (
    InvalidInputError,
    KeyFileError,
    KnightwatchError,
    ReleaseNotFoundError,
    SourceTreeError,
    SpecError,
    StoreError,
    VerificationError,
)

if typing.TYPE_CHECKING:
    from knightwatch.bundle import (
        BuildResult,
        Manifest,
        ReleaseDiff,
        ReleaseSpec,
        ReleaseStore,
        VerifyReport,
        build_release,
        diff_releases,
        generate_keypair,
        load_signing_key,
        load_spec,
        load_trusted_key,
        verify_release,
    )
    from knightwatch.canonical import canonical_json
    from knightwatch.clock import Clock, SystemClock, VirtualClock

# Imported on first use (PEP 562), so ``import knightwatch`` — which every
# ``knightwatch`` command pays first — does not load the bundle builder.
_LAZY = {
    "canonical_json": "knightwatch.canonical",
    **dict.fromkeys(("Clock", "SystemClock", "VirtualClock"), "knightwatch.clock"),
    **dict.fromkeys(
        (
            "BuildResult",
            "Manifest",
            "ReleaseDiff",
            "ReleaseSpec",
            "ReleaseStore",
            "VerifyReport",
            "build_release",
            "diff_releases",
            "generate_keypair",
            "load_signing_key",
            "load_spec",
            "load_trusted_key",
            "verify_release",
        ),
        "knightwatch.bundle",
    ),
}


def __getattr__(name: str) -> typing.Any:
    """Load a public name of the package from its module on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'knightwatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__version__ = "0.2.0.dev0"

__all__ = [
    "BuildResult",
    "Clock",
    "InvalidInputError",
    "KeyFileError",
    "KnightwatchError",
    "Manifest",
    "ReleaseDiff",
    "ReleaseNotFoundError",
    "ReleaseSpec",
    "ReleaseStore",
    "SourceTreeError",
    "SpecError",
    "StoreError",
    "SystemClock",
    "VerificationError",
    "VerifyReport",
    "VirtualClock",
    "__version__",
    "build_release",
    "canonical_json",
    "diff_releases",
    "generate_keypair",
    "load_signing_key",
    "load_spec",
    "load_trusted_key",
    "verify_release",
]
