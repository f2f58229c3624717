"""Serve the control plane with uvicorn, telling it the moment a stop begins."""

from __future__ import annotations

import asyncio
import contextlib
from types import FrameType

import uvicorn
from fastapi import FastAPI

from knightwatch.server.plane import ControlPlane

__all__ = ["STARTUP_FAILED", "serve"]

STARTUP_FAILED = 3
"""The exit status when the server could not start (uvicorn's own)."""


class _Server(uvicorn.Server):
    """uvicorn's server, which also marks the control plane as stopping on SIGTERM/SIGINT."""

    def __init__(self, config: uvicorn.Config, plane: ControlPlane) -> None:
        super().__init__(config)
        self._plane = plane

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Begin to stop: end every agent session now, without a transaction each.

        Left to uvicorn, a thousand sessions outlive the graceful shutdown's
        deadline and are cancelled there, each logged as an error.
        """
        self._plane.stopping = True
        with contextlib.suppress(RuntimeError):  # no loop runs yet: nothing to end
            asyncio.get_running_loop().call_soon_threadsafe(self._plane.hub.end_sessions)
        super().handle_exit(sig, frame)


def serve(app: FastAPI, plane: ControlPlane, config: uvicorn.Config) -> bool:
    """Run ``app`` until SIGTERM or SIGINT; False if it never started (port taken, say)."""
    server = _Server(config, plane)
    server.run()
    return server.started
