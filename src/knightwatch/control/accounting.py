"""Status accounting: the recorded lifecycle of every configuration item (CI).

Each function below records one lifecycle moment, in the transaction of the
operation that caused it, as a :class:`~knightwatch.store.LifecycleEvent`
(what, when, who, why). The states each kind of item passes through::

    release    built ─► pushed ─► deployed (where) ─► active ─► superseded ─► retired
    component  added ─► changed ─► retired      key RELEASE-NAME/COMPONENT, from the
                                                 manifests of successive fleet releases
    node       enrolled ─► active ─► drained ─► active ─► retired
    flag       recorded by the flag service

:func:`knightwatch.control.history.history` reads one item's events back, in time order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.bundle.manifest import Manifest, component_digest
from knightwatch.control import auditlog
from knightwatch.errors import StoreError
from knightwatch.store import Deployment, DeploymentNode, LifecycleEvent, Node, Release
from knightwatch.store.queries import get_fleet
from knightwatch.vocabulary import DeploymentKind, ItemKind, NodePhase

__all__ = [
    "deployment_succeeded",
    "latest_event",
    "node_drained",
    "node_enrolled",
    "node_resumed",
    "node_retired",
    "record",
    "release_pushed",
    "release_retired",
]

log = logging.getLogger("knightwatch.accounting")
_DEPLOYING_KINDS = (DeploymentKind.DEPLOY, DeploymentKind.ROLLBACK, DeploymentKind.CATCHUP)
_FLEET_KINDS = (
    DeploymentKind.DEPLOY,
    DeploymentKind.ROLLBACK,
)  # the kinds that move the fleet's release (see deploy.py)


def record(
    session: Session,
    kind: ItemKind,
    key: str,
    state: str,
    *,
    at: datetime,
    actor: str,
    reason: str = "",
    detail: str = "",
) -> LifecycleEvent:
    """Record one transition of item ``kind``/``key`` and return it (flushed)."""
    row = LifecycleEvent(
        item_kind=kind,
        item_key=key,
        state=state,
        at=at,
        actor=actor[:255],
        reason=reason,
        detail=detail,
    )
    session.add(row)
    session.flush()
    auditlog.append(
        session,
        actor=actor,
        action=f"{kind}.{state}",
        obj=key,
        at=at,
        payload={"reason": reason, "detail": detail},
    )
    return row


# -- releases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Moment:
    """One lifecycle moment: when, who and why, shared by the events it records."""

    session: Session
    at: datetime
    actor: str
    reason: str = ""

    def record(self, kind: ItemKind, key: str, state: str, detail: str = "") -> None:
        record(
            self.session,
            kind,
            key,
            state,
            at=self.at,
            actor=self.actor,
            reason=self.reason,
            detail=detail,
        )


def release_pushed(
    session: Session, release: Release, manifest: Manifest, *, at: datetime, actor: str
) -> None:
    """Record a new release as "built" (at its build time) and "pushed" (now, by ``actor``)."""
    source = manifest.source
    signer = f"key {release.signed_by[:16]}"  # a long key ID, as OpenPGP shows them
    built = _Moment(session, _build_time(source.build_time) or at, signer)
    commit = f"commit {source.commit[:12]}, " if source.commit else ""
    dirty = "uncommitted changes, " if source.dirty else ""
    built.record(
        ItemKind.RELEASE,
        release.release_id,
        "built",
        f"{commit}{dirty}build time from {source.build_time_source}, "
        f"{len(manifest.files)} files in {len(manifest.spec.component)} components",
    )
    pushed = _Moment(session, at, actor)
    detail = f"digest {release.digest}, signed by key {release.signed_by}, both verified"
    pushed.record(ItemKind.RELEASE, release.release_id, "pushed", detail)


def release_retired(
    session: Session, release: Release, *, at: datetime, actor: str, reason: str
) -> None:
    """Record that ``release`` is retired: gone from every node, never to deploy again."""
    moment = _Moment(session, at, actor, reason)
    moment.record(ItemKind.RELEASE, release.release_id, "retired", f"digest {release.digest}")


def deployment_succeeded(session: Session, deployment: Deployment, *, at: datetime) -> None:
    """Record what a SUCCEEDED deployment changed; call it before the fleet row moves.

    The release is "deployed" on its nodes. If the deployment moves the
    fleet's release, the new one becomes "active", the one before it
    "superseded", and their components are diffed ("added", "changed",
    "retired"). A node running its first release becomes "active".
    """
    if deployment.kind not in _DEPLOYING_KINDS:
        return
    release = session.get(Release, deployment.release_digest)
    assert release is not None  # foreign key
    moment = _Moment(
        session, at, deployment.requested_by, f"deployment {deployment.id} ({deployment.kind})"
    )
    rows = [r for r in _deployment_rows(session, deployment) if r.phase == NodePhase.ACTIVE]
    names = ", ".join(r.node_name for r in rows) or "no node"
    moment.record(ItemKind.RELEASE, release.release_id, "deployed", f"on {names}")
    fleet = get_fleet(session)
    if deployment.kind in _FLEET_KINDS and fleet.desired_digest != release.digest:
        before = session.get(Release, fleet.desired_digest) if fleet.desired_digest else None
        _fleet_release_changed(moment, before, release)
    for row in rows:
        if _first_release(session, row):
            moment.record(ItemKind.NODE, row.node_name, "active", f"runs {release.release_id}")


def _fleet_release_changed(moment: _Moment, before: Release | None, after: Release) -> None:
    """The fleet moved from ``before`` to ``after``: releases and components change state."""
    was = f"replaces {before.release_id}" if before else "the fleet's first release"
    moment.record(ItemKind.RELEASE, after.release_id, "active", was)
    if before is not None:
        moment.record(ItemKind.RELEASE, before.release_id, "superseded", f"by {after.release_id}")
    old = _components(before) if before is not None else {}
    new = _components(after)
    if old is None or new is None:
        return  # a manifest that does not parse (logged); the deployment itself stands
    for key in sorted(old.keys() | new.keys()):
        state, detail = _component_change(old.get(key), new.get(key), after)
        if state:
            moment.record(ItemKind.COMPONENT, key, state, detail)


@dataclass(frozen=True)
class _Component:
    version: str
    depends_on: tuple[str, ...]
    digest: str

    def describe(self) -> str:
        return f"version {self.version}, files {self.digest[:12]}"


def _components(release: Release) -> dict[str, _Component] | None:
    """A release's components by item key (RELEASE-NAME/COMPONENT), with their fingerprints."""
    try:
        manifest = Manifest.from_bytes(release.manifest, where=release.release_id)
    except StoreError as exc:
        log.warning("components of %s not accounted: %s", release.release_id, exc.message)
        return None
    return {
        f"{manifest.name}/{c.name}": _Component(
            c.version,
            tuple(sorted(c.depends_on)),
            component_digest(manifest.component_files(c.name)),
        )
        for c in manifest.spec.component
    }


def _component_change(
    old: _Component | None, new: _Component | None, after: Release
) -> tuple[str | None, str]:
    """The state a component enters when the fleet moves to ``after`` (None: unchanged)."""
    if new is None:
        assert old is not None
        return "retired", f"absent from {after.release_id} (was {old.describe()})"
    if old is None:
        return "added", f"in {after.release_id}: {new.describe()}"
    if old == new:
        return None, ""
    detail = f"in {after.release_id}: {old.describe()} -> {new.describe()}"
    if old.depends_on != new.depends_on:
        detail += f"; depends on {', '.join(new.depends_on) or 'nothing'}"
    return "changed", detail


def _deployment_rows(session: Session, deployment: Deployment) -> list[DeploymentNode]:
    return list(
        session.scalars(
            select(DeploymentNode)
            .where(DeploymentNode.deployment_id == deployment.id)
            .order_by(DeploymentNode.node_name)
        )
    )


def _first_release(session: Session, row: DeploymentNode) -> bool:
    """Whether this deployment made the node active: its first release since it enrolled."""
    latest = latest_event(session, ItemKind.NODE, row.node_name)
    if latest is None:
        return row.previous_digest is None
    return latest.state == "enrolled"


def _build_time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# -- nodes ----------------------------------------------------------------------------------


def node_enrolled(session: Session, node: Node, *, at: datetime, actor: str) -> None:
    """Record that ``node`` redeemed a join token and holds a credential now."""
    moment = _Moment(session, at, actor, "join token redeemed")
    moment.record(ItemKind.NODE, node.name, "enrolled", f"group {node.group_name}")


def node_drained(session: Session, node: Node, *, at: datetime, actor: str, reason: str) -> None:
    """Record that ``node`` takes no deployments any more (its agent still reports)."""
    _Moment(session, at, actor, reason).record(
        ItemKind.NODE, node.name, "drained", "takes no deployments"
    )


def node_resumed(session: Session, node: Node, *, at: datetime, actor: str, reason: str) -> None:
    """Record that a drained ``node`` takes deployments again ("active")."""
    moment = _Moment(session, at, actor, reason)
    moment.record(ItemKind.NODE, node.name, "active", "resumed: takes deployments again")


def node_retired(session: Session, node: Node, *, at: datetime, actor: str, reason: str) -> None:
    """Record that ``node`` is retired: credential revoked, its name never reused."""
    _Moment(session, at, actor, reason).record(
        ItemKind.NODE, node.name, "retired", "credential revoked"
    )


# -- reading --------------------------------------------------------------------------------


def latest_event(session: Session, kind: ItemKind, key: str) -> LifecycleEvent | None:
    """The newest recorded event of an item (None: it has no history)."""
    return session.scalars(
        select(LifecycleEvent)
        .where(LifecycleEvent.item_kind == kind, LifecycleEvent.item_key == key)
        .order_by(LifecycleEvent.at.desc(), LifecycleEvent.id.desc())
        .limit(1)
    ).first()
