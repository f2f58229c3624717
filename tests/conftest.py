"""Shared fixtures: signing keys and small release source trees."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from knightwatch.bundle import (
    SigningKey,
    TrustedKey,
    generate_keypair,
    load_signing_key,
    load_trusted_key,
)

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


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding release.key / release.pub and other.key / other.pub."""
    directory = tmp_path_factory.mktemp("keys")
    generate_keypair(directory, "release")
    generate_keypair(directory, "other")
    return directory


@pytest.fixture(scope="session")
def signing_key(key_dir: Path) -> SigningKey:
    """The key releases are signed with in tests."""
    return load_signing_key(key_dir / "release.key")


@pytest.fixture(scope="session")
def trusted_key(key_dir: Path) -> TrustedKey:
    """The public half of ``signing_key``."""
    return load_trusted_key(key_dir / "release.pub")


@pytest.fixture(scope="session")
def untrusted_key(key_dir: Path) -> TrustedKey:
    """A valid key that did not sign anything."""
    return load_trusted_key(key_dir / "other.pub")


MakeSource = Callable[..., Path]


@pytest.fixture
def make_source(tmp_path: Path) -> MakeSource:
    """Return a factory writing a small four-component source tree."""
    counter = iter(range(1000))

    def make(
        name: str = "shop",
        version: str = "1.0.0",
        files: dict[str, bytes] | None = None,
        spec: str | None = None,
    ) -> Path:
        root = tmp_path / f"src{next(counter)}"
        root.mkdir()
        (root / "knightwatch.toml").write_text(
            spec or SMALL_SPEC.format(name=name, version=version)
        )
        default = {
            "core/book.py": b"BOOK = {}\n",
            "core/util/money.py": b"def cents(x):\n    return int(x * 100)\n",
            "router/route.py": b"from core.book import BOOK\n",
            "bin/shop": b"#!/bin/sh\necho shop\n",
            "docs/README.md": b"# shop\n",
            "docs/copy.md": b"# shop\n",
        }
        for rel, data in (files if files is not None else default).items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if (root / "bin" / "shop").exists():
            (root / "bin" / "shop").chmod(0o755)
        return root

    return make


@pytest.fixture
def example_source(tmp_path: Path) -> Path:
    """A private copy of the example release in examples/smars."""
    target = tmp_path / "smars"
    shutil.copytree(EXAMPLE, target, symlinks=True)
    return target
