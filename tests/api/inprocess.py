"""The real control plane app, served in this process: no sockets, no child processes.

``PortalTransport`` is an httpx transport for the synchronous ``ApiClient``:
each request runs through ``httpx.ASGITransport`` on an event loop in a
background thread (an anyio blocking portal), where the app's lifespan runs
too — so the background tick, the notifier and recovery are as in a server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI

__all__ = ["PortalTransport", "serving"]


class PortalTransport(httpx.BaseTransport):
    """Send each request to an ASGI app on ``portal``'s event loop and wait for its answer."""

    def __init__(self, app: FastAPI, portal: BlockingPortal) -> None:
        self._asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self._portal = portal

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Read the whole body here (it may be a sync iterator), then send it on the loop."""
        body = request.read()
        sent = httpx.Request(request.method, request.url, headers=request.headers, content=body)

        async def send() -> httpx.Response:
            response = await self._asgi.handle_async_request(sent)
            content = await response.aread()
            return httpx.Response(
                response.status_code, headers=response.headers, content=content, request=request
            )

        return self._portal.call(send)


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[PortalTransport]:
    """Run ``app``'s lifespan on a background event loop; yield a transport to it."""
    with start_blocking_portal() as portal:
        lifespan = app.router.lifespan_context(app)
        with portal.wrap_async_context_manager(lifespan):
            yield PortalTransport(app, portal)
