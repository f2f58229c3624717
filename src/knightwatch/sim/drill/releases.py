"""The drill's three releases, built from the sources shipped with the simulator and signed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from knightwatch.bundle.build import BuildResult, build_release
from knightwatch.bundle.signing import generate_keypair, load_signing_key
from knightwatch.sim.sources import LABELS, assemble

__all__ = ["DrillReleases", "build_drill_releases"]

_BUILT_AT = "1343779200"  # 2012-08-01 00:00 UTC: the same sources give the same digests


@dataclass(frozen=True)
class DrillReleases:
    """Where the releases are: their source trees, the bundle store, the key that signed them."""

    store: Path
    trust: Path
    sources: Path
    built: dict[str, BuildResult]

    def tree(self, label: str) -> Path:
        """The source tree of ``label`` (what the manual process copies by hand)."""
        return self.sources / label

    def release_id(self, label: str) -> str:
        """``smars@…+hex`` of ``label``."""
        return self.built[label].release_id


def build_drill_releases(work: Path) -> DrillReleases:
    """Assemble every release's sources under ``work`` and build them into one store."""
    key, public, _keyid = generate_keypair(work / "keys")
    signing = load_signing_key(key)
    store = work / "store"
    sources = work / "sources"
    built = {}
    for label in LABELS:
        tree = assemble(label, sources / label)
        built[label] = build_release(
            tree, store, signing, environ={"SOURCE_DATE_EPOCH": _BUILT_AT}, workers=1
        )
    return DrillReleases(store, public, sources, built)
