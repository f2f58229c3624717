"""Shared fixtures: signing keys, small release source trees, and the store on both engines."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from knightwatch.bundle import (
    SigningKey,
    TrustedKey,
    generate_keypair,
    load_signing_key,
    load_trusted_key,
)
from knightwatch.hosting.configfiles import (
    AGENT_CONFIG_ENV,
    AGENT_ENV_PREFIX,
    CONFIG_DIR_ENV,
    SERVER_CONFIG_ENV,
)
from knightwatch.store import Database
from tests.databases import ENGINES, Target, target_for
from tests.helpers import EXAMPLE, SMALL_SPEC, MakeSource

# Never this machine's /etc/knightwatch: every knightwatch a test runs, in this process or
# in a subprocess (which inherits this environment), finds no settings file of the host's.
os.environ[CONFIG_DIR_ENV] = "/nonexistent/knightwatch-tests/etc"
for _name in [n for n in os.environ if n.startswith(AGENT_ENV_PREFIX)]:
    del os.environ[_name]
for _name in (SERVER_CONFIG_ENV, AGENT_CONFIG_ENV):
    os.environ.pop(_name, None)


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


# -- the store, on both engines ------------------------------------------------------------


@pytest.fixture
def sqlite_target(tmp_path: Path) -> Target:
    """The default embedded database in a fresh data directory."""
    return Target("sqlite", None, tmp_path / "data")


@pytest.fixture
def postgresql_target(tmp_path: Path) -> Iterator[Target]:
    """A fresh, empty PostgreSQL schema for this test alone (skipped without a server)."""
    with target_for("postgresql", tmp_path / "data") as found:
        yield found


@pytest.fixture(params=ENGINES)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """Each engine in turn: SQLite always, PostgreSQL (a fresh schema) when configured."""
    with target_for(request.param, tmp_path / "data") as found:
        yield found


@pytest.fixture
def db(target: Target) -> Iterator[Database]:
    """An open, migrated, empty store on each engine, closed after the test.

    A test module that needs rows in it overrides ``db`` with a fixture of the
    same name that takes this one, adds its rows and returns it.
    """
    database = target.open()
    try:
        yield database
    finally:
        database.close()
