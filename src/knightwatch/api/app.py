"""Composition root of the control plane's HTTP side: a ControlPlane in, an ASGI app out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from knightwatch import __version__
from knightwatch.api import (
    agents,
    alerts,
    auditlog,
    audits,
    changes,
    flags,
    gate,
    killswitch,
    metrics,
    operator,
    policy,
    users,
    version,
)
from knightwatch.api.dashboard import routes as dashboard
from knightwatch.api.errors import install_error_handlers
from knightwatch.server.background import tick_forever
from knightwatch.server.notifier import AlertNotifier
from knightwatch.server.plane import ControlPlane

__all__ = ["create_app"]

log = logging.getLogger("knightwatch.server")


def create_app(plane: ControlPlane) -> FastAPI:
    """Return the FastAPI application serving ``plane``."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        plane.orchestrator.recover()
        ticker = asyncio.create_task(tick_forever(plane))
        alerter = AlertNotifier.for_settings(plane.db, plane.clock, plane.settings)
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
            plane.stopping = True
            try:
                await plane.in_store(plane.disconnect_everyone)
            except Exception:
                log.exception("recording every agent disconnected failed")
            for task in (ticker, notifying):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            plane.store_worker.shutdown(wait=True, cancel_futures=True)
            try:
                plane.checkpoint()  # the log's head as this process leaves it
            except Exception:
                log.exception("writing the shutdown audit-log checkpoint failed")
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
    app.include_router(flags.router)
    app.include_router(auditlog.router)
    app.include_router(users.router)
    app.include_router(changes.router)
    app.include_router(dashboard.router)
    app.include_router(version.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app
