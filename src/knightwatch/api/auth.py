"""Who is calling: the operator's bearer token, or an enrolled node's credential."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request

from knightwatch.api.roles import required_role
from knightwatch.control.enrollment import AuthenticationError, authenticate
from knightwatch.control.users import PermissionDeniedError, Role, find_user, token_hash
from knightwatch.server.plane import ControlPlane
from knightwatch.server.users import KnownUser

__all__ = [
    "Operator",
    "agent_from_headers",
    "authorize_operator",
    "node_from_headers",
    "operator_name",
]


def operator_name(request: Request) -> str:
    """The authenticated user calling this route (the request gate put it there)."""
    user = getattr(request.state, "user", None)
    if not isinstance(user, KnownUser):
        raise AuthenticationError("operator token missing or wrong", hint=_TOKEN_HINT)
    return user.name


Operator = Annotated[str, Depends(operator_name)]

_TOKEN_HINT = (
    "set KNIGHTWATCH_TOKEN to your user token (an admin issues one with "  # noqa: S105
    "`knightwatch user add`; the first comes from `knightwatch init`)"
)


async def authorize_operator(
    plane: ControlPlane, headers: Mapping[str, str], method: str, path: str
) -> KnownUser:
    """The user whose token ``headers`` carry, if their role allows ``method path``.

    Checked against recently authenticated tokens first; a miss reads the store
    from a worker thread (never the store thread, so a kill never queues behind
    agent reports, and never the event loop).
    """
    token = _bearer(headers.get("authorization"))
    if token is None:
        raise AuthenticationError(
            "operator token missing (Authorization: Bearer …)", hint=_TOKEN_HINT
        )
    digest = token_hash(plane.users_key, token)
    user = plane.users.get(digest, plane.clock.monotonic())
    if user is None:
        user = await asyncio.to_thread(_user_from_store, plane, token)
        plane.users.remember(digest, user, plane.clock.monotonic())
    needed = required_role(method, path)
    if not user.role.allows(needed):
        raise PermissionDeniedError(
            f"user {user.name} has the role {user.role}; {method} {path} needs {needed} or above",
            hint="an admin can change who may do what (`knightwatch user add NAME --role ROLE`)",
        )
    return user


def _user_from_store(plane: ControlPlane, token: str) -> KnownUser:
    with plane.db.reading() as session:
        user = find_user(session, plane.users_key, token)
        if user is None:
            raise AuthenticationError("operator token wrong or revoked", hint=_TOKEN_HINT)
        return KnownUser(user.name, Role(user.role))


def node_from_headers(plane: ControlPlane, headers: Mapping[str, str]) -> str:
    """Authenticate an agent by its node name and credential headers; return the name.

    Checked against an in-memory copy of the node's credential hash (refreshed
    from the store on a miss or a mismatch, and every few seconds), so blob
    downloads do not cost a database transaction each.
    """
    name, credential = _presented(headers)
    if plane.credentials.matches(name, credential, plane.clock.monotonic()):
        return name
    with plane.db.session() as session:
        node = authenticate(session, name, credential)
        plane.credentials.remember(node.name, node.credential_hash or "", plane.clock.monotonic())
        return node.name


async def agent_from_headers(plane: ControlPlane, headers: Mapping[str, str]) -> str:
    """:func:`node_from_headers` for code on the event loop: a miss asks the store thread.

    On SQLite every transaction waits for the write lock, so the loop itself
    must never open one: it would stop answering every agent meanwhile.
    """
    name, credential = _presented(headers)
    if plane.credentials.matches(name, credential, plane.clock.monotonic()):
        return name
    return await plane.in_store(functools.partial(node_from_headers, plane, headers))


def _presented(headers: Mapping[str, str]) -> tuple[str, str]:
    """The node name and credential an agent presents; refused when the credential is absent."""
    credential = _bearer(headers.get("authorization"))
    if credential is None:
        raise AuthenticationError("agent credential missing (Authorization: Bearer …)")
    return headers.get("x-knightwatch-node", ""), credential


def _bearer(value: str | None) -> str | None:
    if not value or not value.startswith("Bearer "):
        return None
    return value.removeprefix("Bearer ").strip() or None
