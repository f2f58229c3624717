"""Reading the recorded lifecycle of one configuration item back: ``knightwatch history``.

An item is named as a user would: a release ID, ``name@version`` or digest,
a node name, a component (``RELEASE/COMPONENT``), a flag — or any of these
with a ``release:``, ``node:``, ``component:`` or ``flag:`` prefix when a
name is ambiguous. Its events come back in time order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.control.targets import resolve_release
from knightwatch.errors import InvalidInputError, ReleaseNotFoundError
from knightwatch.store import LifecycleEvent, Node
from knightwatch.vocabulary import ItemKind

__all__ = ["History", "HistoryEvent", "history"]

_KEYED_KINDS = (ItemKind.NODE, ItemKind.COMPONENT, ItemKind.FLAG)  # not resolved as releases


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


def history(session: Session, item: str) -> History:
    """The lifecycle of the one item ``item`` names, oldest event first.

    ``item`` may carry a kind prefix (``release:``, ``component:``, ``flag:``,
    ``node:``). Without one it may be a release reference (release ID,
    ``name@version``, digest or a prefix of 8+ hex), a node name, a component
    (``RELEASE/COMPONENT`` or just ``COMPONENT``) or a flag; an item of several
    kinds is refused with the candidates.
    """
    prefix, colon, rest = item.partition(":")
    if colon and prefix in tuple(ItemKind):
        kind = ItemKind(prefix)
        return _history_of(session, kind, _resolve_prefixed(session, kind, rest))
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
    if kind == ItemKind.RELEASE:
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
        found.append((ItemKind.RELEASE, resolve_release(session, text).release_id))
    except ReleaseNotFoundError as exc:
        release_error = exc
    for kind in _KEYED_KINDS:
        found.extend((kind, key) for key in _release_free_candidates(session, kind, text))
    return found, release_error


def _release_free_candidates(session: Session, kind: ItemKind, text: str) -> list[str]:
    """Keys of ``kind`` (node, component, flag) that ``text`` names, sorted."""
    if kind == ItemKind.NODE and session.get(Node, text) is not None:
        return [text]
    keys = select(LifecycleEvent.item_key).where(LifecycleEvent.item_kind == kind).distinct()
    if kind == ItemKind.COMPONENT and "/" not in text:
        keys = keys.where(LifecycleEvent.item_key.endswith("/" + text, autoescape=True))
    else:
        keys = keys.where(LifecycleEvent.item_key == text)
    return sorted(session.scalars(keys))


def _looks_like_release(text: str) -> bool:
    bare = text.removeprefix("sha256:")
    is_hex = len(bare) >= 8 and all(c in "0123456789abcdef" for c in bare)
    return "@" in text or is_hex
