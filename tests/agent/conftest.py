"""Fixtures for the agent: built release stores, node layouts, services, free ports.

Tests of the agent's client side run it against a real control plane: a
``knightwatch server`` process started by :class:`knightwatch.localfleet.LocalFleet`
(with no agents of its own), which the tests drive through its operator API.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.staging import Stager
from knightwatch.bundle import BuildResult, SigningKey, TrustedKey, build_release
from knightwatch.bundle.manifest import Manifest
from knightwatch.bundle.release_store import ReleaseStore
from knightwatch.localfleet import LocalFleet
from knightwatch.testing import wait_until
from tests.helpers import EXAMPLE

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


# --- the real control plane ------------------------------------------------------------------

SERVER_ENV = {"KNIGHTWATCH_HEARTBEAT_S": "0.2"}
"""The server tells agents to report every 0.2 s, so reports and reconnects show up soon."""
SETTLE_S = 120.0
"""How long to wait for anything to happen: generous; nothing here measures speed."""
_NODE_NUMBERS = itertools.count(1)


def control_plane_in(directory: Path, key_dir: Path) -> LocalFleet:
    """A real control plane trusting the test signing key, with no agents (not started yet).

    Plain HTTP: the fault injectors (network_faults.py) read and forge the HTTP between.
    """
    return LocalFleet(
        directory, nodes=0, trust=[key_dir / "release.pub"], server_env=SERVER_ENV, tls=False
    )


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory, key_dir: Path) -> Iterator[LocalFleet]:
    """A real ``knightwatch server`` shared by a module's tests (each test uses its own node)."""
    with control_plane_in(tmp_path_factory.mktemp("plane"), key_dir) as fleet:
        yield fleet


@pytest.fixture
def own_control_plane(tmp_path: Path, key_dir: Path) -> Iterator[LocalFleet]:
    """A real ``knightwatch server`` for this test alone (for tests that stop and restart it)."""
    with control_plane_in(tmp_path / "plane", key_dir) as fleet:
        yield fleet


@pytest.fixture
def node_name() -> str:
    """A node name no other test in this process uses (tests share a control plane)."""
    return f"node{next(_NODE_NUMBERS)}"


def node_status(fleet: LocalFleet, name: str) -> dict[str, Any]:
    """Node ``name`` as GET /api/v1/status shows it (empty if the server does not know it)."""
    nodes = {n["name"]: n for n in fleet.status()["nodes"]}
    return dict(nodes.get(name, {}))


def wait_connected(fleet: LocalFleet, name: str) -> dict[str, Any]:
    """Wait until the server shows ``name`` connected and reporting; return its status."""

    def connected() -> dict[str, Any] | None:
        node = node_status(fleet, name)
        return node if node.get("connected") and node["last_report_age_s"] is not None else None

    return wait_until(connected, timeout=SETTLE_S, what=f"{name} to connect", interval=0.05)


def wait_disconnected(fleet: LocalFleet, name: str) -> None:
    """Wait until the server shows ``name`` disconnected."""
    wait_until(
        lambda: not node_status(fleet, name).get("connected"),
        timeout=SETTLE_S,
        what=f"{name} to disconnect",
        interval=0.05,
    )


def wait_fresh_report(fleet: LocalFleet, name: str) -> dict[str, Any]:
    """Wait until the server accepts a new report from ``name``; return the node's status.

    The age of a node's last report only grows until the next report is
    accepted, so a smaller age than the poll before means a new report.
    """
    ages: list[float] = []

    def fresh() -> dict[str, Any] | None:
        node = node_status(fleet, name)
        age = node["last_report_age_s"] if node.get("connected") else None
        if age is None:
            ages.clear()
            return None
        newer = bool(ages) and age < ages[-1]
        ages.append(age)
        return node if newer else None

    return wait_until(fresh, timeout=SETTLE_S, what=f"a new report from {name}", interval=0.05)


def deploy(fleet: LocalFleet, store: Path, built: BuildResult, name: str) -> dict[str, Any]:
    """Push ``built`` and deploy it to node ``name``; return the finished deployment."""
    fleet.push(store, built.release_id)
    return fleet.deploy(built.release_id, nodes=name, timeout=300)


def node_row(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    """Node ``name``'s phase, reason, pid and version as the deployment recorded them."""
    rows = [n for n in deployment["nodes"] if n["node"] == name]
    assert len(rows) == 1, deployment
    return dict(rows[0])


def node_events(deployment: dict[str, Any], name: str) -> list[str]:
    """The events the deployment recorded for node ``name``, in order."""
    return [e["event"] for e in deployment["events"] if e["node"] == name]


def server_blob(fleet: LocalFleet, digest: str) -> Path:
    """Where the control plane keeps a blob."""
    return fleet.directory / "server" / "blobs" / "sha256" / digest[:2] / digest[2:]


def server_log(fleet: LocalFleet) -> str:
    """The control plane's log so far."""
    return (fleet.directory / "logs" / "server.log").read_text(errors="replace")
