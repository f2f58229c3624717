"""The flag registry: names unique forever, meanings fixed, retirement final.

A release's first push registers the flags it declares (:func:`declare_release_flags`);
a later release declaring a known name must mean the same by it, and may not
declare a retired one (:func:`declaration_refusals` finds every such problem,
so a push is refused with all of them before a byte of it is uploaded).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.bundle.manifest import Manifest
from knightwatch.bundle.spec import FlagSpec
from knightwatch.control import auditlog
from knightwatch.control.flags.model import (
    check_flag_name,
    encode_value,
    meaning_fingerprint,
    type_of,
    validate_value,
)
from knightwatch.errors import InvalidInputError, NotFoundError, PolicyRefusedError, Refusal
from knightwatch.store import Flag, FlagChange, Release, ReleaseFlag
from knightwatch.vocabulary import FlagChangeKind, FlagKind, FlagState

__all__ = [
    "amend_flag",
    "create_flag",
    "declaration_refusals",
    "declare_release_flags",
    "get_flag",
    "list_flags",
    "record_change",
    "refuse_declarations",
    "retire_flag",
]

MAX_REASON = 4096


def get_flag(session: Session, name: str) -> Flag:
    """The registered flag ``name``; NotFoundError if none is."""
    flag = session.get(Flag, check_flag_name(name))
    if flag is None:
        raise NotFoundError(
            f"no flag {name!r} is registered",
            hint="list flags with: knightwatch flags list",
        )
    return flag


def list_flags(session: Session, *, state: FlagState | None = None) -> list[Flag]:
    """Every registered flag (of ``state``), by name."""
    statement = select(Flag).order_by(Flag.name)
    if state is not None:
        statement = statement.where(Flag.state == state)
    return list(session.scalars(statement))


def declaration_refusals(session: Session, specs: Sequence[FlagSpec]) -> list[Refusal]:
    """Every reason the registry refuses a release declaring ``specs`` (empty: accepted)."""
    names = [spec.name for spec in specs]
    known = {f.name: f for f in session.scalars(select(Flag).where(Flag.name.in_(names)))}
    return [r for spec in specs if spec.name in known for r in _conflicts(known[spec.name], spec)]


def _conflicts(flag: Flag, spec: FlagSpec) -> Iterator[Refusal]:
    if flag.state == FlagState.RETIRED:
        when = flag.retired_at.date().isoformat() if flag.retired_at else "earlier"
        yield Refusal(
            check="flag-not-retired",
            reason=f"flag {flag.name} was retired on {when} by {flag.retired_by}"
            f" ({flag.retire_reason}); a retired name is never used again",
            subjects=(flag.name,),
            hint="remove the code that reads it, or give the new behaviour a new name",
        )
        return
    changed = _meaning_changes(flag, spec)
    if changed:
        yield Refusal(
            check="flag-meaning-fixed",
            reason=f"flag {flag.name} would change meaning ({', '.join(changed)}) "
            "— give the new behaviour a new name",
            subjects=(flag.name,),
            hint=f"a genuine wording fix: knightwatch flags amend {flag.name} "
            "--description TEXT --reason TEXT, then push again",
        )


def _meaning_changes(flag: Flag, spec: FlagSpec) -> list[str]:
    value_type = type_of(spec.default)
    changes = []
    if spec.kind != flag.kind:
        changes.append(f"kind {flag.kind} → {spec.kind}")
    if value_type != flag.value_type:
        changes.append(f"type {flag.value_type} → {value_type}")
    if spec.description != flag.description:
        changes.append("description differs")
    return changes


def refuse_declarations(session: Session, specs: Sequence[FlagSpec]) -> None:
    """Raise PolicyRefusedError (action ``push``) with every declaration problem, if any."""
    if refusals := declaration_refusals(session, specs):
        raise PolicyRefusedError("push", refusals)


def declare_release_flags(
    session: Session, release: Release, manifest: Manifest, *, at: datetime, actor: str
) -> list[str]:
    """Register ``release``'s declarations (new names first seen); return the new names.

    Checked again here, in the transaction that stores the release, so a flag
    retired while the release was uploading still refuses it.
    """
    specs = manifest.spec.flag
    refuse_declarations(session, specs)
    new = []
    for spec in specs:
        if session.get(Flag, spec.name) is None:
            _register(session, spec, release.digest, at=at, actor=actor)
            new.append(spec.name)
        session.add(ReleaseFlag(release_digest=release.digest, flag_name=spec.name))
    return new


def _register(
    session: Session, spec: FlagSpec, digest: str | None, *, at: datetime, actor: str
) -> Flag:
    value_type = type_of(spec.default)
    flag = Flag(
        name=spec.name,
        kind=spec.kind,
        value_type=value_type,
        description=spec.description,
        default_value=encode_value(spec.default),
        fingerprint=meaning_fingerprint(spec.kind, value_type, spec.description),
        first_release=digest,
        state=FlagState.ACTIVE,
        created_at=at,
        created_by=actor[:255],
    )
    session.add(flag)
    session.flush()
    kind = FlagChangeKind.DECLARE if digest else FlagChangeKind.CREATE
    detail = f"declared by release {digest[:12]}" if digest else "created by hand"
    record_change(session, flag.name, kind, at=at, actor=actor, reason=detail)
    return flag


def create_flag(
    session: Session,
    *,
    name: str,
    kind: FlagKind,
    description: str,
    default: object,
    owner: str | None,
    lifetime_days: int | None,
    at: datetime,
    actor: str,
) -> Flag:
    """Register a flag ahead of the release that will read it; refuse a name ever used."""
    check_flag_name(name)
    existing = session.get(Flag, name)
    if existing is not None:
        raise InvalidInputError(
            _taken(existing), hint="give the new behaviour a new name (names are never reused)"
        )
    if not description.strip() or len(description) > 4096:
        raise InvalidInputError("a flag's description is 1-4096 characters")
    if not isinstance(default, bool | int | float | str):
        raise InvalidInputError("a flag's default is a boolean, integer, float or string")
    validate_value(default, type_of(default), where="default")
    spec = FlagSpec(name=name, kind=kind.value, description=description, default=default)
    flag = _register(session, spec, None, at=at, actor=actor)
    flag.owner, flag.lifetime_days = owner, lifetime_days
    return flag


def _taken(flag: Flag) -> str:
    if flag.state == FlagState.RETIRED:
        when = flag.retired_at.date().isoformat() if flag.retired_at else "earlier"
        return (
            f"flag {flag.name} was retired on {when} ({flag.retire_reason}); "
            "names are reserved forever"
        )
    return f"flag {flag.name} already exists"


def amend_flag(
    session: Session, name: str, *, description: str, reason: str, at: datetime, actor: str
) -> Flag:
    """Fix a flag's wording, recorded with a reason; the new text is its meaning from now on."""
    flag = get_flag(session, name)
    _require_reason(reason)
    if flag.state == FlagState.RETIRED:
        raise InvalidInputError(f"flag {name} is retired; a retired flag is never amended")
    if not description.strip() or len(description) > 4096:
        raise InvalidInputError("a flag's description is 1-4096 characters")
    old = flag.description
    flag.description = description
    flag.fingerprint = meaning_fingerprint(flag.kind, flag.value_type, description)
    record_change(
        session,
        name,
        FlagChangeKind.AMEND,
        at=at,
        actor=actor,
        reason=reason,
        old=json.dumps(old),
        new=json.dumps(description),
    )
    return flag


def retire_flag(session: Session, name: str, *, reason: str, at: datetime, actor: str) -> Flag:
    """Retire ``name`` for ever: it keeps no value and is never declared or created again."""
    flag = get_flag(session, name)
    _require_reason(reason)
    if flag.state == FlagState.RETIRED:
        raise InvalidInputError(f"flag {name} is already retired ({flag.retire_reason})")
    flag.state, flag.retired_at, flag.retired_by, flag.retire_reason = (
        FlagState.RETIRED,
        at,
        actor[:255],
        reason,
    )
    record_change(session, name, FlagChangeKind.RETIRE, at=at, actor=actor, reason=reason)
    return flag


def _require_reason(reason: str) -> None:
    if not reason.strip() or len(reason) > MAX_REASON:
        raise InvalidInputError(
            "a reason is required (1-4096 characters)", hint='add --reason "why"'
        )


def record_change(
    session: Session,
    name: str,
    kind: FlagChangeKind,
    *,
    at: datetime,
    actor: str,
    reason: str = "",
    scope: str | None = None,
    old: str | None = None,
    new: str | None = None,
    version: int | None = None,
    targets: Sequence[str] = (),
) -> FlagChange:
    """Record one event of flag ``name`` (flushed, so it has its id)."""
    row = FlagChange(
        flag_name=name,
        kind=kind,
        at=at,
        actor=actor[:255],
        reason=reason,
        scope=scope,
        old_value=old,
        new_value=new,
        version=version,
        targets=json.dumps(sorted(targets)),
    )
    session.add(row)
    session.flush()
    auditlog.append(
        session,
        actor=actor,
        action=f"flag.{kind}",
        obj=name,
        at=at,
        payload={
            "scope": scope,
            "old": None if old is None else json.loads(old),
            "new": None if new is None else json.loads(new),
            "version": version,
            "targets": sorted(targets),
            "reason": reason,
        },
    )
    return row
