"""The HTTP front end: /health, /version, /metrics and POST /orders."""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from smars.orders import Book

try:  # the knightwatch agent puts its flag SDK on every Python service's path
    from knightwatch.sdk import flags
except ImportError:  # run by hand, outside knightwatch: every flag at its safe default
    flags = None

BOOK = Book()


def release_version() -> str:
    """The release ID knightwatch gave us, else the embedded version ID."""
    given = os.environ.get("KNIGHTWATCH_RELEASE_ID")
    if given:
        return given
    identity = Path(__file__).resolve().parent.parent / ".knightwatch" / "release.json"
    data = json.loads(identity.read_text()) if identity.exists() else {}
    return f"{data.get('name', 'smars')}@{data.get('version', 'unknown')}"


class Handler(BaseHTTPRequestHandler):
    """Serves the router's endpoints."""

    def do_GET(self) -> None:
        routes = {
            "/health": "ok\n",
            "/version": release_version() + "\n",
            "/metrics": BOOK.metrics(),
        }
        body = routes.get(self.path)
        self._reply(200 if body is not None else 404, body or "not found\n")

    def do_POST(self) -> None:
        if self.path != "/orders":
            self._reply(404, "not found\n")
            return
        if flags is not None and flags.is_enabled("smars.halt"):  # the kill flag
            self._reply(503, "not accepting orders: smars.halt is on\n")
            return
        length = int(self.headers.get("Content-Length", "0"))
        order = json.loads(self.rfile.read(length) or b"{}")
        BOOK.route(int(order.get("shares", 0)))
        rlp = flags is not None and flags.is_enabled("rlp.enabled")
        self._reply(200, "routed via RLP\n" if rlp else "routed\n")

    def _reply(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


def serve(port: int) -> None:
    """Serve until killed."""
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
