"""Who is calling: the operator's bearer token, or an enrolled node's credential."""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Header, Request

from knightwatch.api.plane import Plane
from knightwatch.control.enrollment import AuthenticationError, authenticate
from knightwatch.server.plane import ControlPlane

__all__ = [
    "Operator",
    "agent_from_headers",
    "check_operator_token",
    "node_from_headers",
    "operator_name",
]

_ACTOR = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


def operator_name(
    request: Request, plane: Plane, x_knightwatch_actor: Annotated[str | None, Header()] = None
) -> str:
    """Check the operator token; return who the operator says they are."""
    check_operator_token(plane, request.headers)
    if x_knightwatch_actor and _ACTOR.fullmatch(x_knightwatch_actor):
        return x_knightwatch_actor
    return "operator"


Operator = Annotated[str, Depends(operator_name)]


def check_operator_token(plane: ControlPlane, headers: Mapping[str, str]) -> None:
    """Refuse a request that does not carry the operator's bearer token."""
    token = _bearer(headers.get("authorization"))
    if token is None or not hmac.compare_digest(
        token.encode("utf-8", "surrogateescape"), plane.operator_token.encode("utf-8")
    ):
        raise AuthenticationError(
            "operator token missing or wrong",
            hint="set KNIGHTWATCH_TOKEN (see DATA/operator.token)",
        )


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
