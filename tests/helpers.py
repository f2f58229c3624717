"""Test helpers shared across directories: the repository, the example release, source trees."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx

from knightwatch.store import Release

__all__ = ["EXAMPLE", "REPO", "SMALL_SPEC", "MakeSource", "release_row"]

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "smars"

SMALL_SPEC = """\
[release]
name = "{name}"
version = "{version}"

[[component]]
name = "core"
version = "1.0.0"
paths = ["core/**"]

[[component]]
name = "router"
version = "1.0.0"
paths = ["router/**"]
depends_on = ["core"]

[[component]]
name = "cli"
version = "1.0.0"
paths = ["bin/*"]
depends_on = ["router"]

[[component]]
name = "docs"
version = "1.0.0"
paths = ["docs/**"]
"""

MakeSource = Callable[..., Path]
"""``make_source(name=, version=, files=, spec=)``: write a small source tree, return its root."""


def release_row(digest: str, version: str, now: datetime) -> Release:
    """A ``smars@VERSION`` release row with empty documents, for seeding a store."""
    return Release(
        digest=digest,
        release_id=f"smars@{version}+{digest[:12]}",
        name="smars",
        version=version,
        manifest=b"{}",
        sbom=b"{}",
        envelope=b"{}",
        signed_by="k",
        pushed_at=now,
        pushed_by="t",
    )


def answers_healthz(port: int) -> bool:
    """Whether a plain-HTTP control plane on ``port`` answers ``/healthz``."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
