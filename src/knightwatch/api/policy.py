"""Operator API for the safety policy's dry run: what would refuse an action now."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from knightwatch.api.auth import Operator
from knightwatch.api.fields import FlagValue as Value
from knightwatch.api.fields import NamePath, NodeSelector, SafeLine
from knightwatch.api.plane import Plane
from knightwatch.control.flags.values import dry_run_flag_set
from knightwatch.control.policy import Action, dry_run, parse_action
from knightwatch.errors import InvalidInputError

__all__ = ["router"]

router = APIRouter(prefix="/api/v1")


class CheckBody(BaseModel):
    """The action's arguments: a release (deploy, retire), a selector (deploy, rearm), a node."""

    model_config = ConfigDict(extra="forbid")

    release: Annotated[str, Field(min_length=1, max_length=300), SafeLine] | None = None
    nodes: Annotated[NodeSelector, Field(min_length=1, max_length=4096)] | None = None
    node: Annotated[str, Field(min_length=1, max_length=300), SafeLine] | None = None
    flag: Annotated[str, Field(min_length=1, max_length=127)] | None = None
    """flag-set: the flag, its scope and the value."""
    scope: Annotated[str, Field(min_length=1, max_length=80)] = "fleet"
    value: Value | None = None


@router.post("/check/{action}")
def check_action(action: NamePath, body: CheckBody, plane: Plane, _who: Operator) -> dict[str, Any]:
    """Evaluate the safety policy for ``action`` without taking it; list every refusal."""
    known = parse_action(action)
    with plane.db.reading() as session:
        if known in (Action.FLAG_SET, Action.FLAG_SAFE):
            refusals = dry_run_flag_set(session, _flag_of(body), body.scope, body.value)
        else:
            refusals = dry_run(
                session, known, release=body.release, nodes=body.nodes, node=body.node
            )
    return {
        "action": known.value,
        "refused": bool(refusals),
        "refusals": [r.to_json() for r in refusals],
    }


def _flag_of(body: CheckBody) -> str:
    if body.flag is None:
        raise InvalidInputError(
            "flag-set needs a flag", hint="e.g. knightwatch check flag-set --flag rlp --value true"
        )
    return body.flag
