"""The agent against a control plane speaking the contract: enroll, report, obey, reconnect."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from knightwatch.agent.errors import AgentSetupError
from knightwatch.agent.main import Agent
from knightwatch.agent.settings import AgentSettings
from knightwatch.agent.supervisor import RestartPolicy
from knightwatch.bundle import BuildResult
from knightwatch.protocol.messages import AckPhase, Commit, Prepare, ServiceState
from tests.agent.conftest import Releases, free_port, wait_for
from tests.agent.plane import StubPlane


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


@pytest.fixture
def plane(releases: Releases, key_dir: Path) -> Iterator[StubPlane]:
    """A stub control plane serving the test store, trusting the test signing key."""
    releases.store.mkdir(exist_ok=True)
    with StubPlane(releases.store, [(key_dir / "release.pub").read_text()]) as stub:
        yield stub


def settings(plane: StubPlane, root: Path, **changes: object) -> AgentSettings:
    """Agent settings for node1 joining ``plane``."""
    values: dict[str, object] = {
        "server": plane.url,
        "root": root,
        "name": "node1",
        "join": plane.token,
        "service_port": free_port(),
    }
    values.update(changes)
    return AgentSettings(**values)  # type: ignore[arg-type]


def deploy(plane: StubPlane, built: BuildResult, deployment: int) -> tuple[AckPhase, AckPhase]:
    """Prepare and commit ``built`` through the WebSocket; return both ack phases."""
    ids = {"deployment_id": deployment, "digest": built.digest, "release_id": built.release_id}
    plane.send(Prepare(**ids))  # type: ignore[arg-type]
    prepared = plane.ack_for(deployment, built.digest).ack
    assert prepared is not None
    if prepared.phase is not AckPhase.PREPARED:
        return prepared.phase, prepared.phase
    before = len(plane.reports())
    plane.send(Commit(**ids))  # type: ignore[arg-type]

    def committed() -> AckPhase | None:
        for report in plane.reports()[before:]:
            if report.ack and report.ack.phase is not AckPhase.PREPARED:
                return report.ack.phase
        return None

    wait_for(lambda: committed() is not None, "no commit ack", 120)
    phase = committed()
    assert phase is not None
    return prepared.phase, phase


class TestSession:
    def test_enrolls_then_reports_inventory_and_heartbeats(
        self, plane: StubPlane, tmp_path: Path
    ) -> None:
        """After enrolling, the agent's first report is the inventory (seq 1), then heartbeats."""
        root = tmp_path / "node"
        with AgentThread(settings(plane, root)):
            wait_for(lambda: len(plane.reports()) >= 4, "no heartbeats")
        session = plane.sessions[0]
        assert session.refused is None
        kinds = [r.kind for r in session.reports]
        assert kinds[0] == "inventory" and set(kinds[1:]) == {"heartbeat"}
        assert [r.seq for r in session.reports] == list(range(1, len(session.reports) + 1))
        assert {r.nonce for r in session.reports} == {session.nonce}
        credential = root / "agent" / "credential.json"
        assert stat.S_IMODE(credential.stat().st_mode) == 0o600
        assert json.loads(credential.read_text())["credential"] == plane.credentials["node1"]
        assert len(list((root / "agent" / "trusted").glob("*.pub"))) == 1

    def test_deploys_over_the_websocket(
        self, plane: StubPlane, releases: Releases, tmp_path: Path
    ) -> None:
        """Prepare and commit arrive as messages; acks carry the node's new state."""
        built = releases.smars()
        with AgentThread(settings(plane, tmp_path / "node")):
            wait_for(plane.connected, "not connected")
            assert deploy(plane, built, 1) == (AckPhase.PREPARED, AckPhase.ACTIVE)
            last = plane.reports()[-1]
            assert last.state.active_digest == built.digest
            assert last.state.service.state is ServiceState.RUNNING
            assert last.state.service.version == built.release_id
            pid = last.state.service.pid
            assert pid is not None
        assert not os.path.exists(f"/proc/{pid}") or "Z" in Path(f"/proc/{pid}/stat").read_text()

    def test_invalid_messages_are_ignored(
        self, plane: StubPlane, releases: Releases, tmp_path: Path
    ) -> None:
        """Malformed or unknown messages are logged and ignored; the session goes on."""
        built = releases.build()
        with AgentThread(settings(plane, tmp_path / "node")):
            wait_for(plane.connected, "not connected")
            plane.send_raw('{"type": "self-destruct"}')
            plane.send_raw("not json at all")
            plane.send_raw('{"type": "prepare", "deployment_id": 0, "digest": "x"}')
            assert deploy(plane, built, 3) == (AckPhase.PREPARED, AckPhase.ACTIVE)
        assert len(plane.sessions) == 1

    def test_reconnects_with_a_fresh_sequence(self, plane: StubPlane, tmp_path: Path) -> None:
        """After the connection drops, the agent reconnects; the new session starts at seq 1."""
        with AgentThread(settings(plane, tmp_path / "node")):
            wait_for(lambda: len(plane.reports()) >= 2, "not connected")
            plane.drop()
            wait_for(lambda: len(plane.sessions) == 2 and plane.sessions[1].reports, "no reconnect")
        second = plane.sessions[1]
        assert second.nonce != plane.sessions[0].nonce
        assert second.reports[0].kind == "inventory" and second.reports[0].seq == 1
        assert second.refused is None


class TestHttp:
    def test_blobs_come_in_one_bulk_request(
        self, plane: StubPlane, releases: Releases, tmp_path: Path
    ) -> None:
        """All missing blobs of a release arrive in one framed stream, none one by one."""
        built = releases.build()
        with AgentThread(settings(plane, tmp_path / "node")):
            wait_for(plane.connected, "not connected")
            plane.send(Prepare(deployment_id=1, digest=built.digest, release_id=built.release_id))
            ack = plane.ack_for(1, built.digest).ack
        assert ack is not None and (ack.phase, ack.reason) == (AckPhase.PREPARED, None)
        assert (plane.bulk_requests, plane.blob_gets) == (1, 0)

    def test_corrupt_blob_in_the_bulk_stream_is_refused(
        self, plane: StubPlane, releases: Releases, tmp_path: Path
    ) -> None:
        """A blob with a flipped byte in the bulk stream fails PREPARE naming it; not cached."""
        built = releases.build()
        entry = next(f for f in releases.manifest(built.digest).files if f.path == "lib/b.txt")
        assert entry.digest is not None
        plane.corrupt.add(entry.digest)
        root = tmp_path / "node"
        with AgentThread(settings(plane, root)):
            wait_for(plane.connected, "not connected")
            plane.send(Prepare(deployment_id=1, digest=built.digest, release_id=built.release_id))
            ack = plane.ack_for(1, built.digest).ack
        assert ack is not None and ack.phase is AckPhase.PREPARE_FAILED
        assert ack.reason is not None
        assert f"blob {entry.digest[:12]}… served with wrong content" in ack.reason
        assert not (root / "blobs" / "sha256" / entry.digest[:2] / entry.digest[2:]).exists()
        assert not list((root / "releases").iterdir())

    def test_broken_bulk_stream_resumes_blob_by_blob(
        self, plane: StubPlane, releases: Releases, tmp_path: Path
    ) -> None:
        """A bulk stream cut short: the blob it was carrying resumes with Range, the rest follow."""
        data = os.urandom(300_000)
        files = {"bin/serve.py": b"import time\ntime.sleep(9999)\n", "big.bin": data}
        built = releases.build(files=files)
        plane.bulk_limit = 150_000
        with AgentThread(settings(plane, tmp_path / "node")):
            wait_for(plane.connected, "not connected")
            plane.send(Prepare(deployment_id=1, digest=built.digest, release_id=built.release_id))
            ack = plane.ack_for(1, built.digest).ack
        assert ack is not None and (ack.phase, ack.reason) == (AckPhase.PREPARED, None)
        assert plane.bulk_requests == 1
        assert len(plane.ranges) == 1 and plane.ranges[0].startswith("bytes=")
        assert (tmp_path / "node" / "releases" / built.digest / "big.bin").read_bytes() == data

    def test_broken_download_resumes_with_range(
        self, plane: StubPlane, releases: Releases, tmp_path: Path
    ) -> None:
        """A blob download cut short is resumed from where it stopped (Range), then verified."""
        data = os.urandom(200_000)
        built = releases.build(
            files={"bin/serve.py": b"import time\ntime.sleep(9999)\n", "big.bin": data}
        )
        plane.bulk_enabled = False
        plane.blob_limit = 50_000
        with AgentThread(settings(plane, tmp_path / "node")):
            wait_for(plane.connected, "not connected")
            plane.send(Prepare(deployment_id=1, digest=built.digest, release_id=built.release_id))
            ack = plane.ack_for(1, built.digest).ack
        assert ack is not None and (ack.phase, ack.reason) == (AckPhase.PREPARED, None)
        assert "bytes=50000-" in plane.ranges
        assert (tmp_path / "node" / "releases" / built.digest / "big.bin").read_bytes() == data

    def test_unknown_release_is_prepare_failed(self, plane: StubPlane, tmp_path: Path) -> None:
        """A digest the control plane does not have is PREPARE_FAILED naming the URL and 404."""
        digest = "e" * 64
        with AgentThread(settings(plane, tmp_path / "node")):
            wait_for(plane.connected, "not connected")
            plane.send(Prepare(deployment_id=4, digest=digest, release_id="x@1+eeeeeeeeeeee"))
            ack = plane.ack_for(4, digest).ack
        assert ack is not None and ack.phase is AckPhase.PREPARE_FAILED
        assert ack.reason is not None
        assert f"/api/agent/v1/releases/{digest}/manifest: HTTP 404" in ack.reason

    def test_refused_join_token_exits_2(self, plane: StubPlane, tmp_path: Path) -> None:
        """A wrong join token is a clear setup error (exit code 2) quoting the server."""
        agent = Agent(settings(plane, tmp_path / "node", join="wrong"))
        with pytest.raises(AgentSetupError) as caught:
            agent.setup()
        assert caught.value.exit_code == 2
        assert "join token is not valid for node node1" in caught.value.message
        assert not (tmp_path / "node" / "agent" / "credential.json").exists()

    def test_first_start_needs_a_join_token(self, plane: StubPlane, tmp_path: Path) -> None:
        """Without a credential and without --join the agent refuses to start (exit 2)."""
        agent = Agent(settings(plane, tmp_path / "node", join=None))
        with pytest.raises(AgentSetupError, match="has not joined"):
            agent.setup()
