"""The agent API refuses whoever is not the node, and whatever the node did not sign now.

The tests speak the agent protocol by hand: they connect as ``node1`` (whose
real agent is stopped first, so the two connections do not fight) with its
real credential and node key from its root directory, and send reports a
genuine agent would never send. ``node2`` keeps running; its credential is
the "other node's" one. Nothing is deployed on this fleet, so no command
ever reaches the hand-made connections.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from knightwatch.bundle import ReleaseStore
from knightwatch.localfleet import LocalFleet
from knightwatch.protocol import (
    MAX_MESSAGE_BYTES,
    AuditStatus,
    Finding,
    FindingKind,
    FlagValues,
    Hello,
    NodeKey,
    NodeState,
    Refused,
    Report,
    ReportKind,
    ServiceState,
    ServiceStatus,
    Severity,
    load_node_key,
    parse_server_message,
    sign_report,
)
from knightwatch.testing import wait_until
from tests.integration.conftest import SETTLE_S, Releases, make_fleet

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Iterator[LocalFleet]:
    """Two enrolled nodes, v1 pushed, node1's agent stopped so the tests can be node1."""
    with make_fleet(tmp_path_factory.mktemp("fleet"), releases, nodes=2) as local:
        local.push(releases.store, releases.v1.release_id)
        local.stop_agent("node1")
        wait_until(
            lambda: not _connected(local, "node1"),
            timeout=SETTLE_S,
            what="node1 to be disconnected",
        )
        yield local


def _connected(fleet: LocalFleet, name: str) -> bool:
    return any(n["name"] == name and n["connected"] for n in fleet.status()["nodes"])


def credential(fleet: LocalFleet, name: str) -> str:
    """The secret node ``name`` received at enrollment (ROOT/agent/credential.json)."""
    data = json.loads((fleet.root(name) / "agent" / "credential.json").read_text())
    assert data["node"] == name
    return str(data["credential"])


def node_key(fleet: LocalFleet, name: str) -> NodeKey:
    """Node ``name``'s own signing key (ROOT/agent/node.key)."""
    path = fleet.root(name) / "agent" / "node.key"
    assert path.exists()
    return load_node_key(path)


def headers(node: str, secret: str) -> dict[str, str]:
    """The headers an agent authenticates with."""
    return {"X-Knightwatch-Node": node, "Authorization": f"Bearer {secret}"}


def ws_url(fleet: LocalFleet) -> str:
    """The agent WebSocket URL of the fleet's control plane."""
    return fleet.url.replace("http", "ws", 1) + "/api/agent/v1/connect"


def open_session(fleet: LocalFleet, extra: dict[str, str]) -> ClientConnection:
    """Open the agent WebSocket with ``extra`` headers (the caller closes it)."""
    return connect(
        ws_url(fleet),
        additional_headers=extra,
        open_timeout=TIMEOUT,
        proxy=None,
        max_size=None,
        ssl=fleet.ssl_context,
    )


@pytest.fixture
def session(fleet: LocalFleet) -> Iterator[tuple[ClientConnection, Hello]]:
    """A WebSocket session authenticated as node1, after the server's Hello."""
    with open_session(fleet, headers("node1", credential(fleet, "node1"))) as ws:
        hello = parse_server_message(ws.recv(timeout=TIMEOUT))
        assert isinstance(hello, Hello) and hello.node == "node1"
        yield ws, hello


def report(
    nonce: str, seq: int, *, state: NodeState | None = None, kind: ReportKind = "inventory"
) -> Report:
    """A report of node1 (an inventory unless ``kind`` says otherwise)."""
    return Report(
        node="node1",
        nonce=nonce,
        seq=seq,
        sent_at=datetime.now(UTC),
        kind=kind,
        state=state or NodeState(),
    )


def expect_refusal(ws: ClientConnection, reason: str) -> None:
    """The server answers Refused naming ``reason``, then closes with 1008 (policy)."""
    message = parse_server_message(ws.recv(timeout=TIMEOUT))
    assert isinstance(message, Refused), message
    assert reason in message.reason, message.reason
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def blob_digest(releases: Releases) -> str:
    """The digest of v1's largest blob."""
    store = ReleaseStore(releases.store)
    manifest = json.loads(store.find(releases.v1.release_id).read("manifest.json"))
    files = [f for f in manifest["files"] if f.get("digest")]
    return str(max(files, key=lambda f: f["size"])["digest"])


class TestAuthentication:
    @pytest.mark.parametrize("who", ["missing", "invalid", "other-node", "unknown-node"])
    def test_http_requests_need_the_node_own_credential(
        self, fleet: LocalFleet, releases: Releases, who: str
    ) -> None:
        """Blobs and release documents are served only with the node's own credential."""
        digest = blob_digest(releases)
        sent = {
            "missing": {},
            "invalid": headers("node1", "not-a-credential"),
            "other-node": headers("node1", credential(fleet, "node2")),
            "unknown-node": headers("node9", credential(fleet, "node2")),
        }[who]
        for path in (f"/blobs/{digest}", f"/releases/{releases.v1.digest}/manifest"):
            answer = httpx.get(
                f"{fleet.url}/api/agent/v1{path}",
                headers=sent,
                timeout=TIMEOUT,
                trust_env=False,
                verify=fleet.verify,
            )
            assert answer.status_code == 401, (path, answer.status_code, answer.text)

    def test_http_request_with_the_node_credential_is_served(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """The same request with node2's own credential is served (the control case)."""
        digest = blob_digest(releases)
        answer = httpx.get(
            f"{fleet.url}/api/agent/v1/blobs/{digest}",
            timeout=TIMEOUT,
            trust_env=False,
            verify=fleet.verify,
            headers=headers("node2", credential(fleet, "node2")),
        )
        assert answer.status_code == 200
        assert answer.content == ReleaseStore(releases.store).blobs.read(digest)

    @pytest.mark.parametrize("who", ["missing", "invalid", "other-node"])
    def test_websocket_handshake_needs_the_node_own_credential(
        self, fleet: LocalFleet, who: str
    ) -> None:
        """The agent WebSocket handshake is refused without the node's own credential."""
        sent = {
            "missing": {},
            "invalid": headers("node1", "not-a-credential"),
            "other-node": headers("node1", credential(fleet, "node2")),
        }[who]
        with pytest.raises(InvalidStatus) as refused:
            open_session(fleet, sent).close()
        assert refused.value.response.status_code in (401, 403)
        assert not _connected(fleet, "node1")


class TestReports:
    def test_report_with_a_stale_nonce_is_refused(
        self, fleet: LocalFleet, session: tuple[ClientConnection, Hello]
    ) -> None:
        """A correctly signed report carrying another session's nonce is refused."""
        ws, hello = session
        stale = "a" * 24 if hello.nonce != "a" * 24 else "b" * 24
        ws.send(sign_report(report(stale, 1), node_key(fleet, "node1")).model_dump_json())
        expect_refusal(ws, "stale nonce")

    def test_replayed_report_is_refused(
        self, fleet: LocalFleet, session: tuple[ClientConnection, Hello]
    ) -> None:
        """The same sequence number twice in one session is a replay and is refused."""
        ws, hello = session
        signed = sign_report(report(hello.nonce, 1), node_key(fleet, "node1")).model_dump_json()
        ws.send(signed)  # accepted: the greeting is answered with the node's flag values
        assert isinstance(parse_server_message(ws.recv(timeout=TIMEOUT)), FlagValues)
        ws.send(signed)
        expect_refusal(ws, "replayed report")

    def test_report_signed_by_another_key_is_refused_and_ignored(
        self, fleet: LocalFleet, releases: Releases, session: tuple[ClientConnection, Hello]
    ) -> None:
        """A report signed by a key other than the node's is refused and changes nothing."""
        ws, hello = session
        forger = NodeKey(Ed25519PrivateKey.generate())
        claim = NodeState(active_digest=releases.v1.digest)
        ws.send(sign_report(report(hello.nonce, 1, state=claim), forger).model_dump_json())
        expect_refusal(ws, "signature does not verify")
        node1 = next(n for n in fleet.status()["nodes"] if n["name"] == "node1")
        assert node1["active_digest"] is None

    @pytest.mark.parametrize(
        ("forgery", "reason"),
        [("other-key", "signature does not verify"), ("stale-nonce", "stale nonce")],
    )
    def test_forged_drift_report_changes_no_drift(
        self,
        fleet: LocalFleet,
        session: tuple[ClientConnection, Hello],
        forgery: str,
        reason: str,
    ) -> None:
        """A drift report with a wrong signature or a stale nonce is refused and changes nothing."""
        ws, hello = session
        finding = Finding(
            kind=FindingKind.MODIFIED,
            severity=Severity.CRITICAL,
            path="smars/orders.py",
            detail="smars/orders.py: content differs",
        )
        audit = AuditStatus(findings=[finding], total=1, last_sweep_at=datetime.now(UTC))
        nonce = hello.nonce if forgery == "other-key" else "c" * 24
        claim = Report(
            node="node1",
            nonce=nonce,
            seq=1,
            sent_at=datetime.now(UTC),
            kind="drift",
            state=NodeState(audit=audit),
        )
        key = NodeKey(Ed25519PrivateKey.generate()) if forgery == "other-key" else None
        ws.send(sign_report(claim, key or node_key(fleet, "node1")).model_dump_json())
        expect_refusal(ws, reason)
        node1 = next(n for n in fleet.status()["nodes"] if n["name"] == "node1")
        assert node1["drift_state"] != "drifted"
        assert node1["findings"] == []

    def test_report_naming_another_node_is_refused(
        self, fleet: LocalFleet, session: tuple[ClientConnection, Hello]
    ) -> None:
        """A report about node2, even signed by node1's key, is refused on node1's session."""
        ws, hello = session
        about = Report(
            node="node2",
            nonce=hello.nonce,
            seq=1,
            sent_at=datetime.now(UTC),
            kind="heartbeat",
            state=NodeState(),
        )
        ws.send(sign_report(about, node_key(fleet, "node1")).model_dump_json())
        expect_refusal(ws, "report names node node2")

    @pytest.mark.parametrize(
        "text",
        [
            "not json at all",
            "[1, 2, 3]",
            '{"type": "report"}',
            '{"type": "report", "payload": "!!", "signature": "!!"}',
        ],
        ids=["not-json", "array", "missing-fields", "not-base64"],
    )
    def test_malformed_message_is_refused(
        self, session: tuple[ClientConnection, Hello], text: str
    ) -> None:
        """A message that is not a well-formed signed report is refused and the session closed."""
        ws, _hello = session
        ws.send(text)
        message = parse_server_message(ws.recv(timeout=TIMEOUT))
        assert isinstance(message, Refused), message
        assert "malformed" in message.reason or "base64" in message.reason, message.reason
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT)

    def test_report_with_a_seq_past_64_bits_is_refused(
        self, fleet: LocalFleet, session: tuple[ClientConnection, Hello]
    ) -> None:
        """A report with seq = 2**63 is refused by name; the server then serves node1 again."""
        ws, hello = session
        too_big = report(hello.nonce, 1).model_copy(update={"seq": 2**63})
        ws.send(sign_report(too_big, node_key(fleet, "node1")).model_dump_json())
        expect_refusal(ws, "seq")
        with open_session(fleet, headers("node1", credential(fleet, "node1"))) as again:
            assert isinstance(parse_server_message(again.recv(timeout=TIMEOUT)), Hello)

    def test_oversized_message_closes_the_session(
        self, session: tuple[ClientConnection, Hello]
    ) -> None:
        """A message larger than 1 MiB is not read: the session is closed (1009 or 1008)."""
        ws, _hello = session
        ws.send("x" * (MAX_MESSAGE_BYTES + 1))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                message = parse_server_message(ws.recv(timeout=TIMEOUT))
                assert isinstance(message, Refused), message
        assert closed.value.rcvd is not None and closed.value.rcvd.code in (1008, 1009)

    def test_a_forged_heartbeat_is_refused_when_nothing_came_after_it(
        self, fleet: LocalFleet, session: tuple[ClientConnection, Hello]
    ) -> None:
        """Only a heartbeat a later message caught up with goes unchecked; this one is checked."""
        ws, hello = session
        forger = NodeKey(Ed25519PrivateKey.generate())
        ws.send(sign_report(report(hello.nonce, 1, kind="heartbeat"), forger).model_dump_json())
        expect_refusal(ws, "signature does not verify")

    def test_a_burst_of_heartbeats_ends_in_the_last_state(
        self, fleet: LocalFleet, session: tuple[ClientConnection, Hello]
    ) -> None:
        """Heartbeats sent faster than they are stored: the session stands, the last one counts."""
        ws, hello = session
        key = node_key(fleet, "node1")
        ws.send(sign_report(report(hello.nonce, 1), key).model_dump_json())
        assert isinstance(parse_server_message(ws.recv(timeout=TIMEOUT)), FlagValues)
        last = 200
        for seq in range(2, last + 1):
            service = ServiceStatus(state=ServiceState.STOPPED, detail=f"heartbeat {seq}")
            beat = report(hello.nonce, seq, kind="heartbeat", state=NodeState(service=service))
            ws.send(sign_report(beat, key).model_dump_json())

        def shows_the_last() -> bool:
            node1 = next(n for n in fleet.status()["nodes"] if n["name"] == "node1")
            return node1["service_detail"] == f"heartbeat {last}"

        wait_until(shows_the_last, timeout=SETTLE_S, what=f"node1's heartbeat {last} stored")
        with pytest.raises(TimeoutError):  # nothing refused: the session is still open
            ws.recv(timeout=0.5)
        text = httpx.get(f"{fleet.url}/metrics", trust_env=False, verify=fleet.verify).text
        dropped = {
            s.name: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }["knightwatch_heartbeats_dropped_total"]
        assert 0 <= dropped < last - 1, "at most every heartbeat but the last was dropped"

    def test_a_replaced_session_stores_nothing_over_the_new_one(self, fleet: LocalFleet) -> None:
        """A reconnect's greeting is the node's state: the old session's backlog never lands on it.

        The old session is flooded with reports that are never dropped (inventories), so
        its inbox still holds some when the new session greets; none may be stored after.
        """
        key = node_key(fleet, "node1")
        secret = credential(fleet, "node1")

        def state(detail: str) -> NodeState:
            return NodeState(service=ServiceStatus(state=ServiceState.STOPPED, detail=detail))

        def detail() -> str:
            node1 = next(n for n in fleet.status()["nodes"] if n["name"] == "node1")
            return str(node1["service_detail"])

        with open_session(fleet, headers("node1", secret)) as old:
            hello = parse_server_message(old.recv(timeout=TIMEOUT))
            assert isinstance(hello, Hello)
            for seq in range(1, 301):
                inventory = report(hello.nonce, seq, state=state(f"old {seq}"))
                old.send(sign_report(inventory, key).model_dump_json())
            with open_session(fleet, headers("node1", secret)) as new:
                fresh = parse_server_message(new.recv(timeout=TIMEOUT))
                assert isinstance(fresh, Hello)
                new.send(
                    sign_report(report(fresh.nonce, 1, state=state("new")), key).model_dump_json()
                )
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        old.recv(timeout=TIMEOUT)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409
                wait_until(lambda: detail() == "new", timeout=SETTLE_S, what="the new greeting")
                seen = set()
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    seen.add(detail())
                    time.sleep(0.1)
                assert seen == {"new"}, f"the replaced session stored over the new one: {seen}"


class TestBlobs:
    def test_range_request_returns_the_tail(self, fleet: LocalFleet, releases: Releases) -> None:
        """GET of a blob with ``Range: bytes=10-`` answers 206 with exactly the tail bytes."""
        digest = blob_digest(releases)
        data = ReleaseStore(releases.store).blobs.read(digest)
        assert len(data) > 10
        answer = httpx.get(
            f"{fleet.url}/api/agent/v1/blobs/{digest}",
            timeout=TIMEOUT,
            trust_env=False,
            verify=fleet.verify,
            headers={**headers("node2", credential(fleet, "node2")), "Range": "bytes=10-"},
        )
        assert answer.status_code == 206
        assert answer.content == data[10:]
        assert answer.headers["content-range"] == f"bytes 10-{len(data) - 1}/{len(data)}"
