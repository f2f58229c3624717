"""Two-person change control on a real control plane, through the real CLI (issue 13, P7).

The fleet runs the standard approval policy (low 1, medium 1, high 2, with
checklists). alice proposes, bob and carol approve; vera only views and
otto is an operator without the approver role.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from knightwatch.localfleet import LocalFleet
from knightwatch.polling import wait_until
from tests.integration.conftest import SETTLE_S, Releases, add_user, approvals_fleet, kw

PENDING = 3


class People:
    """The users of the module's fleet, by name: their tokens."""

    def __init__(self, fleet: LocalFleet) -> None:
        self.fleet = fleet
        self.token = {
            "alice": add_user(fleet, "alice", "operator"),
            "bob": add_user(fleet, "bob", "approver"),
            "carol": add_user(fleet, "carol", "approver"),
            "vera": add_user(fleet, "vera", "viewer"),
            "otto": add_user(fleet, "otto", "operator"),
        }

    def run(self, who: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``knightwatch ARGS`` as user ``who``."""
        return kw(self.fleet, *args, token=self.token[who])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Iterator[LocalFleet]:
    """Two nodes, the standard approval policy, v1 and v2 pushed (nothing deployed yet)."""
    with approvals_fleet(tmp_path_factory.mktemp("changes"), releases, nodes=2) as local:
        yield local


@pytest.fixture(scope="module")
def people(fleet: LocalFleet) -> People:
    """alice (operator), bob and carol (approvers), vera (viewer), otto (operator)."""
    return People(fleet)


def proposed(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The change a command proposed (exit 3, --json)."""
    assert done.returncode == PENDING, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert answer["pending"] is True
    return dict(answer["change"])


def tick_all(fleet: LocalFleet, people: People, change: dict[str, Any], who: str = "alice") -> None:
    """Tick every checklist item of ``change`` as ``who``."""
    for item in change["checklist"]:
        done = people.run(who, "change", "tick", str(change["id"]), item["item"])
        assert done.returncode == 0, done.stderr


def deploy_with_approvals(fleet: LocalFleet, people: People, release: str) -> dict[str, Any]:
    """alice proposes, bob and carol approve, alice ticks and executes; the deployment."""
    change = proposed(people.run("alice", "deploy", release, "--json"))
    for approver in ("bob", "carol")[: change["approvals_needed"]]:
        assert people.run(approver, "change", "approve", str(change["id"])).returncode == 0
    tick_all(fleet, people, change)
    done = people.run("alice", "change", "execute", str(change["id"]), "--wait", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    deployment = json.loads(done.stdout)
    assert deployment["state"] == "SUCCEEDED", deployment
    return dict(deployment)


def test_a_deploy_is_a_proposal_with_a_frozen_risk_assessment(
    fleet: LocalFleet, people: People, releases: Releases
) -> None:
    """The first deploy: exit 3, nothing deployed, risk high (no rollback target anywhere)."""
    before = fleet.client.get("/deployments")
    change = proposed(people.run("alice", "deploy", releases.v1.release_id, "--json"))
    assert fleet.client.get("/deployments") == before
    assert change["state"] == "PROPOSED" and change["author"] == "alice"
    assert change["risk"] == "high" and change["approvals_needed"] == 2
    facts = change["assessment"]["facts"]
    assert facts["nodes"] == ["node1", "node2"]
    assert facts["release"]["digest"] == releases.v1.digest
    assert facts["rollback_target_missing"] == ["node1", "node2"]
    assert any("rollback target" in r for r in change["assessment"]["reasons"])
    shown = people.run("vera", "change", "show", str(change["id"]))
    assert shown.returncode == 0 and "risk high" in shown.stdout, shown.stdout
    assert people.run("alice", "change", "cancel", str(change["id"])).returncode == 0


def test_nobody_approves_their_own_change_and_roles_are_enforced(
    fleet: LocalFleet, people: People, releases: Releases
) -> None:
    """Self-approval is refused; a viewer and a plain operator cannot approve; a viewer
    cannot deploy; an approver's approval counts."""
    change = proposed(people.run("bob", "deploy", releases.v1.release_id, "--json"))
    number = str(change["id"])
    own = people.run("bob", "change", "approve", number)
    assert own.returncode == 2 and "cannot approve it" in own.stderr, own.stderr
    for who, needed in (("vera", "approver"), ("otto", "approver")):
        denied = people.run(who, "change", "approve", number)
        assert denied.returncode == 2 and f"needs {needed}" in denied.stderr, denied.stderr
    viewer = people.run("vera", "deploy", releases.v1.release_id)
    assert viewer.returncode == 2 and "needs operator" in viewer.stderr
    assert people.run("carol", "change", "approve", number).returncode == 0
    shown = fleet.client.get(f"/changes/{number}")
    assert [a["by"] for a in shown["approvals"]] == ["carol"] and shown["state"] == "PROPOSED"
    assert people.run("bob", "change", "cancel", number).returncode == 0


def test_an_approved_change_runs_only_with_its_checklist_and_binds_to_its_release(
    fleet: LocalFleet, people: People, releases: Releases
) -> None:
    """Approvals of a v1 deploy do not make a v2 deploy run; v1 runs once ticked."""
    v1 = proposed(people.run("alice", "deploy", releases.v1.release_id, "--json"))
    v2 = proposed(people.run("alice", "deploy", releases.v2.release_id, "--json"))
    for approver in ("bob", "carol"):
        assert people.run(approver, "change", "approve", str(v1["id"])).returncode == 0
    assert fleet.client.get(f"/changes/{v1['id']}")["state"] == "APPROVED"
    other = people.run("alice", "change", "execute", str(v2["id"]))
    assert other.returncode == 2 and "0 of 2 approval(s)" in other.stderr, other.stderr
    unticked = people.run("alice", "change", "execute", str(v1["id"]))
    assert unticked.returncode == 2 and "checklist items not ticked" in unticked.stderr
    tick_all(fleet, people, v1)
    done = people.run("alice", "change", "execute", str(v1["id"]), "--wait", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["state"] == "SUCCEEDED"
    record = fleet.client.get(f"/changes/{v1['id']}")
    assert record["state"] == "EXECUTED" and record["result"]["deployment_id"]
    assert people.run("alice", "change", "cancel", str(v2["id"])).returncode == 0
    actions = {(e["action"], e["actor"]) for e in fleet.client.get("/audit-log?limit=10000")}
    assert {
        ("change.proposed", "alice"),
        ("change.approval", "bob"),
        ("change.executed", "alice"),
    } <= actions


def test_approvals_are_void_when_the_fleet_changes_before_execution(
    fleet: LocalFleet, people: People, releases: Releases
) -> None:
    """A v2 deploy approved on a converged fleet; node2 is drained; execute is refused, the
    approvals are void and the request is PROPOSED again with a new assessment."""
    change = proposed(people.run("alice", "deploy", releases.v2.release_id, "--json"))
    number = str(change["id"])
    for approver in ("bob", "carol")[: change["approvals_needed"]]:
        assert people.run(approver, "change", "approve", number).returncode == 0
    tick_all(fleet, people, change)
    assert fleet.client.get(f"/changes/{number}")["state"] == "APPROVED"
    fleet.client.post("/nodes/node2/drain", {"reason": "disk swap"})
    try:
        refused = people.run("alice", "change", "execute", number)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "approvals are void" in refused.stderr, refused.stderr
        after = fleet.client.get(f"/changes/{number}")
        assert after["state"] == "PROPOSED"
        assert all(a["void"] for a in after["approvals"])
        assert after["assessment"]["digest"] != change["assessment"]["digest"]
    finally:
        fleet.client.post("/nodes/node2/resume", {"reason": "disk swapped"})
    assert people.run("alice", "change", "cancel", number).returncode == 0


def test_an_emergency_rollback_runs_alone_and_opens_a_review_its_author_cannot_close(
    fleet: LocalFleet, people: People, releases: Releases
) -> None:
    """With v2 deployed (approved), otto rolls back alone with --emergency; the review item
    stays open until someone else closes it. --emergency is refused for a deploy."""
    deploy_with_approvals(fleet, people, releases.v2.release_id)
    not_for_deploys = people.run(
        "otto",
        "change",
        "propose",
        "deploy",
        "--release",
        releases.v1.release_id,
        "--reason",
        "x",
        "--emergency",
    )
    assert not_for_deploys.returncode == 2 and "--emergency is for" in not_for_deploys.stderr
    done = people.run(
        "otto",
        "rollback",
        "--emergency",
        "--reason",
        "bad fills",
        "--wait",
        "--json",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["state"] == "SUCCEEDED"
    wait_until(
        lambda: fleet.status()["desired_release"] == releases.v1.release_id,
        timeout=SETTLE_S,
        what="the fleet back on v1",
    )
    (review,) = json.loads(people.run("vera", "change", "reviews", "--json").stdout)
    assert review["opened_by"] == "otto" and review["open"]
    own = people.run("otto", "change", "review-close", str(review["id"]), "--note", "ok")
    assert own.returncode == 2 and "cannot close its review" in own.stderr, own.stderr
    closed = people.run("bob", "change", "review-close", str(review["id"]), "--note", "fills bug")
    assert closed.returncode == 0, closed.stderr
    assert json.loads(people.run("vera", "change", "reviews", "--json").stdout) == []


def test_kill_needs_no_approval(fleet: LocalFleet, people: People) -> None:
    """Stopping is always allowed: otto's kill halts at once; the re-arm is a change
    (an emergency one here, so otto may do it alone)."""
    killed = people.run("otto", "kill", "--reason", "drill", "--json")
    assert killed.returncode == 0, killed.stdout + killed.stderr
    plain = people.run("otto", "rearm", "--reason", "drill over", "--json")
    assert plain.returncode == PENDING, plain.stdout + plain.stderr
    assert (
        people.run(
            "otto", "change", "cancel", str(json.loads(plain.stdout)["change"]["id"])
        ).returncode
        == 0
    )
    rearmed = people.run("otto", "rearm", "--reason", "drill over", "--emergency", "--json")
    assert rearmed.returncode == 0, rearmed.stdout + rearmed.stderr
