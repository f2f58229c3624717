"""Operator API for the kill switch: halt (fleet-wide or scoped), inspect, re-arm.

The halt is recorded in the store first (in a worker thread), then the one
``Halt`` message is queued on every selected, connected agent's WebSocket in
a single pass on the event loop — no store work between two sends.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from knightwatch.api.auth import Operator
from knightwatch.api.changes import answer
from knightwatch.api.fields import IdPath, NodeSelector, SafeText, WaitSeconds
from knightwatch.api.plane import Plane
from knightwatch.api.responses import json_document
from knightwatch.control.changes import ChangeKind
from knightwatch.control.halt_views import halt_report, list_halts, unacknowledged_count
from knightwatch.control.killswitch import MAX_REASON
from knightwatch.server.changes import submit
from knightwatch.server.plane import ControlPlane

__all__ = ["router"]

router = APIRouter(prefix="/api/v1")


class HaltBody(BaseModel):
    """Which nodes to halt (a selector; the whole fleet when absent) and why."""

    model_config = ConfigDict(extra="forbid")
    nodes: Annotated[NodeSelector, Field(min_length=1, max_length=4096)] | None = None
    reason: Annotated[str, Field(min_length=1, max_length=MAX_REASON), SafeText]


@router.post("/halts", status_code=201)
async def create_halt(body: HaltBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Halt the selected nodes now and latch it; the answer is the halt report as sent."""
    plan = await run_in_threadpool(plane.record_halt, body.nodes, body.reason, who)
    plane.send_halt(plan)
    return await run_in_threadpool(_report, plane, plan.halt_id)


@router.get("/halts")
def halts(
    plane: Plane, _who: Operator, active: bool | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Halts, newest first (``active=true``: only those not lifted)."""
    with plane.db.reading() as session:
        return list_halts(session, active=active, limit=limit)


_GATHER_S = 0.01
"""After an acknowledgement, wait this long for more before counting: a fleet's
acks arrive together, and one count per ack would cost the server more than them."""


@router.get("/halts/{halt_id}")
def show_halt(
    halt_id: IdPath,
    plane: Plane,
    _who: Operator,
    wait_s: WaitSeconds = 0.0,
) -> Response:
    """One halt: every node's acknowledgement and time to halt, as of now.

    With ``wait_s``, answer as soon as every node has acknowledged, or after
    ``wait_s`` seconds with whatever has come in (a long poll: the request
    sleeps until an acknowledgement is stored, it does not poll the store).
    """
    deadline = time.monotonic() + wait_s
    seen = plane.halt_acks.version
    while (left := deadline - time.monotonic()) > 0 and _waiting(plane, halt_id):
        seen = plane.halt_acks.wait(seen, left)
        time.sleep(min(_GATHER_S, max(0.0, deadline - time.monotonic())))
    return json_document(_report(plane, halt_id))


class RearmBody(HaltBody):
    """Which nodes to re-arm and why; ``emergency``: one person, reviewed afterwards."""

    emergency: bool = False


@router.post("/rearm", status_code=201)
def rearm(body: RearmBody, response: Response, plane: Plane, who: Operator) -> dict[str, Any]:
    """Propose lifting the halts of the selected nodes; each starts its service again."""
    target = {"nodes": body.nodes, "reason": body.reason}
    submitted = submit(plane, ChangeKind.REARM, target, body.reason, who, emergency=body.emergency)
    return answer(submitted, response, submitted.result or {})


def _waiting(plane: ControlPlane, halt_id: int) -> bool:
    with plane.db.reading() as session:
        return unacknowledged_count(session, halt_id) > 0


def _report(plane: ControlPlane, halt_id: int) -> dict[str, Any]:
    with plane.db.reading() as session:  # polled while acks are written: never wait for them
        return halt_report(session, halt_id).to_json()
