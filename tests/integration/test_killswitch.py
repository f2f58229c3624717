"""One button stops everything (P5): the kill switch and the dead man's switch, for real.

A control plane and three agents, each supervising the SMARS router built
with a halt hook that records whether the router was still answering when
the hook ran. node1 and node2 are in the default group; node3 is in the
``armed`` group (dead man's switch after 2 s) and reaches the control plane
through a TCP relay that the test can cut and restore, as a network would.
The checks look at what is really on the nodes: /proc, the journal, the
hook's marker file, and the fleet status.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from knightwatch.bundle import BuildResult, SigningKey, build_release
from knightwatch.errors import KnightwatchError
from knightwatch.localfleet import LocalFleet
from knightwatch.testing import wait_until
from tests.integration.conftest import (
    BUILD_ENV,
    SETTLE_S,
    Link,
    Releases,
    assert_fleet_on,
    converge_on,
    kw,
    make_fleet,
    pid_alive,
    processes_under,
    smars_variant,
)

DEAD_MAN_S = 2.0
ARMED = "node3"
HOOK = '''#!/usr/bin/env python3
"""Halt hook: block new orders, cancel working ones; note whether the router still answered."""
import os
import pathlib
import urllib.request

port = os.environ["KNIGHTWATCH_SERVICE_PORT"]
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
        seen = f"service-up {answer.status}"
except Exception as exc:
    seen = f"service-down {exc}"
marker = pathlib.Path(os.environ["KNIGHTWATCH_DATA_DIR"]) / "var" / "halt-hook.log"
marker.parent.mkdir(parents=True, exist_ok=True)
with marker.open("a") as handle:
    handle.write(seen + "\\n")
'''


@pytest.fixture(scope="module")
def hooked(
    releases: Releases, signing_key: SigningKey, tmp_path_factory: pytest.TempPathFactory
) -> BuildResult:
    """SMARS with a ``[service.halt] hook`` that writes a marker into its data dir."""
    source = smars_variant(tmp_path_factory.mktemp("hooked") / "src", "2012.8.5")
    (source / "bin" / "halt-hook").write_text(HOOK)
    (source / "bin" / "halt-hook").chmod(0o755)
    spec = source / "knightwatch.toml"
    old = 'halt = { signal = "SIGTERM", grace_s = 5.0 }'
    assert old in spec.read_text(), "the example's halt line changed; update this fixture"
    spec.write_text(
        spec.read_text().replace(
            old, 'halt = { signal = "SIGTERM", grace_s = 5.0, hook = ["python3", "bin/halt-hook"] }'
        )
    )
    return build_release(source, releases.store, signing_key, environ=BUILD_ENV)


@pytest.fixture(scope="module")
def link_and_fleet(
    tmp_path_factory: pytest.TempPathFactory, releases: Releases, hooked: BuildResult
) -> Iterator[tuple[LocalFleet, Link]]:
    """Three agents; node3 (group ``armed``, dead man after 2 s) behind a relay."""
    fleet = make_fleet(
        tmp_path_factory.mktemp("killswitch") / "fleet",
        releases,
        nodes=3,
        server_env={
            "KNIGHTWATCH_ARMED_GROUPS": "armed",
            "KNIGHTWATCH_DEAD_MAN_S": str(DEAD_MAN_S),
        },
    )
    for sub in ("logs", "pids", "nodes"):
        (fleet.directory / sub).mkdir(parents=True, exist_ok=True)
    link: Link | None = None
    try:
        fleet.start_server()
        link = Link(fleet.port)
        for name in fleet.names:
            armed = name == ARMED
            join = fleet.enroll(name, group="armed" if armed else "default")
            fleet.start_agent(name, join=join, server=link.url_for(fleet) if armed else None)
        fleet.wait_connected(fleet.names)
        fleet.push(releases.store, hooked.release_id)
        fleet.push(releases.store, releases.v2.release_id)
        yield fleet, link
    finally:
        fleet.down()
        if link is not None:
            link.cut()


@pytest.fixture
def fleet(link_and_fleet: tuple[LocalFleet, Link], hooked: BuildResult) -> LocalFleet:
    """The fleet, connected, re-armed and running the hooked release."""
    fleet, link = link_and_fleet
    link.restore()
    fleet.wait_connected(fleet.names, timeout=SETTLE_S)
    if any(n["halted"] for n in fleet.status()["nodes"]):
        done = kw(fleet, "rearm", "--reason", "test set-up")
        assert done.returncode == 0, done.stdout + done.stderr
    converge_on(fleet, hooked)
    return fleet


def service_pids(fleet: LocalFleet) -> dict[str, int]:
    """Each node's service pid as the fleet status reports it."""
    return {n["name"]: n["service_pid"] for n in fleet.status()["nodes"]}


def node(fleet: LocalFleet, name: str) -> dict[str, Any]:
    """One node of the fleet status."""
    return next(n for n in fleet.status()["nodes"] if n["name"] == name)


def journal(fleet: LocalFleet, name: str) -> dict[str, Any]:
    """The agent's state.json on node ``name``."""
    data: dict[str, Any] = json.loads((fleet.root(name) / "state.json").read_text())
    return data


def kill(fleet: LocalFleet, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run ``knightwatch kill --json ARGS``; return exit code, report, stderr."""
    done = kw(fleet, "kill", "--json", *args)
    return done.returncode, json.loads(done.stdout), done.stderr


class TestKill:
    def test_kill_stops_every_service_and_every_node_acknowledges(self, fleet: LocalFleet) -> None:
        """``kill`` halts the fleet: every service pid gone, every node acknowledged with times."""
        before = service_pids(fleet)
        code, report, stderr = kill(fleet, "--reason", "runaway child orders")
        assert code == 0, stderr
        assert report["complete"] and report["unacknowledged"] == []
        assert {n["node"] for n in report["nodes"]} == set(fleet.names)
        for entry in report["nodes"]:
            assert entry["acknowledged"], entry
            assert entry["time_to_halt_ms"] is not None and entry["time_to_halt_ms"] >= 0
            assert before[entry["node"]] in entry["stopped_pids"], entry
            assert datetime.fromisoformat(entry["halted_at"]) >= datetime.fromisoformat(
                entry["received_at"]
            )
        for name, pid in before.items():
            assert not pid_alive(pid), f"{name}: service pid {pid} still alive"
            assert processes_under(fleet.root(name) / "releases") == []
            assert journal(fleet, name)["halted"] is True
        status = fleet.status()
        assert status["state"] == "HALTED"
        for entry in status["nodes"]:
            assert entry["halted"] and entry["halt_source"] == "kill", entry
            assert entry["service_state"] == "halted", entry

    def test_the_halt_hook_runs_before_the_signal(self, fleet: LocalFleet) -> None:
        """The release's halt hook runs first, while the router still answers."""
        for name in fleet.names:
            (fleet.root(name) / "data" / "var" / "halt-hook.log").unlink(missing_ok=True)
        code, _report, stderr = kill(fleet, "--reason", "hook check")
        assert code == 0, stderr
        for name in fleet.names:
            marker = fleet.root(name) / "data" / "var" / "halt-hook.log"
            assert marker.read_text().splitlines() == ["service-up 200"], name

    def test_a_deploy_is_refused_while_halted(self, fleet: LocalFleet, releases: Releases) -> None:
        """A deploy to halted nodes is refused (exit 2) naming the halt; nothing starts."""
        code, _report, stderr = kill(fleet, "--nodes", "node1", "--reason", "hold node1")
        assert code == 0, stderr
        done = kw(fleet, "deploy", releases.v2.release_id)
        assert done.returncode == 2, done.stdout + done.stderr
        said = " ".join(done.stderr.split())
        assert "node1 halted by the kill switch (kill: hold node1)" in said
        assert "knightwatch rearm --nodes node1" in said
        assert processes_under(fleet.root("node1") / "releases") == []
        assert fleet.status()["deployment_id"] is None

    def test_a_halted_agent_restarted_keeps_its_service_down(self, fleet: LocalFleet) -> None:
        """The latch is in state.json: a restarted agent connects but never starts the service."""
        code, _report, stderr = kill(fleet, "--nodes", "node1", "--reason", "restart check")
        assert code == 0, stderr
        assert fleet.stop_agent("node1", signal.SIGTERM) == 0
        fleet.start_agent("node1")
        fleet.wait_connected(["node1"], timeout=SETTLE_S)
        deadline = time.monotonic() + 5.0  # the service would be up by now if it were started
        while time.monotonic() < deadline:
            assert processes_under(fleet.root("node1") / "releases") == []
            time.sleep(0.2)
        state = node(fleet, "node1")
        assert state["halted"] and state["halt_source"] == "kill", state
        assert state["service_state"] == "halted", state
        assert node(fleet, "node2")["service_state"] == "running"

    def test_reasons_holding_markup_print_as_typed(self, fleet: LocalFleet) -> None:
        """Kill and reconcile reasons with ``[/]`` show as typed in status and deployments."""
        done = kw(fleet, "reconcile", "--node", "node2", "--reason", "[/] fix [red]it", "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
        code, _report, stderr = kill(fleet, "--reason", "[/] stop [bold]now")
        assert code == 0, stderr
        status = kw(fleet, "status")
        assert status.returncode == 0, status.stderr
        assert "HALTED by kill: [/] stop [bold]now" in status.stdout
        deployments = kw(fleet, "deployments")
        assert deployments.returncode == 0, deployments.stderr
        assert "(reconcile: [/] fix [red]it)" in deployments.stdout

    def test_rearm_starts_every_service_again(self, fleet: LocalFleet, hooked: BuildResult) -> None:
        """``rearm`` lifts the latch; every node runs the release again, checked."""
        code, _report, stderr = kill(fleet, "--reason", "before re-arm")
        assert code == 0, stderr
        done = kw(fleet, "rearm", "--reason", "fixed and verified", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        answer = json.loads(done.stdout)
        assert sorted(r["node"] for r in answer["nodes"] if r["running"]) == fleet.names
        assert_fleet_on(fleet, hooked.digest)
        assert fleet.client.get("/halts?active=true") == []
        fleet.wait_state("CONVERGED", timeout=SETTLE_S)


class TestBadInput:
    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (("--reason", ""), "reason"),
            (("--reason", "   "), "a reason is required"),
            (("--reason", "x" * 1001), "at most 1000 characters"),
            (("--nodes", "nosuchnode", "--reason", "typo"), "no enrolled node matches nosuchnode"),
            (("--nodes", "Bad Name!", "--reason", "typo"), "is not a node name"),
        ],
    )
    def test_kill_refuses_bad_input_and_changes_nothing(
        self, fleet: LocalFleet, args: tuple[str, ...], expected: str
    ) -> None:
        """A bad kill is refused (exit 2) with a clear line; no halt, no node halted."""
        before = fleet.client.get("/halts")
        done = kw(fleet, "kill", *args)
        assert done.returncode == 2, done.stdout + done.stderr
        assert expected in " ".join(done.stderr.split())
        assert fleet.client.get("/halts") == before
        assert not any(n["halted"] for n in fleet.status()["nodes"])

    @pytest.mark.parametrize("wait", ["-1", "61", "soon"])
    def test_a_bad_long_poll_is_refused(self, fleet: LocalFleet, wait: str) -> None:
        """``GET /halts/{id}?wait_s=`` outside [0, 60] is refused, naming wait_s."""
        with pytest.raises(KnightwatchError, match="wait_s"):
            fleet.client.get(f"/halts/1?wait_s={wait}")

    def test_rearm_with_nothing_halted_is_refused(self, fleet: LocalFleet) -> None:
        """Re-arming a fleet that is not halted says so (exit 2) and changes nothing."""
        done = kw(fleet, "rearm", "--reason", "nothing to lift")
        assert done.returncode == 2, done.stdout + done.stderr
        assert "no halted node matches the fleet" in done.stderr


def armed_service_pid(fleet: LocalFleet) -> int:
    """node3's service pid, once node3 keeps the dead man's period in its journal."""
    wait_until(
        lambda: journal(fleet, ARMED).get("dead_man_s") == DEAD_MAN_S,
        timeout=SETTLE_S,
        what="node3 to keep its dead man's period",
    )
    return service_pids(fleet)[ARMED]


class TestDisconnected:
    def test_an_unreachable_node_is_named_and_halts_by_its_dead_man_switch(
        self, fleet: LocalFleet, link_and_fleet: tuple[LocalFleet, Link]
    ) -> None:
        """Kill with node3 cut off: exit 1 naming node3; node3 halts itself after T, says why."""
        _fleet, link = link_and_fleet
        pid = armed_service_pid(fleet)
        link.cut()
        cut_at = time.time()
        wait_until(
            lambda: not node(fleet, ARMED)["connected"], timeout=SETTLE_S, what="node3 to drop"
        )
        code, report, stderr = kill(fleet, "--reason", "runaway", "--timeout", "5")
        assert code == 1
        assert report["unacknowledged"] == [ARMED]
        assert "not acknowledged by node3 (disconnected): chase these" in " ".join(stderr.split())
        assert all(n["acknowledged"] for n in report["nodes"] if n["node"] != ARMED)

        wait_until(lambda: not pid_alive(pid), timeout=SETTLE_S, what="node3's dead man's switch")
        state = journal(fleet, ARMED)
        assert state["halted"] and state["halt_source"] == "dead-man", state
        assert "lost the control plane for" in state["halt_reason"]
        assert state["halted_since"] - cut_at >= DEAD_MAN_S - 0.5  # it waited T, not less
        assert processes_under(fleet.root(ARMED) / "releases") == []

        asked = time.monotonic()
        waited = fleet.client.get(f"/halts/{report['halt_id']}?wait_s=1")
        assert time.monotonic() - asked >= 1.0  # nothing to wake it: it held until wait_s
        assert waited["unacknowledged"] == [ARMED]

        link.restore()
        fleet.wait_connected([ARMED], timeout=SETTLE_S)
        reported = wait_until(
            lambda: (n := node(fleet, ARMED))["halt_source"] == "dead-man" and n,
            timeout=SETTLE_S,
            what="node3 to report its dead man's halt",
        )
        assert reported["halted"] and "lost the control plane" in reported["halt_reason"]
        alerts = fleet.client.get("/alerts")
        dead_man = [a for a in alerts if a["rule"] == "dead-man" and a["node"] == ARMED]
        assert dead_man and dead_man[0]["severity"] == "critical", alerts
        asked = time.monotonic()
        latched = fleet.client.get(f"/halts/{report['halt_id']}?wait_s=60")  # a long poll
        assert latched["complete"], "node3 never acknowledged the latched halt on reconnect"
        assert time.monotonic() - asked < 50  # woken by node3's ack, not by the deadline
        entry = next(n for n in latched["nodes"] if n["node"] == ARMED)
        assert entry["time_to_halt_ms"] >= 0
        assert os.path.exists(fleet.root(ARMED) / "state.json")

    def test_a_silently_dead_link_trips_the_dead_man_switch_after_t(
        self, fleet: LocalFleet, link_and_fleet: tuple[LocalFleet, Link]
    ) -> None:
        """No FIN, no RST, just silence: node3 halts T after the server's last sign of life."""
        _fleet, link = link_and_fleet
        pid = armed_service_pid(fleet)
        link.stall()
        stalled_at = time.time()
        wait_until(lambda: not pid_alive(pid), timeout=SETTLE_S, what="node3's dead man's switch")
        state = journal(fleet, ARMED)
        assert state["halted"] and state["halt_source"] == "dead-man", state
        waited = state["halted_since"] - stalled_at
        # T counts from the last pong (pings every T/5), not from TCP or a 20 s keepalive giving up.
        assert DEAD_MAN_S - DEAD_MAN_S / 5 - 0.5 <= waited < DEAD_MAN_S + 10, waited
        link.restore()
        fleet.wait_connected([ARMED], timeout=SETTLE_S)
        wait_until(
            lambda: node(fleet, ARMED)["halt_source"] == "dead-man",
            timeout=SETTLE_S,
            what="node3 to report its dead man's halt",
        )
