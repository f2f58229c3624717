"""The checks a flag change adds to the policy (P3): the code in scope must read the flag.

A value may change only when every node in scope runs one release, connected,
and that release declares the flag: a node still on old code (Knight's eighth
server) refuses the change, named.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.control.policy.model import Check, Proposal
from knightwatch.errors import Refusal
from knightwatch.store import Flag, Release, ReleaseFlag
from knightwatch.vocabulary import FlagState

__all__ = [
    "FlagNotRetired",
    "NodesConnected",
    "NodesDeclareFlag",
    "ScopeConverged",
]


def _flag(proposal: Proposal) -> Flag:
    assert proposal.flag is not None, f"{proposal.action} names no flag"
    return proposal.flag


def _by_release(proposal: Proposal) -> dict[str | None, list[str]]:
    """The proposal's node names (sorted) per active release digest (None: none active)."""
    groups: dict[str | None, list[str]] = defaultdict(list)
    for node in sorted(proposal.nodes, key=lambda n: n.name):
        groups[node.active_digest].append(node.name)
    return dict(groups)


def _short(digest: str | None) -> str:
    return "no release" if digest is None else digest[:12]


class FlagNotRetired(Check):
    """A retired flag keeps no value: its name is reserved, its code meant to be gone."""

    name = "flag-not-retired"

    def find(self, session: Session, proposal: Proposal) -> Iterator[Refusal]:
        """Refuse any change of a retired flag."""
        flag = _flag(proposal)
        if flag.state == FlagState.RETIRED:
            yield self.refuse(
                f"flag {flag.name} is retired ({flag.retire_reason}); it is never set again",
                [flag.name],
                hint="create a flag with a new name for new behaviour",
            )


class NodesConnected(Check):
    """Every node in scope must acknowledge the change, so every one must be connected."""

    name = "nodes-connected"

    def find(self, session: Session, proposal: Proposal) -> Iterator[Refusal]:
        """Refuse naming every disconnected node in scope."""
        offline = sorted(n.name for n in proposal.nodes if not n.connected)
        if offline:
            yield self.refuse(
                f"{len(offline)} node(s) in scope are not connected: {', '.join(offline[:20])}",
                offline,
                hint="start their agents (knightwatch status), or narrow the scope",
            )


class NodesDeclareFlag(Check):
    """Every node in scope must run a release that declares the flag (it reads it, knowingly)."""

    name = "release-declares-flag"

    def find(self, session: Session, proposal: Proposal) -> Iterator[Refusal]:
        """Refuse once per release in scope that does not declare the flag, naming its nodes."""
        flag = _flag(proposal)
        by_digest = _by_release(proposal)
        digests = [d for d in by_digest if d is not None]
        declaring = set(
            session.scalars(
                select(ReleaseFlag.release_digest).where(
                    ReleaseFlag.flag_name == flag.name, ReleaseFlag.release_digest.in_(digests)
                )
            )
        )
        ids: dict[str, str] = {}
        for known, release_id in session.execute(
            select(Release.digest, Release.release_id).where(Release.digest.in_(digests))
        ):
            ids[known] = release_id
        for digest, names in sorted(by_digest.items(), key=lambda item: item[1]):
            if digest in declaring:
                continue
            running = ids.get(digest, _short(digest)) if digest else "no release"
            yield self.refuse(
                f"{', '.join(names[:20])} run {running}, which does not declare flag {flag.name}",
                names,
                hint="deploy a release that declares it to these nodes first, or narrow the scope",
            )


class ScopeConverged(Check):
    """A scope running two releases is MIXED: one value would mean different things on it."""

    name = "scope-converged"

    def find(self, session: Session, proposal: Proposal) -> Iterator[Refusal]:
        """Refuse when the nodes in scope run more than one release, naming each part."""
        by_digest = _by_release(proposal)
        if len(by_digest) > 1:
            largest_first = sorted(by_digest.items(), key=lambda item: -len(item[1]))
            parts = "; ".join(f"{_short(d)} on {', '.join(n[:10])}" for d, n in largest_first)
            yield self.refuse(
                f"the scope is MIXED: {parts}",
                largest_first[-1][1],  # the fewest nodes: the ones to bring along
                hint="converge the scope first: knightwatch deploy RELEASE",
            )
