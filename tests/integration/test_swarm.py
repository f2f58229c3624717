"""The hollow-agent swarm against a real control plane: enroll, report, deploy, halt, reconnect.

The swarm is what bench/scale.py measures the control plane with, so it is
tested as a user of the server would see it: every hollow agent is a node of
the fleet, connected and reporting; a deployment reaches every one of them
and succeeds; a fleet halt is acknowledged by all; a server restart is
followed by every agent reconnecting on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from knightwatch import __version__
from knightwatch.client import ServerTarget
from knightwatch.localfleet import LocalFleet
from knightwatch.swarm import Swarm, enroll_hollow, hollow_names
from knightwatch.testing import wait_until
from tests.integration.conftest import Releases, make_fleet

COUNT = 20
SWARM_CLI = (sys.executable, "-m", "knightwatch", "swarm")
WAIT_S = 120.0


class SwarmThread:
    """A swarm on its own event loop in a background thread."""

    def __init__(self, swarm: Swarm) -> None:
        self.swarm = swarm
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self.swarm.run())
        try:
            with contextlib.suppress(asyncio.CancelledError):
                self._loop.run_until_complete(self._task)
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def __enter__(self) -> SwarmThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        def cancel() -> None:
            if self._task is not None:
                self._task.cancel()

        self._loop.call_soon_threadsafe(cancel)
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def hollow_fleet(
    tmp_path_factory: pytest.TempPathFactory, releases: Releases
) -> Iterator[tuple[LocalFleet, SwarmThread]]:
    """A control plane with no real agent and COUNT hollow ones, v1 and v2 pushed."""
    with make_fleet(tmp_path_factory.mktemp("swarm"), releases, nodes=0) as local:
        for release in (releases.v1, releases.v2):
            local.push(releases.store, release.release_id)
        target = ServerTarget(local.url, local.token, str(local.ca) if local.ca else None)
        names = hollow_names("hollow", COUNT)
        nodes = asyncio.run(enroll_hollow(target, names, group="swarm"))
        with SwarmThread(Swarm(target, nodes, ramp_s=0.5)) as running:
            local.wait_connected(names, timeout=WAIT_S)
            yield local, running


def test_every_hollow_agent_is_a_connected_reporting_node(
    hollow_fleet: tuple[LocalFleet, SwarmThread],
) -> None:
    """Each one enrolled with its own key, greets, and its signed reports are accepted."""
    local, running = hollow_fleet
    nodes = {n["name"]: n for n in local.status()["nodes"]}
    assert sorted(nodes) == hollow_names("hollow", COUNT)
    assert all(n["connected"] and n["group"] == "swarm" for n in nodes.values()), nodes
    # they speak this knightwatch's protocol, as the real agent does
    assert {(n["agent_version"], n["agent_protocol"]) for n in nodes.values()} == {(__version__, 2)}
    assert running.swarm.counters.reports >= COUNT
    assert running.swarm.counters.last_error == ""


def test_a_deployment_reaches_every_hollow_agent(
    hollow_fleet: tuple[LocalFleet, SwarmThread], releases: Releases
) -> None:
    """Prepare and commit go to all of them; every ack is recorded; the fleet is on v1, then v2."""
    local, running = hollow_fleet
    for release in (releases.v1, releases.v2):
        done = local.deploy(release.release_id, timeout=WAIT_S)
        assert done["state"] == "SUCCEEDED", (done["reason"], done["nodes"])
        assert {row["phase"] for row in done["nodes"]} == {"ACTIVE"}
        assert len(done["nodes"]) == COUNT
    assert {agent.current for agent in running.swarm.agents} == {releases.v2.digest}
    assert {agent.previous for agent in running.swarm.agents} == {releases.v1.digest}


def test_a_fleet_halt_is_acknowledged_by_every_hollow_agent(
    hollow_fleet: tuple[LocalFleet, SwarmThread],
) -> None:
    """The kill switch's halt reaches all, each acknowledgement is recorded, re-arm clears it."""
    local, _running = hollow_fleet
    report = local.client.post("/halts", {"reason": "swarm test"})
    path = f"/halts/{report['halt_id']}"
    report = wait_until(
        lambda: (r := local.client.get(f"{path}?wait_s=5"))["complete"] and r,
        timeout=WAIT_S,
        what="every hollow agent to acknowledge the halt",
    )
    assert len(report["nodes"]) == COUNT and not report["unacknowledged"]
    local.client.post("/rearm", {"reason": "swarm test done"})
    wait_until(
        lambda: not any(n["halted"] for n in local.status()["nodes"]),
        timeout=WAIT_S,
        what="every hollow agent re-armed",
    )


def test_hollow_agents_reconnect_after_the_server_restarts(
    hollow_fleet: tuple[LocalFleet, SwarmThread],
) -> None:
    """A stop ends every session quietly, recorded; after the restart each one comes back."""
    local, running = hollow_fleet
    sessions = running.swarm.counters.sessions
    log = local.directory / "logs" / "server.log"
    logged = log.stat().st_size
    assert local.stop_server() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught
    with log.open(errors="replace") as handle:
        handle.seek(logged)
        stopping = handle.read()
    # No session outlived the stop to be cancelled (an idle keep-alive HTTP client may: 0 tasks).
    assert "Traceback" not in stopping, stopping[-3000:]
    assert not re.search(r"Cancel [1-9][0-9]* running task", stopping), stopping[-3000:]
    database = sqlite3.connect(local.directory / "server" / "knightwatch.db")
    try:
        rows = database.execute("SELECT connected, disconnected_at FROM nodes").fetchall()
    finally:
        database.close()
    assert len(rows) >= COUNT and all(not c and at is not None for c, at in rows), rows
    local.start_server()
    local.wait_connected(hollow_names("hollow", COUNT), timeout=WAIT_S)
    assert running.swarm.counters.sessions >= sessions + COUNT


def test_the_swarm_command_runs_and_reports(hollow_fleet: tuple[LocalFleet, SwarmThread]) -> None:
    """`knightwatch swarm --json` enrolls its own nodes, runs them, and prints its counters."""
    local, _running = hollow_fleet
    env = {"KNIGHTWATCH_SERVER": local.url, "KNIGHTWATCH_TOKEN": local.token}
    if local.ca:
        env["KNIGHTWATCH_CA"] = str(local.ca)
    done = subprocess.run(
        [*SWARM_CLI, "--count", "5", "--prefix", "cli", "--duration", "4", "--json"],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env={**_base_env(), **env},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"agents": 5' in done.stdout and '"connected": 5' in done.stdout, done.stdout
    names = {n["name"] for n in local.status()["nodes"]}
    assert set(hollow_names("cli", 5)) <= names
    again = subprocess.run(
        [*SWARM_CLI, "--count", "5", "--prefix", "cli"],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env={**_base_env(), **env},
        check=False,
    )
    assert again.returncode != 0
    assert "error:" in again.stderr and "cli-00001" in again.stderr, again.stderr
    assert "Traceback" not in again.stderr


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KNIGHTWATCH_")}
