"""Fixtures for the agent: built release stores, node layouts, services, free ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.staging import Stager
from knightwatch.bundle import BuildResult, SigningKey, TrustedKey, build_release
from knightwatch.bundle.manifest import Manifest
from knightwatch.bundle.release_store import ReleaseStore
from tests.conftest import EXAMPLE

T = TypeVar("T")
EPOCH = {"SOURCE_DATE_EPOCH": "1343826000"}

SERVICE_SPEC = """\
[release]
name = "{name}"
version = "{version}"
allow_symlinks = true

[[component]]
name = "app"
version = "1.0.0"
paths = ["**"]

[service]
command = ["python3", "bin/serve.py"]
data_dirs = ["var/db"]
"""

SERVICE_FILES: dict[str, bytes] = {
    "bin/serve.py": b"import time\nwhile True:\n    time.sleep(1)\n",
    "bin/tool": b"#!/bin/sh\necho tool\n",
    "lib/a.txt": b"alpha\n",
    "lib/b.txt": b"bravo\n",
    "lib/same.txt": b"alpha\n",
    "docs/readme.md": b"# app\n",
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine to completion in a fresh event loop."""
    return asyncio.run(coro)


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Poll ``check`` until it is true; fail with ``what`` after a generous timeout."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_tree(root: Path, files: dict[str, bytes], *, executable: tuple[str, ...] = ()) -> Path:
    """Write ``files`` under ``root``; mark the listed ones executable."""
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for rel in executable:
        (root / rel).chmod(0o755)
    return root


class Releases:
    """Builds signed releases into one store, as ``knightwatch bundle build`` does."""

    def __init__(self, tmp: Path, key: SigningKey) -> None:
        self.tmp = tmp
        self.key = key
        self.store = tmp / "store"
        self._count = 0

    def build(
        self,
        *,
        name: str = "app",
        version: str = "1.0.0",
        files: dict[str, bytes] | None = None,
        spec: str | None = None,
        symlinks: dict[str, str] | None = None,
    ) -> BuildResult:
        """Build a small service release (or the given files and spec)."""
        self._count += 1
        source = self.tmp / f"src{self._count}"
        source.mkdir()
        (source / "knightwatch.toml").write_text(
            (spec or SERVICE_SPEC).format(name=name, version=version)
        )
        write_tree(source, SERVICE_FILES if files is None else files)
        if (source / "bin" / "tool").exists():
            (source / "bin" / "tool").chmod(0o755)
        for link, target in (symlinks or {}).items():
            os.symlink(target, source / link)
        return build_release(source, self.store, self.key, environ=EPOCH)

    def smars(
        self, version: str = "2012.8.1", *, edit: tuple[str, str] | None = None
    ) -> BuildResult:
        """Build the example SMARS router (optionally with one edit of its spec)."""
        self._count += 1
        source = self.tmp / f"smars{self._count}"
        shutil.copytree(EXAMPLE, source, symlinks=True)
        spec = (source / "knightwatch.toml").read_text()
        spec = spec.replace('version = "2012.8.1"', f'version = "{version}"', 1)
        if edit is not None:
            assert edit[0] in spec, edit
            spec = spec.replace(*edit)
        (source / "knightwatch.toml").write_text(spec)
        return build_release(source, self.store, self.key, environ=EPOCH)

    def manifest(self, digest: str) -> Manifest:
        """The manifest of a built release."""
        return ReleaseStore(self.store).load(digest).manifest

    def blob(self, digest: str) -> Path:
        """Where a blob of the store lives."""
        return ReleaseStore(self.store).blobs.path_of(digest)


@pytest.fixture
def releases(tmp_path: Path, signing_key: SigningKey) -> Releases:
    """A factory of signed releases in ``tmp_path/store``."""
    return Releases(tmp_path, signing_key)


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[NodeLayout]:
    """A fresh node layout in ``tmp_path/node``; its trees are made deletable afterwards."""
    node = NodeLayout(tmp_path / "node")
    node.ensure()
    yield node
    for path in node.releases_dir.glob("*"):
        if path.is_dir() and not path.is_symlink():
            for directory, _dirs, _files in os.walk(path):
                os.chmod(directory, 0o755)


@pytest.fixture
def stager(layout: NodeLayout, trusted_key: TrustedKey) -> Stager:
    """A stager trusting the test signing key."""
    return Stager(layout, [trusted_key], workers=2)


@pytest.fixture
def reap() -> Iterator[Callable[[int], None]]:
    """Register process groups to SIGKILL at the end of the test, whatever happened."""
    groups: list[int] = []
    yield groups.append
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
