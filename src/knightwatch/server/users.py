"""The server side of users: its token key, recently checked tokens, the upgrade path.

DATA/users.key is the HMAC key user tokens are stored under. It is made
once (by ``knightwatch init`` or the server, whichever comes first) and
never leaves the data directory.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from knightwatch.clock import Clock
from knightwatch.control.users import IssuedToken, Role, adopt_token, first_admin
from knightwatch.errors import KeyFileError
from knightwatch.server.settings import ServerSettings
from knightwatch.store import Database, User, open_database

__all__ = [
    "KnownUser",
    "UserCache",
    "adopt_operator_token",
    "initialize",
    "load_users_key",
]

log = logging.getLogger("knightwatch.server")
KEY_BYTES = 32


@dataclass(frozen=True)
class KnownUser:
    """An authenticated caller of the operator API."""

    name: str
    role: Role


def load_users_key(data_dir: Path) -> bytes:
    """DATA/users.key, made (0600, written before it is used) when it does not exist."""
    path = data_dir / "users.key"
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        temporary = path.with_name(f".users.key.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # never replaces a key another process just made
        except FileExistsError:
            key = path.read_bytes()
        finally:
            temporary.unlink()
    if len(key) != KEY_BYTES:
        raise KeyFileError(
            f"{path} is not a user token key ({len(key)} bytes, not {KEY_BYTES})",
            hint="restore it from a backup: without it no user token can be checked",
        )
    return key


class UserCache:
    """Recently authenticated tokens (by HMAC), trusted for ``ttl_s`` seconds.

    A revoke or rotate on this server forgets everything at once; another
    control plane on the same database sees it within ``ttl_s``.
    """

    def __init__(self, ttl_s: float = 5.0) -> None:
        self._ttl_s = ttl_s
        self._known: dict[str, tuple[KnownUser, float]] = {}

    def get(self, digest: str, now: float) -> KnownUser | None:
        """The user holding the token with this HMAC, if checked recently."""
        entry = self._known.get(digest)
        if entry is None or now - entry[1] > self._ttl_s:
            return None
        return entry[0]

    def remember(self, digest: str, user: KnownUser, now: float) -> None:
        """Record a token just checked against the store."""
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[digest] = (user, now)

    def forget_all(self) -> None:
        """Drop every cached token (a user was revoked or rotated)."""
        self._known.clear()


def adopt_operator_token(
    db: Database, data_dir: Path, configured: str | None, key: bytes, clock: Clock
) -> None:
    """Turn an earlier version's shared operator token into admin ``admin``, once.

    The token (KNIGHTWATCH_OPERATOR_TOKEN, or DATA/operator.token) keeps
    working, now as a user's; the file is removed so nothing else reads it.
    """
    path = data_dir / "operator.token"
    token = configured or (path.read_text().strip() if path.exists() else None)
    if not token:
        _warn_if_nobody(db, data_dir)
        return
    with db.session() as session:
        adopted = adopt_token(session, token, key=key, at=clock.now())
    if adopted is not None:
        print(
            f"knightwatch: the shared operator token is now the token of admin user "
            f"{adopted!r} (the same token keeps working); add a user per person with "
            "`knightwatch user add NAME --role ROLE`",
            file=sys.stderr,
        )
        log.warning("upgrade: the shared operator token became admin user %s", adopted)
    if path.exists():
        path.unlink()


def initialize(settings: ServerSettings, name: str, clock: Clock) -> IssuedToken:
    """Create the first admin of the control plane ``settings`` describe (its store, its key).

    What ``knightwatch init`` does, next to the server's data, before or
    while the server runs: with no user, the server refuses every operator call.
    """
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    url = settings.database_url.reveal() if settings.database_url else None
    db = open_database(url, settings.data_dir)
    try:
        key = load_users_key(settings.data_dir)
        with db.session() as session:
            return first_admin(session, name, key=key, at=clock.now())
    finally:
        db.close()


def _warn_if_nobody(db: Database, data_dir: Path) -> None:
    with db.reading() as session:
        if session.scalar(select(func.count()).select_from(User)):
            return
    log.warning(
        "no users yet: every operator call is refused until `knightwatch init --data %s` "
        "creates the first admin",
        data_dir,
    )
