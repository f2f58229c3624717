"""A target lost mid-deployment (agent killed, link black-holed, server killed too) (P1, P2).

Each case runs its own three-node fleet on v1 with every deployment timeout
set to 900 s, then loses node3 at one instant of a deployment of v2. The
reaction must not wait for any of those timeouts: every wait below is far
shorter than them, so an outcome that arrives proves the reaction was the
loss itself. Then node3 returns and must learn the outcome without ever
starting a release the deployment abandoned (its service log says what it
started) and without keeping the abandoned tree on disk.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from knightwatch.bundle import BuildResult
from knightwatch.control.faults import CRASH_ENV
from knightwatch.errors import KnightwatchError
from knightwatch.localfleet import LocalFleet
from knightwatch.testing import wait_until
from tests.integration.conftest import (
    SETTLE_S,
    Link,
    Releases,
    assert_fleet_on,
    current_digest,
    events,
    fleet_digests,
    make_fleet,
    wait_explained,
)
from tests.integration.test_faults import PAUSE_ENV, restart_agent_with_env

LONG = "900"  # every deployment timeout: no test here may be waiting for one of them
LONG_TIMEOUTS = {
    "KNIGHTWATCH_PREPARE_TIMEOUT_S": LONG,
    "KNIGHTWATCH_COMMIT_TIMEOUT_S": LONG,
    "KNIGHTWATCH_ROLLBACK_TIMEOUT_S": LONG,
}
SLOW_HEALTH = ("--health-timeout", "30")  # a loaded machine must not fail the v1 deploy
REACTION_S = 150.0  # generous on a loaded machine, yet a sixth of the timeouts above
LOST = "node3"


@pytest.fixture
def fleet(tmp_path: Path, releases: Releases) -> Iterator[LocalFleet]:
    """Three nodes on v1, v2 pushed, every deployment timeout 900 s."""
    with make_fleet(
        tmp_path / "fleet", releases, nodes=3, server_env=LONG_TIMEOUTS, agent_args=SLOW_HEALTH
    ) as local:
        for release in (releases.v1, releases.v2):
            local.push(releases.store, release.release_id)
        first = local.deploy(releases.v1.release_id, timeout=180)
        assert first["state"] == "SUCCEEDED", (first["reason"], events(first), first["nodes"])
        yield local


def deployment(fleet: LocalFleet, deployment_id: int) -> dict[str, Any]:
    """A deployment as the operator API shows it."""
    data: dict[str, Any] = fleet.client.get(f"/deployments/{deployment_id}")
    return data


def wait_deployment_state(fleet: LocalFleet, deployment_id: int, state: str) -> None:
    """Wait until the deployment is in ``state``."""

    def reached() -> bool:
        return bool(deployment(fleet, deployment_id)["state"] == state)

    wait_explained(
        fleet,
        reached,
        f"deployment {deployment_id} to be {state}",
        logs=("server",),
    )


def phases(done: dict[str, Any]) -> dict[str, str]:
    """Each node's phase in a deployment."""
    return {row["node"]: row["phase"] for row in done["nodes"]}


def service_starts(fleet: LocalFleet, name: str, release: BuildResult) -> int:
    """How many times node ``name``'s agent started ``release``'s service (its service log)."""
    log = fleet.root(name) / "logs" / "service.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count(f"starting {release.release_id}")


def restart_server(fleet: LocalFleet) -> None:
    """Start the control plane again (it was SIGKILLed)."""
    fleet.start_server()


def wait_tree_gone(fleet: LocalFleet, release: BuildResult, names: list[str]) -> None:
    """Wait until no node in ``names`` keeps ``release``'s staged tree."""
    wait_explained(
        fleet,
        lambda: not any((fleet.root(n) / "releases" / release.digest).exists() for n in names),
        f"{', '.join(names)} to remove the abandoned tree of {release.release_id}",
        logs=tuple(names),
        timeout=REACTION_S,
    )


@pytest.mark.parametrize("server_too", [False, True], ids=["agent", "agent-and-server"])
def test_node_lost_during_the_soak_rolls_the_canary_back_at_once(
    fleet: LocalFleet, releases: Releases, server_too: bool
) -> None:
    """A non-canary lost mid-soak: no COMMIT to the rest, canary back now, node3 only aborted."""
    started = fleet.deploy(
        releases.v2.release_id, wait=False, strategy="canary", soak_s=float(LONG)
    )
    wait_deployment_state(fleet, started["id"], "SOAKING")
    fleet.stop_agent(LOST, signal.SIGKILL)
    if server_too:
        fleet.stop_server(signal.SIGKILL)
        restart_server(fleet)

    done = fleet.wait_deployment(started["id"], timeout=REACTION_S)  # the soak lasts 900 s
    assert done["state"] == "ROLLED_BACK", done
    assert "COMMITTING" not in {event for event, _ in events(done)}, events(done)
    rows = phases(done)
    assert rows["node1"] == "ROLLED_BACK", rows
    assert rows[LOST] == "WAITING", rows  # never switched: not made to time out a rollback
    assert fleet_digests(fleet) == dict.fromkeys(fleet.names, releases.v1.digest)

    fleet.start_agent(LOST)
    fleet.wait_connected([LOST], timeout=SETTLE_S)
    wait_tree_gone(fleet, releases.v2, ["node2", LOST])
    wait_until(  # its acknowledgement follows the removal
        lambda: phases(deployment(fleet, started["id"]))[LOST] == "ABORTED",
        timeout=SETTLE_S,
        what=f"{LOST}'s abort to be acknowledged",
    )
    fleet.wait_state("CONVERGED", timeout=SETTLE_S)
    assert_fleet_on(fleet, releases.v1.digest)
    assert service_starts(fleet, LOST, releases.v2) == 0


@pytest.mark.parametrize("server_too", [False, True], ids=["agent", "agent-and-server"])
def test_node_killed_mid_commit_rolls_back_at_once_and_never_runs_the_release_again(
    fleet: LocalFleet, releases: Releases, monkeypatch: pytest.MonkeyPatch, server_too: bool
) -> None:
    """node3 killed after its switch: the fleet rolls back now; restarted, it never runs v2."""
    restart_agent_with_env(fleet, LOST, {PAUSE_ENV: "commit"}, monkeypatch)
    started = fleet.deploy(releases.v2.release_id, wait=False, strategy="canary", soak_s=1.0)
    wait_explained(  # switched, its v2 service not started: the agent's pause hook
        fleet,
        lambda: (
            current_digest(fleet, LOST) == releases.v2.digest
            and deployment(fleet, started["id"])["state"] == "COMMITTING"
        ),
        f"{LOST} to switch to v2 and pause",
        logs=(LOST,),
    )
    assert service_starts(fleet, LOST, releases.v2) == 0
    fleet.stop_agent(LOST, signal.SIGKILL)
    if server_too:
        fleet.stop_server(signal.SIGKILL)
        restart_server(fleet)

    def others_back() -> bool:  # long before the 900 s commit timeout
        return deployment(fleet, started["id"])["state"] == "ROLLING_BACK" and all(
            current_digest(fleet, n) == releases.v1.digest for n in ("node1", "node2")
        )

    wait_explained(fleet, others_back, "node1 and node2 back on v1", logs=("server",))
    assert deployment(fleet, started["id"])["state"] == "ROLLING_BACK"  # node3 may be on v2

    fleet.start_agent(LOST)
    done = fleet.wait_deployment(started["id"], timeout=REACTION_S)
    assert done["state"] == "ROLLED_BACK", done
    assert phases(done) == dict.fromkeys(fleet.names, "ROLLED_BACK"), phases(done)
    fleet.wait_state("CONVERGED", timeout=SETTLE_S)
    assert_fleet_on(fleet, releases.v1.digest)
    assert service_starts(fleet, LOST, releases.v2) == 0  # not even for a moment
    log = (fleet.directory / "logs" / f"{LOST}.log").read_text(errors="replace")
    assert "service-held" in log, log[-3000:]


def test_control_plane_killed_during_prepare_leaves_no_staged_tree(
    fleet: LocalFleet, releases: Releases
) -> None:
    """The aborts a killed control plane never sent reach every node once it is back."""
    fleet.stop_server()
    fleet.start_server(env={CRASH_ENV: "node:PREPARED"})
    fleet.wait_connected(fleet.names, timeout=SETTLE_S)
    with contextlib.suppress(KnightwatchError):  # it may die before answering
        fleet.deploy(releases.v2.release_id, wait=False)
    assert fleet.server_exit_status(timeout=REACTION_S) == -signal.SIGKILL
    fleet.forget_server()
    wait_explained(
        fleet,
        lambda: any(
            (fleet.root(n) / "releases" / releases.v2.digest).exists() for n in fleet.names
        ),
        "a node to have staged v2",
        logs=fleet.names,
    )

    restart_server(fleet)
    latest = fleet.client.get("/deployments")[0]
    done = fleet.wait_deployment(latest["id"], timeout=SETTLE_S)
    assert done["state"] == "FAILED", done
    fleet.wait_connected(fleet.names, timeout=SETTLE_S)
    wait_tree_gone(fleet, releases.v2, fleet.names)
    assert fleet_digests(fleet) == dict.fromkeys(fleet.names, releases.v1.digest)


@pytest.fixture
def linked(tmp_path: Path, releases: Releases) -> Iterator[tuple[LocalFleet, Link]]:
    """Three nodes on v1 (v2 pushed, timeouts 900 s); node3 reaches the server through a relay."""
    fleet = make_fleet(
        tmp_path / "fleet", releases, nodes=3, server_env=LONG_TIMEOUTS, agent_args=SLOW_HEALTH
    )
    for sub in ("logs", "pids", "nodes"):
        (fleet.directory / sub).mkdir(parents=True, exist_ok=True)
    link: Link | None = None
    try:
        fleet.start_server()
        link = Link(fleet.port)
        for name in fleet.names:
            server = link.url_for(fleet) if name == LOST else None
            fleet.start_agent(name, join=fleet.enroll(name), server=server)
        fleet.wait_connected(fleet.names, timeout=SETTLE_S)
        for release in (releases.v1, releases.v2):
            fleet.push(releases.store, release.release_id)
        first = fleet.deploy(releases.v1.release_id, timeout=180)
        assert first["state"] == "SUCCEEDED", (first["reason"], events(first), first["nodes"])
        yield fleet, link
    finally:
        fleet.down()
        if link is not None:
            link.cut()


def test_link_black_holed_during_the_soak_rolls_the_canary_back_at_once(
    linked: tuple[LocalFleet, Link], releases: Releases
) -> None:
    """node3's link goes silent (no FIN, no RST) mid-soak: no COMMIT, rollback, then abort."""
    fleet, link = linked
    started = fleet.deploy(
        releases.v2.release_id, wait=False, strategy="canary", soak_s=float(LONG)
    )
    wait_deployment_state(fleet, started["id"], "SOAKING")
    link.stall()

    done = fleet.wait_deployment(started["id"], timeout=REACTION_S)
    assert done["state"] == "ROLLED_BACK", done
    assert "COMMITTING" not in {event for event, _ in events(done)}, events(done)
    assert phases(done)[LOST] == "WAITING", phases(done)
    assert fleet_digests(fleet) == dict.fromkeys(fleet.names, releases.v1.digest)

    link.restore()
    wait_tree_gone(fleet, releases.v2, ["node2", LOST])
    fleet.wait_state("CONVERGED", timeout=SETTLE_S)
    assert_fleet_on(fleet, releases.v1.digest)
    assert service_starts(fleet, LOST, releases.v2) == 0
