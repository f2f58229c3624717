"""Status tells current facts from last-known ones (truth over tidiness), on real processes.

One two-node fleet per database engine is shared by the tests of this file;
each test first brings the fleet to v1, converged, so the tests also pass
alone. An agent is SIGKILLed (its service runs on, orphaned) and what
``GET /api/v1/status``, ``knightwatch status`` and ``/metrics`` then claim
is compared with what is really on the node.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from knightwatch.localfleet import LocalFleet
from knightwatch.testing import wait_until
from tests.integration.conftest import (
    SETTLE_S,
    Releases,
    converge_on,
    current_digest,
    kw,
    log_tail,
    make_fleet,
)

PAUSE_ENV = "KNIGHTWATCH_FAULT_PAUSE_IN"


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, releases: Releases, db_url: str | None
) -> Iterator[LocalFleet]:
    """Two nodes with v1 and v2 pushed; a lost node's rollback gives up after 10 s."""
    with make_fleet(
        tmp_path_factory.mktemp("fleet"),
        releases,
        nodes=2,
        database_url=db_url,
        server_env={"KNIGHTWATCH_ROLLBACK_TIMEOUT_S": "10"},
    ) as local:
        for release in (releases.v1, releases.v2):
            local.push(releases.store, release.release_id)
        yield local


def node_of(status: dict[str, Any], name: str) -> dict[str, Any]:
    """Node ``name`` in a fleet status."""
    return next(n for n in status["nodes"] if n["name"] == name)


def wait_unknown(fleet: LocalFleet, name: str) -> dict[str, Any]:
    """Wait until the server shows node ``name`` UNKNOWN; return the fleet status."""

    def unknown() -> dict[str, Any] | None:
        status = fleet.status()
        return status if node_of(status, name)["state"] == "UNKNOWN" else None

    return wait_until(unknown, timeout=SETTLE_S, what=f"{name} to be UNKNOWN", interval=0.1)


def restart_agent(fleet: LocalFleet, name: str, env: dict[str, str]) -> None:
    """Restart node ``name``'s agent with ``env`` added to (or removed from) its environment."""
    fleet.stop_agent(name)
    with pytest.MonkeyPatch.context() as patched:  # LocalFleet spawns with our environment
        for key, value in env.items():
            if value:
                patched.setenv(key, value)
            else:
                patched.delenv(key, raising=False)
        fleet.start_agent(name)
    fleet.wait_connected([name], timeout=SETTLE_S)


def metric_families(fleet: LocalFleet) -> dict[str, Any]:
    """GET /metrics, parsed."""
    response = httpx.get(f"{fleet.url}/metrics", timeout=30, trust_env=False, verify=fleet.verify)
    assert response.status_code == 200, response.text
    return {f.name: f for f in text_string_to_metric_families(response.text)}


class TestAgentGone:
    def test_killed_agent_shows_unknown_with_its_last_report_not_running(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """A SIGKILLed agent's node is UNKNOWN: service and pid only as last known, with age."""
        converge_on(fleet, releases.v1)
        before = node_of(fleet.status(), "node1")
        assert before["state"] == "CONNECTED" and before["service_state"] == "running"
        old_pid = before["service_pid"]
        fleet.stop_agent("node1", signal.SIGKILL)  # its service runs on, orphaned

        status = wait_unknown(fleet, "node1")
        node = node_of(status, "node1")
        assert node["connected"] is False
        assert node["service_state"] == "unknown", node
        assert node["service_pid"] is None and node["active_release"] is None, node
        known = node["last_known"]
        assert known["service_state"] == "running" and known["service_pid"] == old_pid, known
        assert known["active_release"] == releases.v1.release_id, known
        assert known["reported_at"] is not None and known["age_s"] >= 0, known
        assert node["possible_releases"] == [], node  # no switch was under way
        assert status["state"] == "UNKNOWN", status  # never CONVERGED with a node unknown
        assert any("node1 is UNKNOWN" in r for r in status["reasons"]), status["reasons"]

        table = kw(fleet, "status")
        assert table.returncode == 0, table.stderr
        row = next(line for line in table.stdout.splitlines() if line.startswith("│ node1 "))
        assert "UNKNOWN" in row and "running (last known)" in row, table.stdout
        assert f"{old_pid} (last known)" in row, table.stdout
        assert "fleet UNKNOWN" in table.stdout, table.stdout
        printed = json.loads(kw(fleet, "status", "--json").stdout)
        assert node_of(printed, "node1")["service_state"] == "unknown"
        assert node_of(printed, "node1")["last_known"]["service_pid"] == old_pid

        families = metric_families(fleet)
        states = {s.labels["state"]: s.value for s in families["knightwatch_fleet_state"].samples}
        assert states["UNKNOWN"] == 1 and sum(states.values()) == 1, states
        nodes = families["knightwatch_nodes"].samples
        gone = [s for s in nodes if s.labels["connected"] == "false"]
        assert [(s.labels["drift_state"], s.labels["halted"], s.value) for s in gone] == [
            ("unknown", "unknown", 1.0)
        ], gone

        fleet.start_agent("node1")
        fleet.wait_connected(["node1"], timeout=SETTLE_S)
        fleet.wait_state("CONVERGED", timeout=SETTLE_S)
        assert node_of(fleet.status(), "node1")["last_known"] is None


class TestLostMidCommit:
    def test_node_killed_while_committing_may_run_either_release_and_mixed_age_counts(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """A node lost mid-COMMIT shows v1 or v2, never v1; MIXED counts from the loss, unread."""
        converge_on(fleet, releases.v1)
        restart_agent(fleet, "node2", {PAUSE_ENV: "commit"})
        try:
            started = fleet.deploy(releases.v2.release_id, wait=False)
            wait_until(  # the hook stalls it after the switch, before the ack
                lambda: current_digest(fleet, "node2") == releases.v2.digest,
                timeout=SETTLE_S,
                what="node2 to switch to v2",
            )
            fleet.stop_agent("node2", signal.SIGKILL)
            lost_at = time.monotonic()
            # Nobody reads the status (nor /metrics) until the deployment is over: the
            # MIXED age must have been recorded when the fleet became mixed, not when read.
            wait_until(
                lambda: fleet.client.get(f"/deployments/{started['id']}")["finished_at"],
                timeout=180,
                what="the deployment to end",
                interval=0.2,
            )
            time.sleep(2.0)
            status = fleet.status()
            unread_s = time.monotonic() - lost_at
            on_disk = current_digest(fleet, "node2")
        finally:
            restart_agent(fleet, "node2", {PAUSE_ENV: ""})

        node = node_of(status, "node2")
        assert on_disk == releases.v2.digest  # what really runs there: the status must allow it
        assert node["state"] == "UNKNOWN", node
        assert node["active_release"] is None and node["service_state"] == "unknown", node
        assert set(node["possible_releases"]) == {
            releases.v1.release_id,
            releases.v2.release_id,
        }, (node, log_tail(fleet, "server"))
        assert status["state"] == "MIXED", status
        assert any("node2 may run any of" in r for r in status["reasons"]), status["reasons"]
        assert status["mixed_for_s"] is not None, status
        assert status["mixed_for_s"] >= 2.0, (status["mixed_for_s"], unread_s)

        fleet.wait_state("CONVERGED", timeout=SETTLE_S)  # it returned and was caught up
