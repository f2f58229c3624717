"""Version skew: a real knightwatch 0.1.0 agent beside today's, and agents the server refuses.

The 0.1.0 agent is the released wheel (tests/upgrade/old_release.py), run as
its own process against today's control plane: it speaks protocol 1 (no
version headers, 0.1's ``Hello``), enrolls, deploys a release built by today's
code (the manifest format 0.1.0 reads), and answers a halt. Agents the server
cannot serve are simulated honestly: a hollow agent (the swarm's simulated
node, the real protocol code) offering only a later protocol, and a raw
WebSocket client holding a real node credential for malformed headers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from knightwatch import __version__
from knightwatch.agent.connection import websocket_url
from knightwatch.agent.enroll import auth_headers
from knightwatch.client import ServerTarget
from knightwatch.clock import SystemClock
from knightwatch.localfleet import LocalFleet
from knightwatch.protocol import Refused, parse_server_message
from knightwatch.swarm import enroll_hollow, hollow_names
from knightwatch.swarm.hollow import HollowAgent, SwarmCounters
from knightwatch.swarm.swarm import HollowNode
from knightwatch.testing import wait_until
from tests.databases import PG_ENV, postgresql_schema
from tests.integration.conftest import (
    SETTLE_S,
    Releases,
    assert_fleet_on,
    kw,
    log_tail,
    make_fleet,
)
from tests.upgrade.old_release import old_env, unpack_old_release

OLD, NEW = "node1", "node2"
FUTURE = "0.9.0"


def node_of(status: dict[str, Any], name: str) -> dict[str, Any]:
    """Node ``name`` in a fleet status."""
    return next(n for n in status["nodes"] if n["name"] == name)


@pytest.fixture(scope="module")
def mixed_fleet(
    tmp_path_factory: pytest.TempPathFactory, releases: Releases, db_url: str | None
) -> Iterator[tuple[LocalFleet, Path]]:
    """node1 runs the released 0.1.0 agent (from the directory given), node2 today's."""
    old = unpack_old_release(tmp_path_factory.mktemp("knightwatch-0.1.0"))
    fleet = make_fleet(  # a service has 30 s to turn healthy: the machine may be loaded
        tmp_path_factory.mktemp("skew") / "fleet",
        releases,
        nodes=2,
        database_url=db_url,
        agent_args=("--health-timeout", "30"),
    )
    for sub in ("logs", "pids", "nodes"):
        (fleet.directory / sub).mkdir(parents=True, exist_ok=True)
    try:
        fleet.start_server()
        fleet.start_agent(OLD, join=fleet.enroll(OLD), env=old_env(old))
        fleet.start_agent(NEW, join=fleet.enroll(NEW))
        fleet.wait_connected(fleet.names, timeout=SETTLE_S)
        fleet.push(releases.store, releases.v1.release_id)
        yield fleet, old
    finally:
        fleet.down()


def test_a_0_1_0_agent_deploys_halts_and_shows_as_protocol_1(
    mixed_fleet: tuple[LocalFleet, Path], releases: Releases
) -> None:
    """The released agent is served protocol 1: deploy, run, halt, re-arm; status tells it."""
    fleet, old_release = mixed_fleet
    assert _imports_from(fleet, OLD) == str(old_release)  # the 0.1.0 wheel, not this checkout
    assert "protocol=" not in _connect_line(fleet, OLD)  # 0.1.0 knows of no protocol
    assert "protocol=2" in _connect_line(fleet, NEW)
    done = fleet.deploy(releases.v1.release_id, timeout=180)
    why = [(row["node"], row["phase"], row.get("reason")) for row in done["nodes"]]
    assert done["state"] == "SUCCEEDED", (done["reason"], why, log_tail(fleet, OLD))
    phases = {row["node"]: row["phase"] for row in done["nodes"]}
    assert phases == {OLD: "ACTIVE", NEW: "ACTIVE"}, done["nodes"]
    assert_fleet_on(fleet, releases.v1.digest)  # on disk, in the process, in its answers

    halt = fleet.client.post("/halts", {"reason": "version skew test"})
    report = wait_until(
        lambda: (r := fleet.client.get(f"/halts/{halt['halt_id']}?wait_s=5"))["complete"] and r,
        timeout=SETTLE_S,
        what="both agents to acknowledge the halt",
    )
    acked = {entry["node"]: entry for entry in report["nodes"]}
    assert acked[OLD]["acknowledged"] and acked[OLD]["stopped_pids"], acked[OLD]
    fleet.client.post("/rearm", {"reason": "version skew test done"})
    fleet.wait_state("CONVERGED", timeout=SETTLE_S)

    printed = json.loads(kw(fleet, "status", "--json").stdout)
    old, new = node_of(printed, OLD), node_of(printed, NEW)
    assert (old["agent_version"], old["agent_protocol"]) == ("0.1.x", 1), old
    assert (new["agent_version"], new["agent_protocol"]) == (__version__, 2), new
    assert old["refusal"] is None and new["refusal"] is None
    table = kw(fleet, "status").stdout
    assert "0.1.x p1" in _row(table, OLD), table
    assert f"{__version__} p2" in _row(table, NEW), table
    for name in fleet.names:
        assert "message-invalid" not in log_tail(fleet, name, 10_000), name
        assert "refused" not in log_tail(fleet, name, 10_000), name


def test_the_server_states_its_version_without_a_token(
    mixed_fleet: tuple[LocalFleet, Path],
) -> None:
    """GET /api/v1/version: version, protocols, schema revision; open like /healthz."""
    fleet, _old = mixed_fleet
    answer = httpx.get(f"{fleet.url}/api/v1/version", verify=fleet.verify)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "version": __version__,
        "protocols": [1, 2],
        "schema": "0009_agent_versions",
    }
    refused = httpx.post(f"{fleet.url}/api/v1/version", verify=fleet.verify)
    assert refused.status_code == 401  # only reading it is open


def test_todays_agent_works_with_a_0_1_0_control_plane(tmp_path: Path, releases: Releases) -> None:
    """The other way round: a 0.1.0 server serves today's agent, which speaks protocol 1 to it."""
    old = unpack_old_release(tmp_path / "knightwatch-0.1.0")
    with make_fleet(
        tmp_path / "fleet",
        releases,
        nodes=1,
        server_env={"PYTHONPATH": str(old)},
        agent_args=("--health-timeout", "30"),
    ) as fleet:
        server_env = Path(f"/proc/{fleet.server_pid}/environ").read_bytes().split(b"\0")
        assert f"PYTHONPATH={old}".encode() in server_env  # the 0.1.0 control plane
        assert "protocol=1" in _connect_line(fleet, "node1")
        fleet.push(releases.store, releases.v1.release_id)
        done = fleet.deploy(releases.v1.release_id, timeout=180)
        assert done["state"] == "SUCCEEDED", (done["reason"], log_tail(fleet, "node1"))
        assert_fleet_on(fleet, releases.v1.digest)
        server_log = log_tail(fleet, "server", 10_000)
        assert "refused" not in server_log, server_log[-3000:]


def _imports_from(fleet: LocalFleet, name: str) -> str:
    """Where node ``name``'s agent process imports knightwatch from (its PYTHONPATH)."""
    environ = Path(f"/proc/{fleet.agent_pid(name)}/environ").read_bytes().split(b"\0")
    return next(e for e in environ if e.startswith(b"PYTHONPATH=")).decode().split("=", 1)[1]


def _connect_line(fleet: LocalFleet, name: str) -> str:
    """The first ``connect`` event in node ``name``'s agent log."""
    return next(
        line for line in log_tail(fleet, name, 10_000).splitlines() if "event=connect " in line
    )


def _row(table: str, name: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"│ {name} "))


# -- agents the server cannot serve -------------------------------------------------------


class HollowRunner:
    """Hollow agents on an event loop of their own (a background thread), added one by one."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._tasks: list[asyncio.Task[None]] = []
        self._thread = concurrent.futures.ThreadPoolExecutor(1)
        self._thread.submit(self.loop.run_forever)

    def start(self, agent: HollowAgent) -> None:
        """Run ``agent`` until the runner closes."""

        async def spawn() -> None:
            self._tasks.append(asyncio.create_task(agent.run()))

        asyncio.run_coroutine_threadsafe(spawn(), self.loop).result(30)

    def close(self) -> None:
        """Cancel every agent and wait until each has closed its connection; stop the loop."""

        async def stop() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.shutdown(wait=True)
        self.loop.close()


@pytest.fixture(scope="module")
def server_only(
    tmp_path_factory: pytest.TempPathFactory, releases: Releases, db_url: str | None
) -> Iterator[tuple[LocalFleet, list[HollowNode]]]:
    """A control plane with no real agent, and two hollow nodes enrolled (not connected)."""
    with (
        _own_schema(db_url) as url,
        make_fleet(
            tmp_path_factory.mktemp("refusals"), releases, nodes=0, database_url=url
        ) as fleet,
    ):
        target = ServerTarget(fleet.url, fleet.token, str(fleet.ca) if fleet.ca else None)
        nodes = asyncio.run(enroll_hollow(target, hollow_names("skew", 2), group="skew"))
        yield fleet, nodes


@contextlib.contextmanager
def _own_schema(db_url: str | None) -> Iterator[str | None]:
    """A PostgreSQL schema besides the module's (which the mixed fleet has), or SQLite."""
    if db_url is None:
        yield None
        return
    with postgresql_schema(os.environ[PG_ENV]) as (_schema, url):
        yield url


def hollow(
    fleet: LocalFleet, node: HollowNode, counters: SwarmCounters, **offer: Any
) -> HollowAgent:
    """A hollow agent for ``node`` offering today's protocols, or ``protocols``/``version``."""
    return HollowAgent(
        node.credential,
        node.key,
        server=fleet.url,
        clock=SystemClock(),
        counters=counters,
        tls=fleet.ssl_context,
        **offer,
    )


STABLE = (
    "status",
    "group",
    "connected",
    "state",
    "agent_version",
    "agent_protocol",
    "active_digest",
    "service_state",
    "drift_state",
    "halted",
)


def test_an_agent_of_a_later_protocol_is_refused_naming_both_versions(
    server_only: tuple[LocalFleet, list[HollowNode]],
) -> None:
    """A 0.9.0 agent (protocol 3 only) is refused; the node's live session and row stay."""
    fleet, nodes = server_only
    name = nodes[0].credential.node
    runner = HollowRunner()
    try:
        today, future = SwarmCounters(), SwarmCounters()
        runner.start(hollow(fleet, nodes[0], today))
        fleet.wait_connected([name], timeout=SETTLE_S)
        before = node_of(fleet.status(), name)
        assert (before["agent_version"], before["agent_protocol"]) == (__version__, 2)

        runner.start(hollow(fleet, nodes[0], future, protocols=(3,), version=FUTURE))
        expected = (
            f"agent knightwatch {FUTURE} speaks protocol 3; this server ({__version__}) "
            "speaks 1-2: upgrade the control plane first"
        )
        refused = wait_until(
            lambda: (n := node_of(fleet.status(), name))["refusal"] and n,
            timeout=SETTLE_S,
            what=f"{name}'s refusal in the status",
        )
        assert refused["refusal"] == expected, refused
        assert refused["refused_at"] is not None
        wait_until(  # it keeps trying (with its back-off), refused each time
            lambda: log_tail(fleet, "server", 10_000).count(f"agent {name} refused") >= 2,
            timeout=SETTLE_S,
            what="a second refusal",
        )
        assert future.last_error == f"OSError: no hello: {expected}", future.last_error
        assert future.sessions == 0

        after = node_of(fleet.status(), name)
        assert {k: after[k] for k in STABLE} == {k: before[k] for k in STABLE}
        assert (today.sessions, today.disconnects, today.connected) == (1, 0, 1)
        assert after["last_report_at"] >= before["last_report_at"]  # its heartbeats go on

        table = kw(fleet, "status")
        assert table.returncode == 0, table.stderr
        line = next(row for row in table.stdout.splitlines() if "agent refused at connect" in row)
        assert re.fullmatch(
            rf"  {name}: agent refused at connect \d+ s ago: {re.escape(expected)}", line
        ), line
        printed = node_of(json.loads(kw(fleet, "status", "--json").stdout), name)
        assert printed["refusal"] == expected
        assert 0 <= printed["refused_age_s"] <= 60, printed  # recorded at least every 30 s
    finally:
        runner.close()
    assert "Traceback" not in log_tail(fleet, "server", 10_000)


BAD_HEADERS = [
    ("garbage", {"X-Knightwatch-Protocol": "garbage", "X-Knightwatch-Version": "0.2.0"}),
    ("huge", {"X-Knightwatch-Protocol": "1," * 2000 + "2", "X-Knightwatch-Version": "0.2.0"}),
    ("negative", {"X-Knightwatch-Protocol": "-2", "X-Knightwatch-Version": "0.2.0"}),
    ("non-numeric", {"X-Knightwatch-Protocol": "two", "X-Knightwatch-Version": "0.2.0"}),
    ("huge-version", {"X-Knightwatch-Protocol": "2", "X-Knightwatch-Version": "9" * 4000}),
    ("no-version", {"X-Knightwatch-Protocol": "1,2"}),
]


@pytest.mark.parametrize("bad", [b[1] for b in BAD_HEADERS], ids=[b[0] for b in BAD_HEADERS])
def test_malformed_version_headers_get_a_clear_refusal(
    server_only: tuple[LocalFleet, list[HollowNode]], bad: dict[str, str]
) -> None:
    """A node credential with hostile headers: `refused` naming the header, close 4400."""
    fleet, nodes = server_only
    node = nodes[1]
    headers = {**auth_headers(node.credential), **bad}
    with connect(
        websocket_url(fleet.url), ssl=fleet.ssl_context, additional_headers=headers
    ) as socket:
        message = parse_server_message(socket.recv(timeout=30))
        assert isinstance(message, Refused), message
        assert "X-Knightwatch-" in message.reason and "\n" not in message.reason
        assert len(message.reason) < 300, message.reason
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
    status = node_of(fleet.status(), node.credential.node)
    assert status["refusal"] == message.reason
    assert not status["connected"] and status["agent_version"] is None
    assert "Traceback" not in log_tail(fleet, "server", 10_000)


def test_no_credential_is_refused_before_the_headers_are_read(
    server_only: tuple[LocalFleet, list[HollowNode]],
) -> None:
    """Without a credential the handshake fails first (nothing is recorded for anyone)."""
    fleet, _nodes = server_only
    headers = {"X-Knightwatch-Node": "skew-00002", "X-Knightwatch-Protocol": "garbage"}
    with (
        pytest.raises(Exception, match="403"),
        connect(websocket_url(fleet.url), ssl=fleet.ssl_context, additional_headers=headers),
    ):
        pass
