"""Test helpers shared across directories: the repository, the example release, source trees."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = ["EXAMPLE", "REPO", "SMALL_SPEC", "MakeSource"]

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
