"""The safety policy end to end: every reason a deploy is refused, from a real control plane.

Two agents run v1. Each gets an extra ``.py`` file in its live release, so
each node is DRIFTED *and* has a firing critical ``node-drift`` alert that
nobody acknowledged. A deploy of v2 is then refused with all four reasons —
two alerts and two drifted nodes, each naming its node — by the API (409
and the refusals), by the CLI (exit 2, a table, ``--json``), and by
``knightwatch check deploy`` without deploying anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from knightwatch.errors import PolicyRefusedError
from knightwatch.localfleet import LocalFleet
from knightwatch.testing import wait_until
from tests.integration.conftest import (
    SETTLE_S,
    Releases,
    converge_on,
    current_digest,
    kw,
    make_fleet,
)

NODES = ("node1", "node2")
EXPECTED = {
    ("no-unacknowledged-critical", "node1"),
    ("no-unacknowledged-critical", "node2"),
    ("no-drift", "node1"),
    ("no-drift", "node2"),
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Iterator[LocalFleet]:
    """Two nodes on v1 (v2 pushed), watching their trees every second."""
    directory = tmp_path_factory.mktemp("policy-fleet")
    with make_fleet(directory, releases, nodes=2, agent_args=("--stat-interval", "1")) as fleet:
        fleet.push(releases.store, releases.v1.release_id)
        fleet.push(releases.store, releases.v2.release_id)
        converge_on(fleet, releases.v1)
        yield fleet


def tamper(fleet: LocalFleet, node: str) -> None:
    """Drop an extra .py into the node's live release: critical drift, a critical alert."""
    tree = fleet.root(node) / "releases" / str(current_digest(fleet, node))
    (tree / "smars").chmod(0o755)
    (tree / "smars" / "intruder.py").write_text("print('not from the release')\n")


def drifted_and_alerted(fleet: LocalFleet) -> bool:
    """Every node is DRIFTED and has a firing critical alert."""
    drifted = {n["name"] for n in fleet.status()["nodes"] if n["drift_state"] == "drifted"}
    alerted = {a["node"] for a in fleet.client.get("/alerts?state=firing")}
    return set(NODES) <= drifted & alerted


def pairs(refusals: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(check, node) for each refusal: which check names which node."""
    return {(r["check"], s) for r in refusals for s in r["subjects"] if s in NODES}


def table_lines(text: str) -> list[str]:
    """The rows of a printed table that name a check."""
    return [line for line in text.splitlines() if "no-drift" in line or "no-unack" in line]


def test_nothing_refuses_a_deploy_of_a_clean_fleet(fleet: LocalFleet, releases: Releases) -> None:
    """``check deploy`` on a clean fleet: exit 0, one line; --json says not refused."""
    done = kw(fleet, "check", "deploy", releases.v2.release_id)
    assert done.returncode == 0, done.stderr
    assert "nothing would refuse deploy now" in done.stdout
    as_json = kw(fleet, "check", "deploy", releases.v2.release_id, "--json")
    assert json.loads(as_json.stdout) == {"action": "deploy", "refused": False, "refusals": []}


def test_an_unknown_action_names_the_known_ones(fleet: LocalFleet) -> None:
    """A typo in the action is bad input (exit 2) listing every action the policy knows."""
    done = kw(fleet, "check", "deplyo")
    assert done.returncode == 2, done.stderr
    said = " ".join(done.stderr.split())
    assert "unknown action 'deplyo': the known actions are" in said
    assert "deploy, rollback, reconcile, retire, rearm" in said


def test_a_drifted_fleet_with_a_critical_alert_refuses_a_deploy_with_every_reason(
    fleet: LocalFleet, releases: Releases
) -> None:
    """API, client, CLI and dry run all list both alerts and both drifted nodes."""
    for node in NODES:
        tamper(fleet, node)
    wait_until(lambda: drifted_and_alerted(fleet), timeout=SETTLE_S, what="drift and alerts")
    before = len(fleet.client.get("/deployments"))
    v2 = releases.v2.release_id

    answer = httpx.post(
        f"{fleet.url}/api/v1/deployments",
        json={"release": v2},
        headers={"Authorization": f"Bearer {fleet.token}"},
        verify=fleet.verify,
        trust_env=False,
        timeout=60,
    )
    assert answer.status_code == 409, answer.text
    body = answer.json()
    assert (body["kind"], body["exit_code"], body["action"]) == ("PolicyRefusedError", 2, "deploy")
    assert body["error"].startswith("deploy refused for 4 reasons: ")
    assert pairs(body["refusals"]) == EXPECTED
    assert all(set(r) == {"check", "reason", "subjects", "hint"} for r in body["refusals"])

    with pytest.raises(PolicyRefusedError) as refused:
        fleet.client.post("/deployments", {"release": v2})
    assert [r.to_json() for r in refused.value.refusals] == body["refusals"]

    cli = kw(fleet, "deploy", v2)
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert "deploy refused (4 reasons):" in cli.stderr
    rows = table_lines(cli.stderr)
    assert len(rows) == 4 and all(any(n in row for n in NODES) for row in rows)
    assert any("knightwatch alerts ack" in row for row in rows)
    assert any("knightwatch reconcile --node node2" in row for row in rows)
    cli_json = kw(fleet, "deploy", v2, "--json")
    assert cli_json.returncode == 2
    assert json.loads(cli_json.stdout)["refusals"] == body["refusals"]

    check = kw(fleet, "check", "deploy", v2)
    assert check.returncode == 2, check.stdout + check.stderr
    assert "deploy would be refused (4 reasons):" in check.stdout
    assert table_lines(check.stdout) == rows
    check_json = json.loads(kw(fleet, "check", "deploy", v2, "--json").stdout)
    assert check_json == {"action": "deploy", "refused": True, "refusals": body["refusals"]}

    assert len(fleet.client.get("/deployments")) == before  # nothing was deployed
    assert fleet.status()["deployment_id"] is None
