"""Status accounting on a real store and a virtual clock: every recorded transition, and history.

Releases are real manifests (small in-memory ones, or one real signed bundle
pushed through the catalog); deployments go through the real orchestrator,
whose agents' answers are fed in as acks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from knightwatch.bundle import (
    FileEntry,
    Manifest,
    ReleaseStore,
    SigningKey,
    SourceInfo,
    TrustedKey,
    build_release,
    parse_spec,
)
from knightwatch.clock import VirtualClock
from knightwatch.control.accounting import record, release_retired
from knightwatch.control.deploy import Orchestrator
from knightwatch.control.deploy_requests import DeployRequest, DeployTimeouts
from knightwatch.control.enrollment import (
    AuthenticationError,
    authenticate,
    create_join_token,
    enroll,
)
from knightwatch.control.history import History, history
from knightwatch.control.nodes import NodeChange, drain_node, resume_node, retire_node
from knightwatch.control.releases import ReleaseCatalog
from knightwatch.control.targets import enrolled_nodes
from knightwatch.errors import GateRefusedError, InvalidInputError, ReleaseNotFoundError
from knightwatch.protocol import Abort, Ack, AckPhase, Commit, Prepare, Rollback, public_key_text
from knightwatch.store import (
    Database,
    Deployment,
    JoinToken,
    LifecycleEvent,
    Node,
    Release,
)
from tests.helpers import MakeSource

Command = Prepare | Commit | Rollback | Abort
START = datetime(2012, 8, 1, 13, 0, tzinfo=UTC)
BUILT = "2012-07-31T20:00:00Z"
V1 = {"core": ("1.0.0", b"book"), "router": ("1.0.0", b"route v1"), "docs": ("1.0.0", b"docs")}
V2 = {"core": ("1.0.0", b"book"), "router": ("1.1.0", b"route v2"), "cli": ("1.0.0", b"cli")}


class NullSink:
    """Accepts every command (the agents' answers are fed in by the tests)."""

    def send(self, node: str, message: Command) -> bool:
        """Pretend ``message`` went down ``node``'s WebSocket."""
        return True


def make_manifest(version: str, components: dict[str, tuple[str, bytes]]) -> Manifest:
    """A release ``shop@version`` whose component NAME owns one file NAME/main.py."""
    spec = f'[release]\nname = "shop"\nversion = "{version}"\n' + "".join(
        f'[[component]]\nname = "{name}"\nversion = "{v}"\npaths = ["{name}/**"]\n'
        for name, (v, _) in components.items()
    )
    files = [
        FileEntry(
            path=f"{name}/main.py",
            size=len(data),
            executable=False,
            digest=hashlib.sha256(data).hexdigest(),
            component=name,
        )
        for name, (_, data) in sorted(components.items())
    ]
    source = SourceInfo(build_time=BUILT, build_time_source="SOURCE_DATE_EPOCH")
    return Manifest(name="shop", version=version, source=source, spec=parse_spec(spec), files=files)


@pytest.fixture
def clock() -> VirtualClock:
    """A clock that moves only when the test says so."""
    return VirtualClock(START)


@pytest.fixture
def releases(db: Database, clock: VirtualClock) -> dict[str, Release]:
    """Releases shop@1 (core, router, docs) and shop@2 (core, router changed, cli; no docs)."""
    found = {}
    with db.session() as session:
        for version, components in (("1", V1), ("2", V2)):
            manifest = make_manifest(version, components)
            row = Release(
                digest=manifest.digest,
                release_id=manifest.release_id,
                name="shop",
                version=version,
                manifest=manifest.canonical_bytes(),
                sbom=b"{}",
                envelope=b"{}",
                signed_by="k",
                pushed_at=clock.now(),
                pushed_by="alice",
            )
            session.add(row)
            found[version] = row
    return found


def join(db: Database, clock: VirtualClock, name: str) -> str:
    """Enroll node ``name`` the way an agent does (join token, then node key); connect it."""
    with db.session() as session:
        grant = create_join_token(session, name, now=clock.now(), ttl_s=600)
        key = public_key_text(Ed25519PrivateKey.generate().public_key())
        credential = enroll(session, name, grant.token, key, now=clock.now())
        node = session.get(Node, name)
        assert node is not None
        node.connected = True
    return credential


@pytest.fixture
def nodes(db: Database, clock: VirtualClock) -> dict[str, str]:
    """Nodes n1 and n2, enrolled and connected; their credentials by name."""
    return {name: join(db, clock, name) for name in ("n1", "n2")}


@pytest.fixture
def orchestrator(db: Database, clock: VirtualClock) -> Orchestrator:
    """The real orchestrator over the store, with a sink that accepts everything."""
    return Orchestrator(db, NullSink(), clock, DeployTimeouts(30, 30, 30, 5))


def drive(
    orchestrator: Orchestrator, db: Database, clock: VirtualClock, deployment_id: int
) -> None:
    """Answer PREPARED then ACTIVE from every node of a deployment."""
    with db.session() as session:
        deployment = session.get(Deployment, deployment_id)
        assert deployment is not None
        digest = deployment.release_digest
    for phase in (AckPhase.PREPARED, AckPhase.ACTIVE):
        clock.advance(1)
        for name in ("n1", "n2"):
            orchestrator.on_ack(name, Ack(deployment_id=deployment_id, digest=digest, phase=phase))


def deploy(orchestrator: Orchestrator, db: Database, clock: VirtualClock, release: Release) -> None:
    """Deploy ``release`` to the fleet and let every node succeed."""
    clock.advance(60)
    drive(orchestrator, db, clock, orchestrator.start(DeployRequest(release=release.digest)))


def of(db: Database, item: str) -> History:
    """The history ``item`` names."""
    with db.session() as session:
        return history(session, item)


def states(db: Database, item: str) -> list[str]:
    """The states ``item`` went through, oldest first."""
    return [e.state for e in of(db, item).events]


class TestRecord:
    def test_record_stores_what_when_who_why(self, db: Database, clock: VirtualClock) -> None:
        """``record`` stores one flushed event with every field the caller gave."""
        with db.session() as session:
            row = record(
                session,
                "flag",
                "rlp.enabled",
                "declared",
                at=clock.now(),
                actor="bob",
                reason="new",
                detail="in smars@1",
            )
            assert row.id is not None
        event = of(db, "flag:rlp.enabled").events[0]
        fields = (event.at, event.state, event.actor, event.reason, event.detail)
        assert fields == (START, "declared", "bob", "new", "in smars@1")

    def test_history_is_in_time_order(self, db: Database, clock: VirtualClock) -> None:
        """Events come back ordered by time, whatever order they were recorded in."""
        with db.session() as session:
            for minute, state in ((5, "c"), (1, "a"), (3, "b")):
                at = START.replace(minute=minute)
                record(session, "flag", "f", state, at=at, actor="x")
        assert states(db, "flag:f") == ["a", "b", "c"]


class TestReleases:
    def test_push_records_built_at_build_time_then_pushed(
        self,
        db: Database,
        clock: VirtualClock,
        tmp_path: Path,
        make_source: MakeSource,
        signing_key: SigningKey,
        trusted_key: TrustedKey,
    ) -> None:
        """Pushing a signed bundle records "built" at its build time, then "pushed" by whom."""
        store = tmp_path / "store"
        built = build_release(
            make_source(), store, signing_key, environ={"SOURCE_DATE_EPOCH": "1343826000"}
        )
        found = ReleaseStore(store).find(built.release_id)
        catalog = ReleaseCatalog(db, tmp_path / "data", [trusted_key], clock)
        ticket = catalog.begin_upload(
            found.read("manifest.json"),
            found.read("sbom.cdx.json"),
            found.read("release.dsse.json"),
            "alice",
        )
        for digest in ticket.missing:
            writer = catalog.blob_writer(ticket.upload_id, digest)
            writer.write(ReleaseStore(store).blobs.read(digest))
            writer.finish()
        clock.advance(3600)
        catalog.commit_upload(ticket.upload_id)

        events = of(db, built.release_id).events
        assert [e.state for e in events] == ["built", "pushed"]
        assert events[0].at == datetime(2012, 8, 1, 13, 0, tzinfo=UTC)  # SOURCE_DATE_EPOCH
        assert events[0].actor == f"key {built.keyid[:16]}"
        assert "SOURCE_DATE_EPOCH" in events[0].detail
        assert (events[1].at, events[1].actor) == (clock.now(), "alice")
        assert built.digest in events[1].detail and built.keyid in events[1].detail

    def test_retired_release_records_who_and_why(
        self, db: Database, clock: VirtualClock, releases: dict[str, Release]
    ) -> None:
        """``release_retired`` records "retired" with the actor and the reason."""
        with db.session() as session:
            release_retired(
                session, releases["1"], at=clock.now(), actor="carol", reason="power peg"
            )
        event = of(db, "shop@1").events[-1]
        assert (event.state, event.actor, event.reason) == ("retired", "carol", "power peg")


class TestDeployments:
    def test_first_deploy_makes_release_nodes_and_components_active(
        self,
        db: Database,
        clock: VirtualClock,
        orchestrator: Orchestrator,
        releases: dict[str, Release],
        nodes: dict[str, str],
    ) -> None:
        """The first release is deployed (on both nodes) and active; its components added."""
        deploy(orchestrator, db, clock, releases["1"])
        events = of(db, "shop@1").events
        assert [e.state for e in events] == ["deployed", "active"]
        assert events[0].detail == "on n1, n2"
        assert events[0].actor == "operator" and "deployment 1 (deploy)" in events[0].reason
        assert "first release" in events[1].detail
        for component in ("core", "router", "docs"):
            assert states(db, f"shop/{component}") == ["added"]
        for name in nodes:
            assert states(db, f"node:{name}") == ["enrolled", "active"]

    def test_next_release_supersedes_and_diffs_components(
        self,
        db: Database,
        clock: VirtualClock,
        orchestrator: Orchestrator,
        releases: dict[str, Release],
        nodes: dict[str, str],
    ) -> None:
        """v2 over v1: v1 superseded, v2 active; components added, changed, retired."""
        deploy(orchestrator, db, clock, releases["1"])
        deploy(orchestrator, db, clock, releases["2"])
        assert states(db, "shop@1") == ["deployed", "active", "superseded"]
        assert states(db, "shop@2") == ["deployed", "active"]
        assert of(db, "shop@1").events[-1].detail == f"by {releases['2'].release_id}"
        assert states(db, "shop/core") == ["added"]
        assert states(db, "shop/router") == ["added", "changed"]
        assert "1.0.0" in of(db, "shop/router").events[-1].detail
        assert "1.1.0" in of(db, "shop/router").events[-1].detail
        assert states(db, "shop/docs") == ["added", "retired"]
        assert states(db, "shop/cli") == ["added"]
        for name in nodes:
            assert states(db, f"node:{name}") == ["enrolled", "active"]  # active once

    def test_rollback_reactivates_the_previous_release(
        self,
        db: Database,
        clock: VirtualClock,
        orchestrator: Orchestrator,
        releases: dict[str, Release],
        nodes: dict[str, str],
    ) -> None:
        """A rollback makes v1 active again and supersedes v2; v2-only components retire."""
        deploy(orchestrator, db, clock, releases["1"])
        deploy(orchestrator, db, clock, releases["2"])
        clock.advance(60)
        drive(orchestrator, db, clock, orchestrator.start_rollback("dave"))
        assert states(db, "shop@1")[-2:] == ["deployed", "active"]
        assert of(db, "shop@1").events[-1].actor == "dave"
        assert states(db, "shop@2") == ["deployed", "active", "superseded"]
        assert states(db, "shop/cli") == ["added", "retired"]
        assert states(db, "shop/docs") == ["added", "retired", "added"]
        assert states(db, "shop/router") == ["added", "changed", "changed"]

    def test_catchup_deploys_without_moving_the_fleet(
        self,
        db: Database,
        clock: VirtualClock,
        orchestrator: Orchestrator,
        releases: dict[str, Release],
        nodes: dict[str, str],
    ) -> None:
        """A catch-up records "deployed" on its node only; the fleet's release does not move."""
        deploy(orchestrator, db, clock, releases["1"])
        clock.advance(60)
        deployment_id = orchestrator.start(
            DeployRequest(release=releases["1"].digest, nodes="n2", kind="catchup")
        )
        for phase in (AckPhase.PREPARED, AckPhase.ACTIVE):
            ack = Ack(deployment_id=deployment_id, digest=releases["1"].digest, phase=phase)
            orchestrator.on_ack("n2", ack)
        events = of(db, "shop@1").events
        assert [e.state for e in events] == ["deployed", "active", "deployed"]
        assert events[-1].detail == "on n2"
        assert states(db, "shop/core") == ["added"]

    def test_failed_deployment_records_nothing(
        self,
        db: Database,
        orchestrator: Orchestrator,
        releases: dict[str, Release],
        nodes: dict[str, str],
    ) -> None:
        """A deployment that fails in PREPARE changes no item's state."""
        deployment_id = orchestrator.start(DeployRequest(release=releases["1"].digest))
        digest = releases["1"].digest
        orchestrator.on_ack(
            "n1",
            Ack(deployment_id=deployment_id, digest=digest, phase=AckPhase.PREPARE_FAILED),
        )
        assert of(db, "shop@1").events == []
        with db.session() as session:
            kinds = set(session.scalars(select(LifecycleEvent.item_kind)))
        assert kinds == {"node"}


class TestNodes:
    def test_drain_resume_retire(
        self, db: Database, clock: VirtualClock, nodes: dict[str, str]
    ) -> None:
        """A node goes enrolled → drained → active → retired, each with who and why."""
        with db.session() as session:
            clock.advance(1)
            change = drain_node(session, "n1", at=clock.now(), actor="erin", reason="disk")
            assert change.status == "drained"
            assert [n.name for n in enrolled_nodes(session)] == ["n2"]
            authenticate(session, "n1", nodes["n1"])  # a drained node still reports
        with db.session() as session:
            clock.advance(1)
            resume_node(session, "n1", at=clock.now(), actor="erin", reason="disk replaced")
            assert [n.name for n in enrolled_nodes(session)] == ["n1", "n2"]
        with db.session() as session:
            clock.advance(1)
            retire_node(session, "n1", at=clock.now(), actor="frank", reason="decommissioned")
        events = of(db, "n1").events
        assert [(e.state, e.actor, e.reason) for e in events] == [
            ("enrolled", "n1", "join token redeemed"),
            ("drained", "erin", "disk"),
            ("active", "erin", "disk replaced"),
            ("retired", "frank", "decommissioned"),
        ]

    def test_retired_node_can_no_longer_authenticate_or_enroll(
        self, db: Database, clock: VirtualClock, nodes: dict[str, str]
    ) -> None:
        """Retiring revokes the credential and expires unused join tokens."""
        with db.session() as session:
            grant = create_join_token(session, "n1", now=clock.now(), ttl_s=600)
        with db.session() as session:
            retire_node(session, "n1", at=clock.now(), actor="frank", reason="gone")
        with db.session() as session:
            node = session.get(Node, "n1")
            assert node is not None and (node.status, node.credential_hash) == ("retired", None)
            with pytest.raises(AuthenticationError):
                authenticate(session, "n1", nodes["n1"])
            key = public_key_text(Ed25519PrivateKey.generate().public_key())
            with pytest.raises(AuthenticationError):
                enroll(session, "n1", grant.token, key, now=clock.now())
            tokens = session.scalars(select(JoinToken).where(JoinToken.node_name == "n1"))
            assert all(t.used_at or t.expires_at <= clock.now() for t in tokens)
        with db.session() as session, pytest.raises(InvalidInputError, match="retired"):
            create_join_token(session, "n1", now=clock.now(), ttl_s=600)

    def test_retire_and_drain_refused_during_a_deployment(
        self,
        db: Database,
        clock: VirtualClock,
        orchestrator: Orchestrator,
        releases: dict[str, Release],
        nodes: dict[str, str],
    ) -> None:
        """A node that is part of a running deployment can be neither retired nor drained."""
        deployment_id = orchestrator.start(DeployRequest(release=releases["1"].digest))
        for action in (retire_node, drain_node):
            with db.session() as session, pytest.raises(GateRefusedError, match="deployment"):
                action(session, "n1", at=clock.now(), actor="frank", reason="x")
        with db.session() as session:
            node = session.get(Node, "n1")
            assert node is not None and node.status == "enrolled"
        assert states(db, "node:n1") == ["enrolled"]
        drive(orchestrator, db, clock, deployment_id)
        with db.session() as session:
            retire_node(session, "n1", at=clock.now(), actor="frank", reason="after it")
        assert states(db, "node:n1")[-1] == "retired"

    @pytest.mark.parametrize(
        ("setup", "action", "reason", "message"),
        [
            (None, resume_node, "why", "only a drained node"),
            ("retired", drain_node, "why", "only an enrolled node"),
            ("retired", retire_node, "why", "already retired"),
            (None, drain_node, "   ", "reason is required"),
        ],
    )
    def test_wrong_state_or_missing_reason_is_refused(
        self,
        db: Database,
        clock: VirtualClock,
        nodes: dict[str, str],
        setup: str | None,
        action: Callable[..., NodeChange],
        reason: str,
        message: str,
    ) -> None:
        """Transitions the node lifecycle does not allow are refused with exit code 2."""
        if setup == "retired":
            with db.session() as session:
                retire_node(session, "n1", at=clock.now(), actor="x", reason="x")
        with db.session() as session, pytest.raises(InvalidInputError, match=message) as refused:
            action(session, "n1", at=clock.now(), actor="x", reason=reason)
        assert refused.value.exit_code == 2

    def test_unknown_node_is_refused(self, db: Database, clock: VirtualClock) -> None:
        """Draining a node nobody enrolled is refused, naming it."""
        with db.session() as session, pytest.raises(InvalidInputError, match="no node 'ghost'"):
            drain_node(session, "ghost", at=clock.now(), actor="x", reason="x")


class TestHistory:
    def test_release_by_every_reference(
        self,
        db: Database,
        clock: VirtualClock,
        orchestrator: Orchestrator,
        releases: dict[str, Release],
        nodes: dict[str, str],
    ) -> None:
        """A release is found by ID, name@version, digest, 8-hex prefix, or release: prefix."""
        deploy(orchestrator, db, clock, releases["1"])
        release = releases["1"]
        for ref in (
            release.release_id,
            "shop@1",
            release.digest,
            "sha256:" + release.digest,
            release.digest[:8],
            "release:shop@1",
        ):
            found = of(db, ref)
            assert (found.kind, found.key, found.state) == ("release", release.release_id, "active")

    def test_component_by_key_bare_name_or_prefix(
        self,
        db: Database,
        clock: VirtualClock,
        orchestrator: Orchestrator,
        releases: dict[str, Release],
        nodes: dict[str, str],
    ) -> None:
        """A component is found by RELEASE/COMPONENT, by its bare name, or with component:."""
        deploy(orchestrator, db, clock, releases["1"])
        for ref in ("shop/router", "router", "component:router", "component:shop/router"):
            assert (of(db, ref).kind, of(db, ref).key) == ("component", "shop/router")

    def test_node_without_prefix_and_with(self, db: Database, nodes: dict[str, str]) -> None:
        """A node is found by its name, with or without node:."""
        assert of(db, "n1").kind == of(db, "node:n1").kind == "node"
        assert of(db, "n1").to_json()["events"][0]["state"] == "enrolled"

    def test_item_of_several_kinds_names_candidates_and_prefix(
        self,
        db: Database,
        clock: VirtualClock,
        orchestrator: Orchestrator,
        releases: dict[str, Release],
        nodes: dict[str, str],
    ) -> None:
        """A name that is both a node and a component is refused; the prefix disambiguates."""
        deploy(orchestrator, db, clock, releases["1"])
        with db.session() as session:
            create_join_token(session, "router", now=clock.now(), ttl_s=60)
        with pytest.raises(InvalidInputError) as refused:
            of(db, "router")
        assert "node:router" in refused.value.message
        assert "component:shop/router" in refused.value.message
        assert refused.value.hint is not None and "knightwatch history" in refused.value.hint
        assert refused.value.exit_code == 2
        assert of(db, "node:router").kind == "node"
        assert of(db, "component:router").key == "shop/router"

    @pytest.mark.parametrize(
        ("item", "error", "message"),
        [
            ("nothing-here", InvalidInputError, "no release, node, component or flag"),
            ("shop@9", ReleaseNotFoundError, "no release matches"),
            ("release:shop@9", ReleaseNotFoundError, "no release matches"),
            ("node:ghost", InvalidInputError, "no node 'ghost'"),
            ("component:shop/ghost", InvalidInputError, "no component"),
            ("flag:ghost", InvalidInputError, "no flag"),
        ],
    )
    def test_unknown_item_is_refused_with_a_hint(
        self,
        db: Database,
        releases: dict[str, Release],
        item: str,
        error: type[InvalidInputError],
        message: str,
    ) -> None:
        """An item that names nothing is refused (exit 2) with a hint on what to give."""
        with pytest.raises(error, match=message) as refused:
            of(db, item)
        assert refused.value.exit_code == 2 and refused.value.hint

    def test_to_json(self, db: Database, clock: VirtualClock, releases: dict[str, Release]) -> None:
        """The JSON form carries kind, key, current state and every event."""
        with db.session() as session:
            release_retired(session, releases["2"], at=clock.now(), actor="a", reason="b")
        data = of(db, "shop@2").to_json()
        assert data["kind"] == "release" and data["state"] == "retired"
        assert data["events"] == [
            {
                "at": START.isoformat(),
                "state": "retired",
                "actor": "a",
                "reason": "b",
                "detail": f"digest {releases['2'].digest}",
            }
        ]
