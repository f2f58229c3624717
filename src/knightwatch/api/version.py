"""``GET /api/v1/version``: which knightwatch the control plane is, and what it speaks.

Open without a token (the request gate lets it through, like ``/healthz``):
an installer, an upgrade script or a load balancer asks it before it holds
any credential — "may this agent package go out yet, or must the control
plane be upgraded first?" — and it tells a stranger nothing ``/healthz`` does
not: the protocols and the schema revision follow from the version.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter

from knightwatch import __version__
from knightwatch.protocol.versions import PROTOCOLS
from knightwatch.store.migrate import head_revision

__all__ = ["VERSION_PATH", "router"]

VERSION_PATH = "/api/v1/version"
router = APIRouter()


@functools.cache
def _schema() -> str:
    return head_revision()


@router.get(VERSION_PATH)
def version() -> dict[str, Any]:
    """The server's knightwatch version, the agent protocols it speaks, its schema revision."""
    return {"version": __version__, "protocols": list(PROTOCOLS), "schema": _schema()}
