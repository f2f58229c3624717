"""The control plane's background loop: what happens when no request arrives.

Every ``TICK_S`` the orchestrator expires deadlines, the fleet guards run
(and halt the fleet when one fires) and abandoned uploads are deleted; every
``CONDITIONS_EVERY_TICKS`` ticks the fleet's conditions are recorded.
"""

from __future__ import annotations

import asyncio
import logging

from knightwatch.control.fleet import record_fleet_conditions
from knightwatch.server.plane import ControlPlane

__all__ = ["CONDITIONS_EVERY_TICKS", "TICK_S", "tick_forever"]

log = logging.getLogger("knightwatch.server")
TICK_S = 0.2
UPLOAD_SWEEP_S = 60.0
CONDITIONS_EVERY_TICKS = 5


async def tick_forever(plane: ControlPlane) -> None:
    """Drive deadlines, fleet guards, condition records and upload expiry, forever."""
    ticks = 0
    while True:
        await asyncio.sleep(TICK_S)
        await plane.in_store(lambda: _tick(plane))
        ticks += 1
        if ticks % CONDITIONS_EVERY_TICKS == 0:
            await plane.in_store(lambda: _record_conditions(plane))


def _record_conditions(plane: ControlPlane) -> None:
    """The safety net of the change points: any change they missed is recorded within a second."""
    try:
        with plane.db.session() as session:
            record_fleet_conditions(session, plane.clock.now())
    except Exception:
        log.exception("recording the fleet's conditions failed")


def _tick(plane: ControlPlane) -> None:
    try:
        plane.orchestrator.tick()
    except Exception:
        log.exception("orchestrator tick failed")
    try:
        for halt in plane.fleet_guards.tick(plane.db, plane.clock):
            plane.halt(None, halt.reason, halt.requested_by)
    except Exception:
        log.exception("fleet guards failed")
    try:
        _sweep_uploads(plane)
    except Exception:
        log.exception("expiring abandoned uploads failed")
    try:
        _checkpoint(plane)
    except Exception:
        log.exception("writing an audit-log checkpoint failed")


def _checkpoint(plane: ControlPlane) -> None:
    """Sign the audit log's head every ``audit_checkpoint_s`` while it grows."""
    now = plane.clock.monotonic()
    if now < plane.next_checkpoint:
        return
    plane.next_checkpoint = now + plane.settings.audit_checkpoint_s
    plane.checkpoint()


def _sweep_uploads(plane: ControlPlane) -> None:
    """Delete uploads idle for ``upload_expiry_s``, looking every tenth of that (60 s at most)."""
    now = plane.clock.monotonic()
    if now < plane.next_upload_sweep:
        return
    expiry = plane.settings.upload_expiry_s
    plane.next_upload_sweep = now + min(UPLOAD_SWEEP_S, expiry / 10)
    for upload_id in plane.catalog.expire_uploads(expiry):
        log.warning("upload %s abandoned for %.0f s: deleted", upload_id, expiry)
