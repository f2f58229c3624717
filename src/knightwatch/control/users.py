"""People who call the operator API: each has a name, one role and one token.

A token is shown once, when it is issued; the store keeps only an HMAC of it
under the server's own key (DATA/users.key), so a copy of the database alone
cannot be turned back into tokens, nor checked against guesses offline.
Roles are ordered: each allows everything the ones below it allow.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from knightwatch.control import auditlog
from knightwatch.errors import InvalidInputError, KnightwatchError, NotFoundError
from knightwatch.store import User
from knightwatch.vocabulary import Role

__all__ = [
    "IssuedToken",
    "PermissionDeniedError",
    "Role",
    "UserExistsError",
    "UserView",
    "add_user",
    "adopt_token",
    "check_user_name",
    "find_user",
    "first_admin",
    "list_users",
    "new_token",
    "revoke_user",
    "rotate_token",
    "token_hash",
]

TOKEN_PREFIX = "kwu_"  # noqa: S105 - says what a token is; not a secret
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class PermissionDeniedError(KnightwatchError):
    """An authenticated user asked for something their role does not allow."""

    exit_code = 2


class UserExistsError(InvalidInputError):
    """A user name is taken (names are never reused, even after a revoke)."""


@dataclass(frozen=True)
class IssuedToken:
    """A freshly issued token: shown to its user exactly once."""

    name: str
    role: Role
    token: str


@dataclass(frozen=True)
class UserView:
    """A user as listed: never the token or its hash."""

    name: str
    role: Role
    created_at: datetime
    created_by: str
    rotated_at: datetime | None
    revoked_at: datetime | None

    def to_json(self) -> dict[str, object]:
        """The JSON form of the API and ``--json``."""
        return {
            "name": self.name,
            "role": self.role.value,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "rotated_at": self.rotated_at.isoformat() if self.rotated_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "active": self.revoked_at is None,
        }


def new_token() -> str:
    """A new user token: a prefix that says what it is, then 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(key: bytes, token: str) -> str:
    """The HMAC-SHA256 of ``token`` under the server's user key, as stored."""
    return hmac.new(key, token.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def check_user_name(name: str) -> str:
    """Return ``name`` if it can name a user; refuse it, saying why, otherwise."""
    if not _NAME.fullmatch(name):
        raise InvalidInputError(
            f"{name[:80]!r} is not a user name",
            hint="1-64 characters: letters, digits and . _ @ -, starting with a letter or digit",
        )
    return name


def find_user(session: Session, key: bytes, token: str) -> User | None:
    """The active user whose token this is, or None."""
    user = session.scalar(select(User).where(User.token_hash == token_hash(key, token)))
    return user if user is not None and user.revoked_at is None else None


def list_users(session: Session) -> list[UserView]:
    """Every user, revoked ones too, by name."""
    return [_view(user) for user in session.scalars(select(User).order_by(User.name))]


def add_user(
    session: Session, name: str, role: Role, *, key: bytes, by: str, at: datetime
) -> IssuedToken:
    """Create user ``name`` with ``role`` and a new token (recorded in the audit log)."""
    check_user_name(name)
    existing = session.get(User, name)
    if existing is not None:
        state = "revoked" if existing.revoked_at is not None else "active"
        raise UserExistsError(
            f"user {name} already exists ({state}, role {existing.role})",
            hint="user names are never reused; pick another, or `knightwatch user rotate` "
            "for a new token",
        )
    issued = _issue(session, name, role, key=key, by=by, at=at)
    auditlog.append(
        session, actor=by, action="user.added", obj=name, at=at, payload={"role": role.value}
    )
    return issued


def first_admin(session: Session, name: str, *, key: bytes, at: datetime) -> IssuedToken:
    """Create the first user, an admin, on a control plane that has none."""
    if session.scalar(select(func.count()).select_from(User)):
        raise UserExistsError(
            "this control plane already has users",
            hint="an admin adds more with `knightwatch user add NAME --role ROLE`",
        )
    check_user_name(name)
    issued = _issue(session, name, Role.ADMIN, key=key, by="init", at=at)
    auditlog.append(
        session, actor="init", action="user.init", obj=name, at=at, payload={"role": "admin"}
    )
    return issued


def adopt_token(session: Session, token: str, *, key: bytes, at: datetime) -> str | None:
    """Make an earlier version's shared operator token the token of admin ``admin``.

    Only on a control plane with no users yet; returns the new user's name, or
    None when there was nothing to do.
    """
    if session.scalar(select(func.count()).select_from(User)):
        return None
    session.add(
        User(
            name="admin",
            role=Role.ADMIN.value,
            token_hash=token_hash(key, token),
            created_at=at,
            created_by="upgrade",
        )
    )
    auditlog.append(
        session,
        actor="upgrade",
        action="user.added",
        obj="admin",
        at=at,
        payload={"role": "admin", "from": "the shared operator token"},
    )
    return "admin"


def rotate_token(session: Session, name: str, *, key: bytes, by: str, at: datetime) -> IssuedToken:
    """Give ``name`` a new token; the old one stops working at once."""
    user = _active(session, name)
    token = new_token()
    user.token_hash = token_hash(key, token)
    user.rotated_at = at
    auditlog.append(session, actor=by, action="user.rotated", obj=name, at=at)
    return IssuedToken(user.name, Role(user.role), token)


def revoke_user(session: Session, name: str, *, by: str, at: datetime) -> UserView:
    """Revoke ``name``: its token stops working; the name stays taken."""
    user = _active(session, name)
    if user.role == Role.ADMIN and _active_admins(session) <= 1:
        raise InvalidInputError(
            f"user {name} is the last active admin: revoking it would leave nobody to add users",
            hint="add another admin first (`knightwatch user add NAME --role admin`)",
        )
    user.revoked_at = at
    auditlog.append(session, actor=by, action="user.revoked", obj=name, at=at)
    return _view(user)


def _issue(
    session: Session, name: str, role: Role, *, key: bytes, by: str, at: datetime
) -> IssuedToken:
    token = new_token()
    session.add(
        User(
            name=name,
            role=role.value,
            token_hash=token_hash(key, token),
            created_at=at,
            created_by=by,
        )
    )
    session.flush()
    return IssuedToken(name, role, token)


def _active(session: Session, name: str) -> User:
    user = session.get(User, name)
    if user is None:
        raise NotFoundError(f"no user named {name}", hint="`knightwatch user list` shows them")
    if user.revoked_at is not None:
        raise InvalidInputError(f"user {name} was revoked at {user.revoked_at.isoformat()}")
    return user


def _active_admins(session: Session) -> int:
    query = select(func.count()).where(User.role == Role.ADMIN.value, User.revoked_at.is_(None))
    return int(session.scalar(query) or 0)


def _view(user: User) -> UserView:
    return UserView(
        name=user.name,
        role=Role(user.role),
        created_at=user.created_at,
        created_by=user.created_by,
        rotated_at=user.rotated_at,
        revoked_at=user.revoked_at,
    )
