"""The control plane a request is served by, as a FastAPI dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request

from knightwatch.server.plane import ControlPlane

__all__ = ["Plane", "get_plane", "plane_of"]


def plane_of(app: FastAPI) -> ControlPlane:
    """Return the control plane an app serves."""
    plane = app.state.plane
    assert isinstance(plane, ControlPlane)
    return plane


async def get_plane(request: Request) -> ControlPlane:
    """The control plane serving this request."""
    return plane_of(request.app)


Plane = Annotated[ControlPlane, Depends(get_plane)]
