"""The agent against the real control plane: enroll, report, obey, reconnect, survive faults.

The control plane is a real ``knightwatch server`` process (``LocalFleet``
with no agents of its own); the agent runs in this process
(:class:`AgentThread`) with its root in a real directory. Nodes are enrolled
and releases deployed through the operator API, exactly as an operator
would; the tests then look at the node's directory, at GET /api/v1/status
and at what the deployment recorded. Network faults come from
``tests.agent.network_faults``, in front of or instead of the real server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from knightwatch import __version__
from knightwatch.agent.errors import AgentSetupError
from knightwatch.agent.main import Agent
from knightwatch.agent.settings import AgentSettings
from knightwatch.agent.supervisor import RestartPolicy
from knightwatch.bundle.signing import load_trusted_key
from knightwatch.localfleet import LocalFleet
from knightwatch.logs import KeyValueFormatter
from knightwatch.protocol import SignedReport, load_node_key, open_report, public_key_from_text
from knightwatch.testing import free_port, wait_until
from tests.agent.conftest import (
    SERVICE_FILES,
    SETTLE_S,
    Releases,
    deploy,
    node_events,
    node_row,
    node_status,
    server_blob,
    server_log,
    wait_connected,
    wait_disconnected,
    wait_fresh_report,
)
from tests.agent.network_faults import FlakyLink, HostilePeer, RefusingPeer

BLOBS = "/api/agent/v1/blobs"
NO_SERVICE_SPEC = """\
[release]
name = "{name}"
version = "{version}"

[[component]]
name = "data"
version = "1.0.0"
paths = ["**"]
"""


class AgentThread:
    """An agent serving in a background thread with its own event loop."""

    def __init__(self, settings: AgentSettings) -> None:
        self.agent = Agent(settings, policy=RestartPolicy(health_timeout_s=30, settle_s=0.5))
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.result: int | None = None

    def _run(self) -> None:
        async def main() -> int:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            self._ready.set()
            return await self.agent.serve(self._stop)

        self.result = asyncio.run(main())

    def __enter__(self) -> AgentThread:
        self.agent.setup()
        self._thread.start()
        self._ready.wait(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "the agent did not stop"

    @property
    def alive(self) -> bool:
        """Whether the agent is still serving."""
        return self._thread.is_alive()

    @property
    def sessions(self) -> int:
        """How many WebSocket sessions the agent has started (one per accepted hello)."""
        return self.agent.connection.sessions


def settings(
    fleet: LocalFleet, name: str, *, join: str | None, server: str | None = None
) -> AgentSettings:
    """Agent settings for node ``name`` of ``fleet`` (rooted where LocalFleet roots its nodes)."""
    return AgentSettings(
        server=server or fleet.url,
        root=fleet.root(name),
        name=name,
        join=join,
        service_port=free_port(),
        trust_fingerprints=tuple(f"SHA256:{load_trusted_key(k).keyid}" for k in fleet.trust),
    )


def joined(fleet: LocalFleet, name: str, *, server: str | None = None) -> AgentThread:
    """An agent for ``name`` holding a fresh join token from the operator API."""
    return AgentThread(settings(fleet, name, join=fleet.enroll(name), server=server))


def agent_headers(fleet: LocalFleet, name: str) -> dict[str, str]:
    """The headers the node authenticates with, from its credential file."""
    secret = json.loads((fleet.root(name) / "agent" / "credential.json").read_text())["credential"]
    return {"X-Knightwatch-Node": name, "Authorization": f"Bearer {secret}"}


@pytest.fixture
def agent_events() -> Iterator[list[logging.LogRecord]]:
    """Every event the in-process agent logs during the test."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("knightwatch.agent")
    handler, level = Keep(level=logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def link(control_plane: LocalFleet) -> Iterator[FlakyLink]:
    """A fault-injecting TCP relay in front of the real control plane."""
    with FlakyLink(control_plane.port) as relay:
        yield relay


class TestSession:
    def test_enrolls_reports_and_reuses_its_credential(
        self, control_plane: LocalFleet, node_name: str
    ) -> None:
        """The node enrolls and reports; its 0600 credential lets a second start skip --join."""
        fleet, root = control_plane, control_plane.root(node_name)
        with joined(fleet, node_name) as running:
            node = wait_connected(fleet, node_name)
            assert node["status"] == "enrolled"
            for _ in range(3):  # heartbeats keep coming, each accepted (seq, nonce, signature)
                wait_fresh_report(fleet, node_name)
            assert running.sessions == 1
        wait_disconnected(fleet, node_name)
        assert f"report from {node_name} refused" not in server_log(fleet)

        credential = root / "agent" / "credential.json"
        assert stat.S_IMODE(credential.stat().st_mode) == 0o600
        unknown = f"{fleet.url}/api/agent/v1/releases/{'e' * 64}/manifest"
        answer = httpx.get(unknown, headers=agent_headers(fleet, node_name), trust_env=False)
        assert answer.status_code == 404  # authenticated: the server just has no such release
        assert len(list((root / "agent" / "trusted").glob("*.pub"))) == 1

        saved = credential.read_bytes()
        with AgentThread(settings(fleet, node_name, join=None)) as again:
            wait_connected(fleet, node_name)
            wait_fresh_report(fleet, node_name)
            assert again.sessions == 1
        assert credential.read_bytes() == saved
        assert node_status(fleet, node_name)["status"] == "enrolled"

    def test_deploys_through_the_real_orchestrator(
        self, control_plane: LocalFleet, releases: Releases, node_name: str
    ) -> None:
        """A real deployment prepares and commits the node; disk, status and records agree."""
        fleet, root = control_plane, control_plane.root(node_name)
        built = releases.smars()
        with joined(fleet, node_name):
            wait_connected(fleet, node_name)
            done = deploy(fleet, releases.store, built, node_name)
            assert done["state"] == "SUCCEEDED", done
            row = node_row(done, node_name)
            assert (row["phase"], row["version"]) == ("ACTIVE", built.release_id)
            assert node_events(done, node_name) == [
                "node:PREPARED",
                "node:COMMITTING",
                "node:ACTIVE",
            ]
            node = wait_fresh_report(fleet, node_name)
            assert node["active_digest"] == built.digest
            assert (node["service_state"], node["service_version"]) == ("running", built.release_id)
            pid = node["service_pid"]
            assert pid is not None and pid == row["pid"]
            assert os.readlink(root / "current") == f"releases/{built.digest}"
            cwd = os.path.realpath(f"/proc/{pid}/cwd")
            assert cwd.startswith(os.path.realpath(root / "releases" / built.digest))
        assert not os.path.exists(f"/proc/{pid}") or "Z" in Path(f"/proc/{pid}/stat").read_text()

    def test_reconnects_after_the_control_plane_restarts(
        self, own_control_plane: LocalFleet, releases: Releases, node_name: str
    ) -> None:
        """After the server restarts, the agent opens a new session that the server accepts."""
        fleet = own_control_plane
        built = releases.build()
        with joined(fleet, node_name) as running:
            wait_fresh_report(fleet, node_name)
            fleet.stop_server()
            wait_until(
                lambda: not running.agent.connection.connected.is_set(),
                timeout=60,
                what="the agent to disconnect",
            )
            fleet.start_server()
            # A new server process: a new nonce, a fresh sequence; only a new session passes.
            wait_connected(fleet, node_name)
            wait_fresh_report(fleet, node_name)
            assert running.sessions == 2
            done = deploy(fleet, releases.store, built, node_name)
            assert done["state"] == "SUCCEEDED", done
            assert node_status(fleet, node_name)["active_digest"] == built.digest

    def test_malformed_frames_from_a_hostile_peer_are_ignored(
        self,
        own_control_plane: LocalFleet,
        releases: Releases,
        node_name: str,
        agent_events: list[logging.LogRecord],
    ) -> None:
        """A hostile peer's malformed frames are logged and ignored; the agent carries on."""
        fleet = own_control_plane
        garbage: list[str | bytes] = [
            '{"type": "self-destruct"}',
            "not json at all",
            '{"type": "prepare", "deployment_id": 0, "digest": "x"}',
            b"\x00\xff\xfe binary junk",
        ]
        built = releases.build()
        with joined(fleet, node_name) as running:
            wait_fresh_report(fleet, node_name)
            fleet.stop_server()
            with HostilePeer(fleet.port, garbage, reports_after=3) as peer:
                assert peer.done.wait(SETTLE_S), "the agent did not keep reporting to the peer"
                assert running.alive and peer.connections == 1
            public = public_key_from_text(
                load_node_key(fleet.root(node_name) / "agent" / "node.key").public_text
            )
            reports = [
                open_report(SignedReport.model_validate_json(m), public) for m in peer.received
            ]
            assert [r.seq for r in reports] == [1, 2, 3, 4]
            assert {r.nonce for r in reports} == {peer.nonce}
            assert [r.kind for r in reports] == ["inventory", "heartbeat", "heartbeat", "heartbeat"]

            def invalid() -> int:
                return sum(r.getMessage() == "message-invalid" for r in agent_events)

            wait_until(
                lambda: invalid() >= len(garbage), timeout=60, what="every garbage line logged"
            )
            assert invalid() == len(garbage)
            assert not [r for r in agent_events if r.getMessage() == "command-received"]

            fleet.start_server()
            wait_connected(fleet, node_name)
            wait_fresh_report(fleet, node_name)
            done = deploy(fleet, releases.store, built, node_name)
            assert done["state"] == "SUCCEEDED", done
            assert running.sessions == 3

    def test_a_control_plane_past_its_protocol_is_logged_once_a_try_and_retried(
        self,
        own_control_plane: LocalFleet,
        node_name: str,
        agent_events: list[logging.LogRecord],
    ) -> None:
        """Refused for its protocol: one line naming both versions per try, back-off, no spin."""
        fleet = own_control_plane
        with joined(fleet, node_name) as running:
            wait_fresh_report(fleet, node_name)
            connection = running.agent.connection
            assert connection.protocol == 2
            assert connection.hello is not None and connection.hello.server_version == __version__
            fleet.stop_server()
            with RefusingPeer(fleet.port, version="0.9.0", protocols=(3,)) as peer:
                wait_until(lambda: len(peer.refusals) >= 2, timeout=60, what="two refused tries")
            expected = (
                f"agent knightwatch {__version__} speaks protocol 1-2; this server (0.9.0) "
                "speaks 3: upgrade the agent"
            )
            assert peer.offers[0] == ("1,2", __version__)
            assert set(peer.refusals) == {expected}
            lines = [
                KeyValueFormatter("agent").format(r)
                for r in agent_events
                if r.getMessage() == "disconnect"
                and expected in KeyValueFormatter("agent").format(r)
            ]
            assert len(lines) >= 2, [r.getMessage() for r in agent_events]
            assert all("\n" not in line and "refused by the server: " in line for line in lines)
            assert running.alive and running.sessions == 1  # no session with the refusing peer
            assert connection.backoff.failures >= 2  # not reset: the delays grow, no spinning

            fleet.start_server()
            wait_connected(fleet, node_name)
            wait_fresh_report(fleet, node_name)
            assert running.sessions == 2 and connection.backoff.failures == 0


class TestHttp:
    def test_blobs_come_in_one_bulk_request(
        self, control_plane: LocalFleet, link: FlakyLink, releases: Releases, node_name: str
    ) -> None:
        """All missing blobs of a release arrive in one framed stream, none one by one."""
        built = releases.build()
        with joined(control_plane, node_name, server=link.url):
            wait_connected(control_plane, node_name)
            done = deploy(control_plane, releases.store, built, node_name)
        assert done["state"] == "SUCCEEDED", done
        assert len(link.requests("POST", BLOBS)) == 1
        assert link.requests("GET", BLOBS + "/") == []

    def test_corrupt_blob_on_the_server_is_refused(
        self, control_plane: LocalFleet, releases: Releases, node_name: str
    ) -> None:
        """A blob the server serves with a flipped byte fails PREPARE naming it; nothing is kept."""
        fleet, root = control_plane, control_plane.root(node_name)
        built = releases.build(files={**SERVICE_FILES, "lib/own.txt": node_name.encode() * 100})
        entry = next(f for f in releases.manifest(built.digest).files if f.path == "lib/own.txt")
        assert entry.digest is not None
        fleet.push(releases.store, built.release_id)
        stored = server_blob(fleet, entry.digest)
        stored.chmod(0o644)
        stored.write_bytes(b"X" + stored.read_bytes()[1:])
        with joined(fleet, node_name):
            wait_connected(fleet, node_name)
            done = fleet.deploy(built.release_id, nodes=node_name, timeout=300)
            wait_fresh_report(fleet, node_name)
            assert node_status(fleet, node_name)["active_digest"] is None
        assert done["state"] == "FAILED", done
        row = node_row(done, node_name)
        assert row["phase"] == "PREPARE_FAILED"
        assert f"blob {entry.digest[:12]}… served with wrong content" in row["reason"]
        assert not (root / "blobs" / "sha256" / entry.digest[:2] / entry.digest[2:]).exists()
        assert not list((root / "releases").iterdir())

    def test_broken_bulk_stream_resumes_blob_by_blob(
        self, control_plane: LocalFleet, link: FlakyLink, releases: Releases, node_name: str
    ) -> None:
        """A bulk stream cut short: the blob it was carrying resumes with Range, the rest follow."""
        data = os.urandom(300_000)
        files = {"bin/serve.py": b"import time\ntime.sleep(9999)\n", "big.bin": data}
        built = releases.build(files=files)
        link.cut_response("POST", BLOBS, after=150_000)
        with joined(control_plane, node_name, server=link.url):
            wait_connected(control_plane, node_name)
            done = deploy(control_plane, releases.store, built, node_name)
        assert done["state"] == "SUCCEEDED", done
        assert len(link.requests("POST", BLOBS)) == 1
        ranges = [r.range for r in link.requests("GET", BLOBS + "/") if r.range]
        assert len(ranges) == 1 and ranges[0].startswith("bytes=")
        tree = control_plane.root(node_name) / "releases" / built.digest
        assert (tree / "big.bin").read_bytes() == data

    def test_broken_download_resumes_with_range(
        self, control_plane: LocalFleet, link: FlakyLink, releases: Releases, node_name: str
    ) -> None:
        """A blob download cut short is resumed from where it stopped (Range), then verified."""
        data = os.urandom(200_000)
        built = releases.build(spec=NO_SERVICE_SPEC, files={"big.bin": data})
        entry = next(f for f in releases.manifest(built.digest).files if f.path == "big.bin")
        link.cut_response("POST", BLOBS, after=0)  # no bulk stream: every blob on its own
        link.cut_response("GET", f"{BLOBS}/{entry.digest}", after=50_000)
        with joined(control_plane, node_name, server=link.url):
            wait_connected(control_plane, node_name)
            done = deploy(control_plane, releases.store, built, node_name)
        assert done["state"] == "SUCCEEDED", done
        assert len(link.requests("POST", BLOBS)) == 1
        fetched = link.requests("GET", f"{BLOBS}/{entry.digest}")
        assert [r.range for r in fetched] == [None, "bytes=50000-"]
        tree = control_plane.root(node_name) / "releases" / built.digest
        assert (tree / "big.bin").read_bytes() == data

    def test_blob_missing_on_the_server_is_prepare_failed(
        self, control_plane: LocalFleet, releases: Releases, node_name: str
    ) -> None:
        """A blob the server has lost is PREPARE_FAILED naming its URL and the HTTP status."""
        fleet = control_plane
        built = releases.build(files={**SERVICE_FILES, "lib/own.txt": node_name.encode() * 100})
        entry = next(f for f in releases.manifest(built.digest).files if f.path == "lib/own.txt")
        assert entry.digest is not None
        fleet.push(releases.store, built.release_id)
        server_blob(fleet, entry.digest).unlink()
        with joined(fleet, node_name):
            wait_connected(fleet, node_name)
            done = fleet.deploy(built.release_id, nodes=node_name, timeout=300)
        assert done["state"] == "FAILED", done
        row = node_row(done, node_name)
        assert row["phase"] == "PREPARE_FAILED"
        assert f"{fleet.url}{BLOBS}/{entry.digest}: HTTP 4" in row["reason"]

    def test_refused_join_token_exits_2(self, control_plane: LocalFleet, node_name: str) -> None:
        """A wrong join token is a clear setup error (exit code 2) quoting the server."""
        control_plane.enroll(node_name)
        agent = Agent(settings(control_plane, node_name, join="wrong"))
        with pytest.raises(AgentSetupError) as caught:
            agent.setup()
        assert caught.value.exit_code == 2
        assert f"join token is not valid for node {node_name}" in caught.value.message
        assert not (control_plane.root(node_name) / "agent" / "credential.json").exists()
        assert node_status(control_plane, node_name)["status"] == "pending"

    def test_first_start_needs_a_join_token(
        self, control_plane: LocalFleet, node_name: str
    ) -> None:
        """Without a credential and without --join the agent refuses to start (exit 2)."""
        agent = Agent(settings(control_plane, node_name, join=None))
        with pytest.raises(AgentSetupError, match="has not joined") as caught:
            agent.setup()
        assert caught.value.exit_code == 2
