"""All-or-nothing fleet deployment with whole-fleet rollback (P1), on real processes.

One fleet of three nodes per database engine is shared by the tests of this
file; each test first brings the fleet to the state it starts from, so the
tests also pass alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from knightwatch.localfleet import LocalFleet
from knightwatch.testing import wait_until
from tests.integration.conftest import (
    SETTLE_S,
    Releases,
    assert_fleet_on,
    converge_on,
    deploy_ok,
    events,
    kw,
    make_fleet,
    wait_idle,
)


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, releases: Releases, db_url: str | None
) -> Iterator[LocalFleet]:
    """Three nodes with v1, v2 and broken pushed, nothing deployed yet."""
    with make_fleet(
        tmp_path_factory.mktemp("fleet"), releases, nodes=3, database_url=db_url
    ) as local:
        for release in (releases.v1, releases.v2, releases.broken):
            local.push(releases.store, release.release_id)
        yield local


def node_rows(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A deployment's per-node rows by node name."""
    return {row["node"]: row for row in deployment["nodes"]}


def journal(fleet: LocalFleet, name: str) -> dict[str, Any]:
    """Node ``name``'s agent journal (state.json) as it is on disk."""
    data: dict[str, Any] = json.loads((fleet.root(name) / "state.json").read_text())
    return data


class TestAtomic:
    def test_first_deploy_puts_every_node_on_the_release(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """An atomic deploy SUCCEEDS and every node runs the release, fleet CONVERGED."""
        wait_idle(fleet)
        done = deploy_ok(fleet, releases.v1)
        assert done["kind"] == "deploy" and done["strategy"] == "atomic"
        rows = node_rows(done)
        assert set(rows) == set(fleet.names)
        for row in rows.values():
            assert row["phase"] == "ACTIVE", row
            assert row["version"] == releases.v1.release_id
        status = fleet.wait_state("CONVERGED", timeout=SETTLE_S)
        assert status["desired_release"] == releases.v1.release_id
        assert_fleet_on(fleet, releases.v1.digest)

    def test_next_release_replaces_it_and_keeps_it_as_previous(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """Deploying v2 over v1 moves every node to v2 and keeps v1 on disk as previous."""
        converge_on(fleet, releases.v1)
        deploy_ok(fleet, releases.v2)
        status = fleet.wait_state("CONVERGED", timeout=SETTLE_S)
        assert status["desired_release"] == releases.v2.release_id
        assert status["previous_release"] == releases.v1.release_id
        assert_fleet_on(fleet, releases.v2.digest)
        for name in fleet.names:
            assert journal(fleet, name)["previous"] == releases.v1.digest
            assert (fleet.root(name) / "releases" / releases.v1.digest).is_dir()


class TestCanary:
    def test_canary_node_commits_before_the_rest(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """With the canary strategy one node is ACTIVE and soaked before any other commits."""
        converge_on(fleet, releases.v1)
        done = deploy_ok(fleet, releases.v2, strategy="canary")
        rows = node_rows(done)
        canary = [name for name, row in rows.items() if row["role"] == "canary"]
        assert canary == ["node1"]
        order = events(done)
        canary_active = order.index(("node:ACTIVE", "node1"))
        for other in ("node2", "node3"):
            assert canary_active < order.index(("node:COMMITTING", other)), order
        states = [event for event, node in order if node is None and event != "created"]
        assert states == ["CANARY", "SOAKING", "COMMITTING", "SUCCEEDED"], order
        assert order.index(("CANARY", None)) < canary_active < order.index(("SOAKING", None))
        fleet.wait_state("CONVERGED", timeout=SETTLE_S)
        assert_fleet_on(fleet, releases.v2.digest)


class TestRollback:
    def test_rollback_returns_every_node_to_the_previous_release(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """POST /rollback takes the whole fleet back to the release it ran before."""
        converge_on(fleet, releases.v1)
        deploy_ok(fleet, releases.v2)
        started = fleet.client.post("/rollback")
        assert started["kind"] == "rollback"
        assert started["release_digest"] == releases.v1.digest
        done = fleet.wait_deployment(started["id"], timeout=180)
        assert done["state"] == "SUCCEEDED", done
        status = fleet.wait_state("CONVERGED", timeout=SETTLE_S)
        assert status["desired_release"] == releases.v1.release_id
        assert status["previous_release"] == releases.v2.release_id
        assert_fleet_on(fleet, releases.v1.digest)

    def test_failed_health_check_rolls_the_whole_fleet_back(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """A release whose health check fails after the switch ends ROLLED_BACK everywhere."""
        converge_on(fleet, releases.v1)
        done = fleet.deploy(releases.broken.release_id, timeout=180)
        assert done["state"] == "ROLLED_BACK", done
        assert "health" in done["reason"] and "404" in done["reason"], done["reason"]
        assert all(row["phase"] == "ROLLED_BACK" for row in done["nodes"]), done["nodes"]
        status = fleet.wait_state("CONVERGED", timeout=SETTLE_S)
        assert status["desired_release"] == releases.v1.release_id
        assert_fleet_on(fleet, releases.v1.digest)


class TestOfflineNode:
    def test_offline_node_is_marked_then_caught_up(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """A node offline during a deploy is OFFLINE, the fleet MIXED, and caught up on return."""
        converge_on(fleet, releases.v1)
        fleet.stop_agent("node3")
        try:
            wait_until(
                lambda: not _connected(fleet, "node3"),
                timeout=SETTLE_S,
                what="node3 to be disconnected",
            )
            done = deploy_ok(fleet, releases.v2)
            rows = node_rows(done)
            assert rows["node3"]["phase"] == "OFFLINE", rows["node3"]
            assert rows["node1"]["phase"] == rows["node2"]["phase"] == "ACTIVE"
            status = fleet.wait_state("MIXED", timeout=SETTLE_S)
            assert any("node3" in reason for reason in status["reasons"]), status["reasons"]
        finally:
            fleet.start_agent("node3")
        fleet.wait_connected(["node3"], timeout=SETTLE_S)

        def catchup() -> dict[str, Any] | None:
            rows = fleet.client.get("/deployments")
            return next((r for r in rows if r["id"] > done["id"] and r["kind"] == "catchup"), None)

        found = wait_until(catchup, timeout=SETTLE_S, what="a catch-up deployment")
        caught = fleet.wait_deployment(found["id"], timeout=180)
        assert caught["state"] == "SUCCEEDED", caught
        assert caught["release_digest"] == releases.v2.digest
        assert [row["node"] for row in caught["nodes"]] == ["node3"]
        fleet.wait_state("CONVERGED", timeout=SETTLE_S)
        assert_fleet_on(fleet, releases.v2.digest)


def _connected(fleet: LocalFleet, name: str) -> bool:
    return any(n["name"] == name and n["connected"] for n in fleet.status()["nodes"])


# -- the CLI, as an operator runs it ---------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True, scope="module")
class TestCli:
    """The CLI only talks HTTP: it runs against the SQLite fleet alone."""

    def test_deploy_wait_json_exits_0_and_reports_success(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """``deploy --wait --json`` exits 0 on SUCCEEDED; status and deployments agree."""
        converge_on(fleet, releases.v1)
        done = kw(fleet, "deploy", releases.v2.release_id, "--wait", "--json")
        assert done.returncode == 0, done.stderr
        deployment = json.loads(done.stdout)
        assert deployment["state"] == "SUCCEEDED"
        assert deployment["release_id"] == releases.v2.release_id

        listed = kw(fleet, "deployments", "--json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)[0]["id"] == deployment["id"]

        shown = kw(fleet, "deployment", "show", str(deployment["id"]), "--json")
        assert shown.returncode == 0, shown.stderr
        details = json.loads(shown.stdout)
        assert details["state"] == "SUCCEEDED"
        assert {row["node"]: row["phase"] for row in details["nodes"]} == dict.fromkeys(
            fleet.names, "ACTIVE"
        )
        assert ("SUCCEEDED", None) in events(details)

        fleet.wait_state("CONVERGED", timeout=SETTLE_S)
        status = kw(fleet, "status", "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["state"] == "CONVERGED"
        assert data["desired_release"] == releases.v2.release_id
        assert {n["name"]: n["active_digest"] for n in data["nodes"]} == dict.fromkeys(
            fleet.names, releases.v2.digest
        )

    def test_deploy_wait_json_exits_nonzero_when_rolled_back(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """``deploy --wait --json`` of a release failing health prints ROLLED_BACK, exits 1."""
        converge_on(fleet, releases.v1)
        done = kw(fleet, "deploy", releases.broken.release_id, "--wait", "--json")
        assert done.returncode == 1, (done.stdout, done.stderr)
        deployment = json.loads(done.stdout)
        assert deployment["state"] == "ROLLED_BACK"
        assert "ROLLED_BACK" in done.stderr
        fleet.wait_state("CONVERGED", timeout=SETTLE_S)
        assert_fleet_on(fleet, releases.v1.digest)

    def test_deploy_of_an_unknown_release_exits_2(self, fleet: LocalFleet) -> None:
        """``deploy`` of a release nobody pushed exits 2 (refused) with one error line."""
        done = kw(fleet, "deploy", "smars@1999.1.1", "--json")
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert "no release matches" in done.stderr


class TestLongPoll:
    """``GET /deployments/ID?wait_s=N[&state=S]`` answers a change as it happens."""

    def test_one_request_waits_for_the_end_or_for_a_change(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """Without ``state`` it answers once the deployment ended; with it, once it moved on."""
        converge_on(fleet, releases.v1)
        started = fleet.deploy(releases.v2.release_id, wait=False)
        moved = fleet.client.get(f"/deployments/{started['id']}?wait_s=30&state={started['state']}")
        assert moved["state"] != started["state"], moved["state"]
        ended = fleet.client.get(f"/deployments/{started['id']}?wait_s=60")
        assert ended["state"] == "SUCCEEDED", ended["reason"]
        before = time.monotonic()
        held = fleet.client.get(f"/deployments/{started['id']}?wait_s=1&state=SUCCEEDED")
        assert held["state"] == "SUCCEEDED" and time.monotonic() - before >= 1.0

    @pytest.mark.parametrize(
        "query", ["wait_s=61", "wait_s=-1", "wait_s=soon", "state=FINISHED", "state="]
    )
    def test_bad_waits_are_refused(self, fleet: LocalFleet, query: str) -> None:
        """Out of range or unknown: 4xx naming the parameter, nothing waited for."""
        listed = fleet.client.get("/deployments")
        assert listed, "the module's fleet has deployments by now"
        answer = httpx.get(
            f"{fleet.url}/api/v1/deployments/{listed[0]['id']}?{query}",
            headers={"Authorization": f"Bearer {fleet.token}"},
            verify=fleet.verify,
            timeout=10,
        )
        assert 400 <= answer.status_code < 500, answer.text
        assert query.split("=", maxsplit=1)[0] in answer.text

    def test_an_unknown_deployment_is_404_at_once(self, fleet: LocalFleet) -> None:
        """Waiting for a deployment that does not exist does not wait."""
        before = time.monotonic()
        answer = httpx.get(
            f"{fleet.url}/api/v1/deployments/999999?wait_s=30",
            headers={"Authorization": f"Bearer {fleet.token}"},
            verify=fleet.verify,
            timeout=60,
        )
        assert answer.status_code == 404 and time.monotonic() - before < 10
