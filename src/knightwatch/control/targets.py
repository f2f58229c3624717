"""What a deployment is about: the release a reference names, and the nodes it targets."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from knightwatch.errors import InvalidInputError, ReleaseNotFoundError
from knightwatch.selection import matches_selector, parse_selector
from knightwatch.store import Node, Release
from knightwatch.vocabulary import NodeStatus

__all__ = [
    "Targets",
    "enrolled_nodes",
    "lagging_nodes",
    "resolve_release",
    "select_targets",
]


@dataclass(frozen=True)
class Targets:
    """The selected nodes: those connected now, and those to catch up when they return."""

    online: list[Node]
    offline: list[Node]

    @property
    def all(self) -> list[Node]:
        """Every selected node, sorted by name."""
        return sorted([*self.online, *self.offline], key=lambda n: n.name)


def enrolled_nodes(session: Session) -> list[Node]:
    """Every enrolled node, sorted by name."""
    return list(
        session.scalars(select(Node).where(Node.status == NodeStatus.ENROLLED).order_by(Node.name))
    )


def lagging_nodes(session: Session) -> list[Node]:
    """Connected enrolled nodes whose active release is not their desired one, by name.

    Filtered in SQL: the orchestrator asks on every tick, and a large fleet
    must not be loaded row by row five times a second to find none.
    """
    behind = or_(Node.active_digest.is_(None), Node.active_digest != Node.desired_digest)
    statement = (
        select(Node)
        .where(
            Node.status == NodeStatus.ENROLLED,
            Node.connected,
            Node.desired_digest.is_not(None),
            behind,
        )
        .order_by(Node.name)
    )
    return list(session.scalars(statement))


def select_targets(session: Session, selector: str | None) -> Targets:
    """Resolve a node selector; refuse one that matches no enrolled node.

    That none of them is connected is the safety policy's refusal (``targets-connected``).
    """
    terms = parse_selector(selector)
    selected = [n for n in enrolled_nodes(session) if matches_selector(n, terms)]
    if not selected:
        raise InvalidInputError(
            f"no enrolled node matches {selector or 'the fleet'}",
            hint="list nodes with: knightwatch status",
        )
    online = [n for n in selected if n.connected]
    return Targets(online, [n for n in selected if not n.connected])


def resolve_release(session: Session, ref: str) -> Release:
    """The one release a digest, digest prefix, release ID or ``name@version`` names."""
    text = ref.removeprefix("sha256:")
    if (release := session.get(Release, text)) is not None:
        return release
    matches = [
        r
        for r in session.scalars(select(Release))
        if text in (r.release_id, f"{r.name}@{r.version}")
        or (len(text) >= 8 and r.digest.startswith(text))
    ]
    if len(matches) != 1:
        hint = (
            "several releases match; give the full release ID"
            if matches
            else "push it first: knightwatch release push RELEASE --store DIR"
        )
        raise ReleaseNotFoundError(ref, hint=hint)
    return matches[0]
