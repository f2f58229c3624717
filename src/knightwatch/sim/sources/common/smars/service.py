"""The router's HTTP front end: orders, ticks and the halt in; metrics, version, health out."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from smars.exchange import ExchangeClient, ExchangeError
from smars.router import HaltedError, OrderError, Router, load_json, parse_orders

MAX_BODY_BYTES = 8 * 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent


def log(line: str) -> None:
    """One line on stdout (the agent's log watch reads it)."""
    print(line, flush=True)


def release_version() -> str:
    """The release ID knightwatch gave us, else the embedded version ID."""
    given = os.environ.get("KNIGHTWATCH_RELEASE_ID")
    if given:
        return given
    identity = ROOT / ".knightwatch" / "release.json"
    data = json.loads(identity.read_text()) if identity.exists() else {}
    return f"{data.get('name', 'smars')}@{data.get('version', 'unknown')}"


def _now(document: object) -> float:
    if not isinstance(document, dict) or set(document) != {"now"}:
        raise OrderError("body", 'expected {"now": seconds}')
    now = document["now"]
    if not isinstance(now, int | float) or isinstance(now, bool):
        raise OrderError("now", "must be a number of seconds")
    return float(now)


def handler(router: Router) -> type[BaseHTTPRequestHandler]:
    """The request handler bound to ``router``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, router.metrics(), "text/plain; version=0.0.4")
            elif self.path == "/health":
                self._send(200, "ok\n", "text/plain")
            elif self.path == "/version":
                self._send(200, release_version() + "\n", "text/plain")
            elif self.path == "/state":
                self._json(200, router.state())
            else:
                self._json(404, {"error": f"no such path {self.path}", "where": "path"})

        def do_POST(self) -> None:
            try:
                body = self._body()
                self._json(200, self._post(body))
            except OrderError as exc:
                self._json(400, {"error": str(exc), "where": exc.where})
            except HaltedError:
                self._json(503, {"error": "halted: this router takes no orders"})
            except ExchangeError as exc:
                log(f"exchange error: {exc}")
                self._json(502, {"error": str(exc)})

        def _post(self, body: bytes) -> dict[str, Any]:
            if self.path == "/orders":
                return {"accepted": router.accept(parse_orders(load_json(body)))}
            if self.path == "/tick":
                return router.tick(_now(load_json(body)))
            if self.path == "/halt":
                return {"halted": True, "cancelled": router.halt()}
            if self.path == "/reset":
                router.reset()
                return {"reset": True}
            raise OrderError("path", f"no such path {self.path}")

        def _body(self) -> bytes:
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                raise OrderError("headers", "Content-Length is not a number") from None
            if not 0 <= length <= MAX_BODY_BYTES:
                self.close_connection = True
                raise OrderError("body", f"at most {MAX_BODY_BYTES} bytes")
            return self.rfile.read(length)

        def _json(self, status: int, data: object) -> None:
            self._send(status, json.dumps(data), "application/json")

        def _send(self, status: int, text: str, kind: str) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


def main() -> None:
    """Serve on 127.0.0.1:$SMARS_PORT until SIGTERM."""
    from knightwatch.sdk import flags  # noqa: PLC0415 - bin/smars-router reports it missing

    config = tomllib.loads((ROOT / "config" / "routing.toml").read_text())
    exchange_url = os.environ.get("SMARS_EXCHANGE", "http://127.0.0.1:18090")
    port = int(os.environ.get("SMARS_PORT", "18080"))
    node = os.environ.get("KNIGHTWATCH_NODE", "local")
    router = Router(ExchangeClient(exchange_url), config, flags, log)
    server = ThreadingHTTPServer(("127.0.0.1", port), handler(router))
    server.daemon_threads = True

    def stop(*_: object) -> None:
        router.halt()
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    log(f"smars {release_version()} on node {node}: 127.0.0.1:{port}, exchange {exchange_url}")
    try:
        server.serve_forever(poll_interval=0.05)  # a SIGTERM stops it within 50 ms
    finally:
        server.server_close()
        sys.stdout.flush()
