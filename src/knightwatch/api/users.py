"""Operator API for people: who is calling, and (admins) users and their tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from knightwatch.api.auth import Operator
from knightwatch.api.plane import Plane
from knightwatch.control.users import (
    IssuedToken,
    Role,
    add_user,
    list_users,
    revoke_user,
    rotate_token,
)

__all__ = ["router"]

router = APIRouter(prefix="/api/v1")


class NewUserBody(BaseModel):
    """A user to add."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=200)]
    """Checked by the domain (control.users.check_user_name), which says what a name may be."""
    role: Role


@router.get("/me")
def whoami(request: Request) -> dict[str, str]:
    """The user this token belongs to, and its role."""
    user = request.state.user
    return {"name": user.name, "role": user.role.value}


@router.get("/users")
def users(plane: Plane, _who: Operator) -> list[dict[str, object]]:
    """Every user, revoked ones too (never a token)."""
    with plane.db.reading() as session:
        return [view.to_json() for view in list_users(session)]


@router.post("/users", status_code=201)
def new_user(body: NewUserBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Add a user; the answer holds its token, which is never shown again."""
    with plane.db.session() as session:
        issued = add_user(
            session, body.name, body.role, key=plane.users_key, by=who, at=plane.clock.now()
        )
    return _issued(issued)


@router.post("/users/{name}/rotate")
def rotate(name: str, plane: Plane, who: Operator) -> dict[str, Any]:
    """A new token for ``name``; the old one stops working at once."""
    with plane.db.session() as session:
        issued = rotate_token(session, name, key=plane.users_key, by=who, at=plane.clock.now())
    plane.users.forget_all()
    plane.web_sessions.close_user(name)  # signed in with the old token: sign in again
    return _issued(issued)


@router.post("/users/{name}/revoke")
def revoke(name: str, plane: Plane, who: Operator) -> dict[str, object]:
    """Revoke ``name``: its token stops working at once; the name is never reused."""
    with plane.db.session() as session:
        view = revoke_user(session, name, by=who, at=plane.clock.now())
    plane.users.forget_all()
    plane.web_sessions.close_user(name)
    return view.to_json()


def _issued(issued: IssuedToken) -> dict[str, Any]:
    return {"name": issued.name, "role": issued.role.value, "token": issued.token}
