"""Composition root of the control plane: settings in, ASGI app out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import FastAPI

from knightwatch import __version__
from knightwatch.api.credentials import CredentialCache
from knightwatch.api.documents import ReleaseDocuments
from knightwatch.api.errors import install_error_handlers
from knightwatch.api.hub import AgentHub
from knightwatch.api.signals import ChangeSignal
from knightwatch.bundle.signing import TrustedKey, load_trusted_key
from knightwatch.clock import Clock, SystemClock
from knightwatch.control.deploy import DeployTimeouts, Orchestrator
from knightwatch.control.fleet import record_fleet_conditions
from knightwatch.control.guards import FleetGuards
from knightwatch.control.releases import ReleaseCatalog
from knightwatch.settings import ServerSettings
from knightwatch.store import Database, open_database

__all__ = ["ControlPlane", "create_app"]

T = TypeVar("T")

log = logging.getLogger("knightwatch.server")
TICK_S = 0.2
UPLOAD_SWEEP_S = 60.0
CONDITIONS_EVERY_TICKS = 5
HaltNow = Callable[["ControlPlane", str | None, str, str], object]
"""Records and sends a halt (selector, reason, requested_by): api.killswitch.halt_now."""


@dataclass
class ControlPlane:
    """Everything a running control plane holds, wired together once."""

    settings: ServerSettings
    db: Database
    clock: Clock
    hub: AgentHub
    catalog: ReleaseCatalog
    orchestrator: Orchestrator
    operator_token: str
    trusted: list[TrustedKey]
    credentials: CredentialCache
    fleet_guards: FleetGuards
    documents: ReleaseDocuments
    store_worker: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="store")
    )
    """One thread for the agent sessions' and the tick's store work, in arrival order."""
    halt_acks: ChangeSignal = field(default_factory=ChangeSignal)
    """Bumped when a halt acknowledgement was stored (``GET /halts/{id}?wait_s=``)."""
    next_upload_sweep: float = 0.0
    """When (``clock.monotonic``) the tick next deletes abandoned uploads."""

    async def in_store(self, work: Callable[[], T]) -> T:
        """Run ``work`` (store transactions) on the store thread, keeping the event loop free.

        The loop must answer every agent's pings and carry halts at once; one
        agent's report may cost a transaction and an fsync. One thread keeps
        this work in order, as it was on the loop, without ever blocking it.
        """
        return await asyncio.get_running_loop().run_in_executor(self.store_worker, work)

    @classmethod
    def open(cls, settings: ServerSettings, clock: Clock | None = None) -> ControlPlane:
        """Open the store (migrating it), load keys and tokens, build the services."""
        clock = clock or SystemClock()
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # private if ours
        url = settings.database_url.reveal() if settings.database_url else None
        db = open_database(url, settings.data_dir)
        trusted = _trusted_keys(settings)
        hub = AgentHub()
        timeouts = DeployTimeouts(
            settings.prepare_timeout_s,
            settings.commit_timeout_s,
            settings.rollback_timeout_s,
            settings.canary_soak_s,
        )
        return cls(
            settings=settings,
            db=db,
            clock=clock,
            hub=hub,
            catalog=ReleaseCatalog(db, settings.data_dir, trusted, clock),
            orchestrator=Orchestrator(db, hub, clock, timeouts),
            operator_token=_operator_token(settings),
            trusted=trusted,
            credentials=CredentialCache(),
            fleet_guards=FleetGuards(settings.guard, period_s=settings.heartbeat_s),
            documents=ReleaseDocuments(),
        )


def _trusted_keys(settings: ServerSettings) -> list[TrustedKey]:
    paths = list(settings.trusted_keys)
    trusted_dir = settings.data_dir / "trusted"
    if trusted_dir.is_dir():
        paths.extend(sorted(trusted_dir.glob("*.pub")))
    return [load_trusted_key(path) for path in paths]


def _operator_token(settings: ServerSettings) -> str:
    if settings.operator_token is not None:
        return settings.operator_token.reveal()
    path = settings.data_dir / "operator.token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def create_app(plane: ControlPlane) -> FastAPI:
    """Return the FastAPI application serving ``plane``."""
    from knightwatch.api import (  # noqa: PLC0415  (routers import this)
        agents,
        alerts,
        audits,
        gate,
        killswitch,
        metrics,
        notifier,
        operator,
        policy,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        plane.orchestrator.recover()
        ticker = asyncio.create_task(_tick_forever(plane, killswitch.halt_now))
        alerter = notifier.AlertNotifier.for_settings(plane.db, plane.clock, plane.settings)
        notifying = asyncio.create_task(alerter.run_forever())
        log.info(
            "control plane up: data=%s db=%s keys=%d",
            plane.settings.data_dir,
            plane.settings.database_display,
            len(plane.trusted),
        )
        try:
            yield
        finally:
            for task in (ticker, notifying):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            plane.store_worker.shutdown(wait=True, cancel_futures=True)
            plane.db.close()

    app = FastAPI(title="knightwatch control plane", version=__version__, lifespan=lifespan)
    app.state.plane = plane
    install_error_handlers(app)
    app.add_middleware(gate.RequestGate, plane=plane)  # who and how much, before any route
    app.include_router(operator.router)
    app.include_router(audits.router)
    app.include_router(agents.router)
    app.include_router(alerts.router)
    app.include_router(metrics.router)
    app.include_router(killswitch.router)
    app.include_router(policy.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app


async def _tick_forever(plane: ControlPlane, halt_now: HaltNow) -> None:
    ticks = 0
    while True:
        await asyncio.sleep(TICK_S)
        await plane.in_store(lambda: _tick(plane, halt_now))
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


def _tick(plane: ControlPlane, halt_now: HaltNow) -> None:
    try:
        plane.orchestrator.tick()
    except Exception:
        log.exception("orchestrator tick failed")
    try:
        for halt in plane.fleet_guards.tick(plane.db, plane.clock):
            halt_now(plane, None, halt.reason, halt.requested_by)
    except Exception:
        log.exception("fleet guards failed")
    try:
        _sweep_uploads(plane)
    except Exception:
        log.exception("expiring abandoned uploads failed")


def _sweep_uploads(plane: ControlPlane) -> None:
    """Delete uploads idle for ``upload_expiry_s``, looking every tenth of that (60 s at most)."""
    now = plane.clock.monotonic()
    if now < plane.next_upload_sweep:
        return
    expiry = plane.settings.upload_expiry_s
    plane.next_upload_sweep = now + min(UPLOAD_SWEEP_S, expiry / 10)
    for upload_id in plane.catalog.expire_uploads(expiry):
        log.warning("upload %s abandoned for %.0f s: deleted", upload_id, expiry)


def plane_of(app: FastAPI) -> ControlPlane:
    """Return the control plane an app serves."""
    plane = app.state.plane
    assert isinstance(plane, ControlPlane)
    return plane
