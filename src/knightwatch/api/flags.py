"""Operator API for feature flags: the registry, values per scope, their record, staleness.

Setting a value goes through the safety policy (409 with every refusal);
the change is stored first, then each node in scope is sent its values; with
``wait_s`` the answer comes once every node acknowledged, or lists who has not.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from knightwatch.api.auth import Operator
from knightwatch.api.changes import answer
from knightwatch.api.fields import FlagValue as Value
from knightwatch.api.fields import IdPath, NamePath, SafeLine, SafeText, WaitSeconds
from knightwatch.api.plane import Plane
from knightwatch.control.changes import ChangeKind
from knightwatch.control.flags.registry import amend_flag, create_flag, get_flag, retire_flag
from knightwatch.control.flags.views import (
    flag_history,
    flag_json,
    list_flag_rows,
    stale_flags,
)
from knightwatch.server.changes import flag_change, submit
from knightwatch.vocabulary import FlagKind

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/flags")

Reason = Annotated[str, Field(min_length=1, max_length=4096), SafeText]
Description = Annotated[str, Field(min_length=1, max_length=4096), SafeText]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateBody(_Body):
    """A flag registered by hand, ahead of the release that reads it."""

    name: Annotated[str, Field(min_length=1, max_length=127)]
    kind: FlagKind
    description: Description
    default: Value
    owner: Annotated[str, Field(min_length=1, max_length=255), SafeLine] | None = None
    lifetime_days: Annotated[int, Field(ge=1, le=36500)] | None = None


class SetBody(_Body):
    """A value for a scope (``value`` null: remove the scope's value)."""

    scope: Annotated[str, Field(min_length=1, max_length=80)] = "fleet"
    value: Value | None
    reason: Annotated[str, Field(max_length=4096), SafeText] = ""


class AmendBody(_Body):
    """A corrected description, and why."""

    description: Description
    reason: Reason


class RetireBody(_Body):
    """Why the flag is retired."""

    reason: Reason


@router.get("")
def list_all(plane: Plane, _who: Operator) -> list[dict[str, Any]]:
    """Every flag, with its values per scope."""
    with plane.db.reading() as session:
        return list_flag_rows(session)


@router.post("", status_code=201)
def create(body: CreateBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Register a flag by hand; a name ever used (even retired) is refused."""
    with plane.db.session() as session:
        flag = create_flag(
            session,
            name=body.name,
            kind=body.kind,
            description=body.description,
            default=body.default,
            owner=body.owner,
            lifetime_days=body.lifetime_days,
            at=plane.clock.now(),
            actor=who,
        )
        return flag_json(session, flag)


@router.get("/stale")
def stale(
    plane: Plane, _who: Operator, days: Annotated[int, Query(ge=0, le=36500)] = 30
) -> list[dict[str, Any]]:
    """Flags to clean up: past their lifetime, constant for ``days``, unread, never evaluated."""
    with plane.db.reading() as session:
        return stale_flags(
            session, plane.clock.now(), constant_days=days, lifetimes=plane.settings.flag_lifetimes
        )


@router.get("/history")
def history_all(plane: Plane, _who: Operator) -> list[dict[str, Any]]:
    """Every flag's recorded changes, newest first."""
    with plane.db.reading() as session:
        return flag_history(session, None)


@router.get("/changes/{change_id}")
def show_change(
    change_id: IdPath,
    plane: Plane,
    _who: Operator,
    wait_s: WaitSeconds = 0.0,
) -> dict[str, Any]:
    """One change and its acknowledgements; with ``wait_s``, once all are in (or time is up)."""
    deadline = time.monotonic() + wait_s
    seen = plane.flag_acks.version
    while (data := flag_change(plane, change_id))["missing"] and (
        left := deadline - time.monotonic()
    ) > 0:
        seen = plane.flag_acks.wait(seen, left)
    return data


@router.get("/{name}")
def show(name: NamePath, plane: Plane, _who: Operator) -> dict[str, Any]:
    """One flag: meaning, lifecycle, values, evaluations, the releases that declare it."""
    with plane.db.reading() as session:
        return flag_json(session, get_flag(session, name), detail=True)


@router.get("/{name}/history")
def history(name: NamePath, plane: Plane, _who: Operator) -> list[dict[str, Any]]:
    """The flag's recorded changes, newest first."""
    with plane.db.reading() as session:
        return flag_history(session, name)


@router.post("/{name}/values", status_code=201)
def set_value(
    name: NamePath,
    body: SetBody,
    response: Response,
    plane: Plane,
    who: Operator,
    wait_s: WaitSeconds = 0.0,
) -> dict[str, Any]:
    """Propose setting (or unsetting) the flag in a scope; once it runs, wait for the acks."""
    target = {"flag": name, "scope": body.scope, "value": body.value, "reason": body.reason}
    reason = body.reason or f"set {name} in {body.scope}"
    submitted = submit(plane, ChangeKind.FLAG_SET, target, reason, who)
    if submitted.result is None:
        return answer(submitted, response, {})
    return answer(submitted, response, show_change(submitted.result["id"], plane, who, wait_s))


@router.post("/{name}/amend")
def amend(name: NamePath, body: AmendBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Correct a flag's wording, recorded with a reason."""
    with plane.db.session() as session:
        flag = amend_flag(
            session,
            name,
            description=body.description,
            reason=body.reason,
            at=plane.clock.now(),
            actor=who,
        )
        return flag_json(session, flag)


@router.post("/{name}/retire")
def retire(name: NamePath, body: RetireBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Retire the flag for ever (its name stays reserved)."""
    with plane.db.session() as session:
        flag = retire_flag(session, name, reason=body.reason, at=plane.clock.now(), actor=who)
        return flag_json(session, flag)
