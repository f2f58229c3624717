"""Status accounting: the recorded lifecycle of every configuration item (CI).

Each function below records one lifecycle moment, in the transaction of the
operation that caused it, as a :class:`~knightwatch.store.LifecycleEvent`
(what, when, who, why). The states each kind of item passes through::

    release    built ─► pushed ─► deployed (where) ─► active ─► superseded ─► retired
    component  added ─► changed ─► retired      key RELEASE-NAME/COMPONENT, from the
                                                 manifests of successive fleet releases
    node       enrolled ─► active ─► drained ─► active ─► retired
    flag       recorded by the flag service

:func:`history` reads one item's events back, in time order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.bundle.manifest import Manifest, component_digest
from knightwatch.control.targets import resolve_release
from knightwatch.errors import InvalidInputError, ReleaseNotFoundError, StoreError
from knightwatch.store import Deployment, DeploymentNode, LifecycleEvent, Node, Release
from knightwatch.store.queries import get_fleet

__all__ = [
    "KINDS",
    "History",
    "HistoryEvent",
    "ItemKind",
    "deployment_succeeded",
    "history",
    "node_drained",
    "node_enrolled",
    "node_resumed",
    "node_retired",
    "record",
    "release_pushed",
    "release_retired",
]

log = logging.getLogger("knightwatch.accounting")
ItemKind = Literal["release", "component", "flag", "node"]
KINDS: tuple[ItemKind, ...] = ("release", "component", "flag", "node")
_KEYED_KINDS: tuple[ItemKind, ...] = ("node", "component", "flag")  # not resolved as releases
_DEPLOYING_KINDS = ("deploy", "rollback", "catchup")
_FLEET_KINDS = ("deploy", "rollback")  # the kinds that move the fleet's release (see deploy.py)


@dataclass(frozen=True)
class HistoryEvent:
    """One recorded transition of an item: what, when, who, why."""

    at: datetime
    state: str
    actor: str
    reason: str
    detail: str

    @classmethod
    def from_row(cls, row: LifecycleEvent) -> HistoryEvent:
        """The event a stored row records."""
        return cls(row.at, row.state, row.actor, row.reason, row.detail)

    def to_json(self) -> dict[str, Any]:
        """Return the event as plain JSON data."""
        return {
            "at": self.at.isoformat(),
            "state": self.state,
            "actor": self.actor,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class History:
    """The lifecycle of one configuration item, oldest event first."""

    kind: ItemKind
    key: str
    events: list[HistoryEvent]

    @property
    def state(self) -> str | None:
        """The item's current state: that of its latest event (None if it has none)."""
        return self.events[-1].state if self.events else None

    def to_json(self) -> dict[str, Any]:
        """Return the history as plain JSON data."""
        return {
            "kind": self.kind,
            "key": self.key,
            "state": self.state,
            "events": [e.to_json() for e in self.events],
        }


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
        "release",
        release.release_id,
        "built",
        f"{commit}{dirty}build time from {source.build_time_source}, "
        f"{len(manifest.files)} files in {len(manifest.spec.component)} components",
    )
    pushed = _Moment(session, at, actor)
    detail = f"digest {release.digest}, signed by key {release.signed_by}, both verified"
    pushed.record("release", release.release_id, "pushed", detail)


def release_retired(
    session: Session, release: Release, *, at: datetime, actor: str, reason: str
) -> None:
    """Record that ``release`` is retired: gone from every node, never to deploy again."""
    moment = _Moment(session, at, actor, reason)
    moment.record("release", release.release_id, "retired", f"digest {release.digest}")


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
    rows = [r for r in _deployment_rows(session, deployment) if r.phase == "ACTIVE"]
    names = ", ".join(r.node_name for r in rows) or "no node"
    moment.record("release", release.release_id, "deployed", f"on {names}")
    fleet = get_fleet(session)
    if deployment.kind in _FLEET_KINDS and fleet.desired_digest != release.digest:
        before = session.get(Release, fleet.desired_digest) if fleet.desired_digest else None
        _fleet_release_changed(moment, before, release)
    for row in rows:
        if _first_release(session, row):
            moment.record("node", row.node_name, "active", f"runs {release.release_id}")


def _fleet_release_changed(moment: _Moment, before: Release | None, after: Release) -> None:
    """The fleet moved from ``before`` to ``after``: releases and components change state."""
    was = f"replaces {before.release_id}" if before else "the fleet's first release"
    moment.record("release", after.release_id, "active", was)
    if before is not None:
        moment.record("release", before.release_id, "superseded", f"by {after.release_id}")
    old = _components(before) if before is not None else {}
    new = _components(after)
    if old is None or new is None:
        return  # a manifest that does not parse (logged); the deployment itself stands
    for key in sorted(old.keys() | new.keys()):
        state, detail = _component_change(old.get(key), new.get(key), after)
        if state:
            moment.record("component", key, state, detail)


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
    latest = _latest(session, "node", row.node_name)
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
    moment.record("node", node.name, "enrolled", f"group {node.group_name}")


def node_drained(session: Session, node: Node, *, at: datetime, actor: str, reason: str) -> None:
    """Record that ``node`` takes no deployments any more (its agent still reports)."""
    _Moment(session, at, actor, reason).record("node", node.name, "drained", "takes no deployments")


def node_resumed(session: Session, node: Node, *, at: datetime, actor: str, reason: str) -> None:
    """Record that a drained ``node`` takes deployments again ("active")."""
    moment = _Moment(session, at, actor, reason)
    moment.record("node", node.name, "active", "resumed: takes deployments again")


def node_retired(session: Session, node: Node, *, at: datetime, actor: str, reason: str) -> None:
    """Record that ``node`` is retired: credential revoked, its name never reused."""
    _Moment(session, at, actor, reason).record("node", node.name, "retired", "credential revoked")


# -- reading --------------------------------------------------------------------------------


def history(session: Session, item: str) -> History:
    """The lifecycle of the one item ``item`` names, oldest event first.

    ``item`` may carry a kind prefix (``release:``, ``component:``, ``flag:``,
    ``node:``). Without one it may be a release reference (release ID,
    ``name@version``, digest or a prefix of 8+ hex), a node name, a component
    (``RELEASE/COMPONENT`` or just ``COMPONENT``) or a flag; an item of several
    kinds is refused with the candidates.
    """
    prefix, colon, rest = item.partition(":")
    if colon and prefix in KINDS:
        return _history_of(session, prefix, _resolve_prefixed(session, prefix, rest))
    found, release_error = _candidates(session, item)
    if len(found) == 1:
        return _history_of(session, *found[0])
    if found:
        listed = ", ".join(f"{k}:{key}" for k, key in found)
        raise InvalidInputError(
            f"{item!r} names several items: {listed}",
            hint=f"say which with a prefix, e.g. knightwatch history {found[0][0]}:{found[0][1]}",
        )
    if release_error is not None and _looks_like_release(item):
        raise release_error
    raise InvalidInputError(
        f"no release, node, component or flag matches {item!r}",
        hint="give a release ID, name@version or digest, a node name, or a component as "
        "RELEASE/COMPONENT; or prefix it with release:, node:, component: or flag:",
    )


def _history_of(session: Session, kind: ItemKind, key: str) -> History:
    rows = session.scalars(
        select(LifecycleEvent)
        .where(LifecycleEvent.item_kind == kind, LifecycleEvent.item_key == key)
        .order_by(LifecycleEvent.at, LifecycleEvent.id)
    )
    return History(kind, key, [HistoryEvent.from_row(r) for r in rows])


def _resolve_prefixed(session: Session, kind: ItemKind, text: str) -> str:
    if kind == "release":
        return resolve_release(session, text).release_id
    keys = _release_free_candidates(session, kind, text)
    if len(keys) == 1:
        return keys[0]
    if keys:
        raise InvalidInputError(
            f"{kind} {text!r} is ambiguous: {', '.join(keys)}",
            hint=f"give the full key, e.g. knightwatch history {kind}:{keys[0]}",
        )
    hints = {
        "node": "list nodes with: knightwatch status",
        "component": "a component is RELEASE/COMPONENT (e.g. smars/router) and has a history "
        "once a release declaring it was the fleet's release",
        "flag": "a flag has a history once it was declared or changed",
    }
    raise InvalidInputError(f"no {kind} {text!r} has a recorded history", hint=hints[kind])


def _candidates(
    session: Session, text: str
) -> tuple[list[tuple[ItemKind, str]], ReleaseNotFoundError | None]:
    """Every (kind, key) ``text`` could name, and why it names no release (if it does not)."""
    found: list[tuple[ItemKind, str]] = []
    release_error = None
    try:
        found.append(("release", resolve_release(session, text).release_id))
    except ReleaseNotFoundError as exc:
        release_error = exc
    for kind in _KEYED_KINDS:
        found.extend((kind, key) for key in _release_free_candidates(session, kind, text))
    return found, release_error


def _release_free_candidates(session: Session, kind: ItemKind, text: str) -> list[str]:
    """Keys of ``kind`` (node, component, flag) that ``text`` names, sorted."""
    if kind == "node" and session.get(Node, text) is not None:
        return [text]
    keys = select(LifecycleEvent.item_key).where(LifecycleEvent.item_kind == kind).distinct()
    if kind == "component" and "/" not in text:
        keys = keys.where(LifecycleEvent.item_key.endswith("/" + text, autoescape=True))
    else:
        keys = keys.where(LifecycleEvent.item_key == text)
    return sorted(session.scalars(keys))


def _latest(session: Session, kind: ItemKind, key: str) -> LifecycleEvent | None:
    return session.scalars(
        select(LifecycleEvent)
        .where(LifecycleEvent.item_kind == kind, LifecycleEvent.item_key == key)
        .order_by(LifecycleEvent.at.desc(), LifecycleEvent.id.desc())
        .limit(1)
    ).first()


def _looks_like_release(text: str) -> bool:
    bare = text.removeprefix("sha256:")
    is_hex = len(bare) >= 8 and all(c in "0123456789abcdef" for c in bare)
    return "@" in text or is_hex
