"""The node's process accounting on a real fleet: exact in a cgroup, or best effort, and said.

node1's agent runs its service in a cgroup of its own; the test reads the
group's ``cgroup.procs`` itself and compares with ``status --json``.
node2's agent is pointed at a directory where no cgroup can be created:
its service runs all the same, and ``status`` says its accounting is
best effort. Skipped where this machine lets no cgroup be created.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from knightwatch.agent.cgroup import probe_cgroups
from knightwatch.agent.errors import CgroupUnavailableError
from knightwatch.localfleet import LocalFleet
from knightwatch.testing import wait_until
from tests.integration.conftest import SETTLE_S, Releases, converge_on, kw, make_fleet


def _cgroups_usable() -> bool:
    try:
        probe_cgroups()
    except (CgroupUnavailableError, OSError):
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _cgroups_usable(), reason="no cgroup can be created here (needs root and a cgroup mount)"
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Iterator[LocalFleet]:
    """Two nodes with v1 pushed."""
    with make_fleet(tmp_path_factory.mktemp("fleet"), releases, nodes=2) as local:
        local.push(releases.store, releases.v1.release_id)
        yield local


def processes(fleet: LocalFleet, name: str) -> dict[str, Any]:
    """Node ``name``'s process accounting as ``knightwatch status --json`` shows it."""
    answer = kw(fleet, "status", "--json")
    assert answer.returncode == 0, answer.stderr
    node = next(n for n in json.loads(answer.stdout)["nodes"] if n["name"] == name)
    found: dict[str, Any] = node.get("processes") or {}
    return found


def test_status_carries_the_cgroup_and_the_fallback(
    fleet: LocalFleet, releases: Releases, tmp_path: Path
) -> None:
    """Exact accounting shows the group the kernel counts; without cgroups status says so."""
    converge_on(fleet, releases.v1)

    def exact() -> bool:
        group = processes(fleet, "node1").get("cgroup")
        return group is not None and group["members"] > 0

    wait_until(exact, timeout=SETTLE_S, what="node1 cgroup in the status", interval=0.5)
    seen = processes(fleet, "node1")
    assert seen["accounting"].startswith("exact (cgroup v")
    group = Path(seen["cgroup"]["path"])
    members = (group / "cgroup.procs").read_text().split()
    assert members, "the kernel lists the service's processes in its group"
    assert "node1" in group.name and releases.v1.digest.removeprefix("sha256:")[:16] in group.name
    assert seen["cgroup"]["memory_bytes"] is not None

    fleet.stop_agent("node2")
    no_cgroups = tmp_path / "no-cgroups"
    no_cgroups.mkdir()
    fleet.start_agent("node2", extra=["--cgroup-mount", str(no_cgroups)])
    fleet.wait_connected(["node2"], timeout=SETTLE_S)

    def best_effort() -> bool:
        return processes(fleet, "node2").get("accounting") == "best effort (no cgroup)"

    wait_until(best_effort, timeout=SETTLE_S, what="node2 best-effort accounting", interval=0.5)
    assert processes(fleet, "node2")["cgroup"] is None
    table = kw(fleet, "status")
    assert "node2: process accounting best effort (no cgroup)" in table.stdout
    fleet.wait_state("CONVERGED", timeout=SETTLE_S)
