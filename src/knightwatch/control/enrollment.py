"""Enrolling nodes: one-time join tokens, per-node credentials, node keys.

A join token is shown once and stored only as its SHA-256; it expires and
works once. Enrollment exchanges it for a random per-node credential (also
stored hashed) and registers the node's Ed25519 public key, which then
verifies every report the node signs.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from knightwatch.control import auditlog
from knightwatch.control.accounting import node_enrolled
from knightwatch.errors import InvalidInputError, KnightwatchError
from knightwatch.protocol import public_key_from_text
from knightwatch.store import JoinToken, Node
from knightwatch.vocabulary import NodeStatus

__all__ = [
    "AuthenticationError",
    "JoinGrant",
    "authenticate",
    "create_join_token",
    "enroll",
    "validate_node_name",
]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_CONNECTING = (
    NodeStatus.ENROLLED,
    NodeStatus.DRAINED,
)  # a drained node takes no deployments but still reports


class AuthenticationError(KnightwatchError):
    """A node's credentials, token or key were refused."""


@dataclass(frozen=True)
class JoinGrant:
    """A freshly created join token (shown to the operator exactly once)."""

    node: str
    token: str
    expires_at: datetime


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def validate_node_name(name: str) -> str:
    """Return ``name`` if it is a valid node name, else raise InvalidInputError."""
    if not _NAME.fullmatch(name):
        raise InvalidInputError(
            f"node name {name!r} is not valid",
            hint="use 1-63 of a-z 0-9 . _ - starting with a letter or digit",
        )
    return name


def create_join_token(
    session: Session,
    name: str,
    *,
    now: datetime,
    ttl_s: float,
    group: str = "default",
    actor: str = "knightwatch",
) -> JoinGrant:
    """Register ``name`` (if new) and return a one-time join token for it."""
    validate_node_name(name)
    node = session.get(Node, name)
    if node is None:
        node = Node(name=name, group_name=group, status=NodeStatus.PENDING, created_at=now)
        session.add(node)
        session.flush()  # the token row refers to the node row
    elif node.status == NodeStatus.RETIRED:
        raise InvalidInputError(
            f"node {name} is retired; its name is not reused",
            hint="enroll the machine under a new name",
        )
    token = secrets.token_urlsafe(32)
    expires = now + timedelta(seconds=ttl_s)
    session.add(
        JoinToken(token_hash=_digest(token), node_name=name, created_at=now, expires_at=expires)
    )
    auditlog.append(
        session,
        actor=actor,
        action="node.join-token",
        obj=name,
        at=now,
        payload={"group": node.group_name, "expires_at": expires.isoformat()},  # never the token
    )
    return JoinGrant(name, token, expires)


def enroll(session: Session, name: str, token: str, public_key: str, *, now: datetime) -> str:
    """Exchange a join token for a node credential; register the node's public key."""
    row = session.get(JoinToken, _digest(token))
    if row is None or row.node_name != name:
        raise AuthenticationError(f"join token is not valid for node {name}")
    if row.used_at is not None:
        raise AuthenticationError("join token was already used")
    if now >= row.expires_at:
        raise AuthenticationError(
            "join token has expired", hint=f"create a new one: knightwatch node enroll {name}"
        )
    try:
        public_key_from_text(public_key)
    except ValueError as exc:
        raise AuthenticationError(f"node public key refused: {exc}") from exc
    node = session.get(Node, name)
    assert node is not None  # foreign key
    if node.status == NodeStatus.RETIRED:
        raise AuthenticationError(f"node {name} is retired; its name is not reused")
    credential = secrets.token_urlsafe(32)
    row.used_at = now
    node.credential_hash = _digest(credential)
    node.public_key = public_key
    node.status = NodeStatus.ENROLLED
    node.enrolled_at = now
    node.last_seq = 0
    node_enrolled(session, node, at=now, actor=name)
    return credential


def authenticate(session: Session, name: str, credential: str) -> Node:
    """Return the enrolled node whose credential this is; raise if it is not."""
    node = session.get(Node, name) if _NAME.fullmatch(name or "") else None
    if node is None or node.credential_hash is None or node.status not in _CONNECTING:
        raise AuthenticationError(f"node {name!r} is not enrolled")
    if not hmac.compare_digest(node.credential_hash, _digest(credential)):
        raise AuthenticationError(f"credential does not belong to node {name}")
    return node
