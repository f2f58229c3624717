"""The exchange simulator as a process: the market of :mod:`.market` over HTTP and JSON.

``python -m knightwatch.sim.exchange --port 0 --seed 7`` prints
``{"event": "listening", "port": N}`` once it serves. Each connection has a
thread, but one lock admits one request at a time, in arrival order: the
same requests in the same order give the same answers.

=========================  ===================================================
``POST /orders``           ``{"orders": [...]}``: 1 to 10 000 child orders, all
                           checked before any is matched; their reports
``POST /cancel``           ``{"participant", "order_ids"}``: resting orders off
``POST /clock``            ``{"now": seconds}``: move the simulated clock
``POST /reset``            ``{"seed": n}``: a fresh market
``GET /positions``         every participant's book, marked to market
``GET /book/SYMBOL``       one symbol's price levels
``GET /health``            ``ok``
=========================  ===================================================

A refused request is a 4xx JSON ``{"error", "where"}`` and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from knightwatch.sim.market import MAX_QUANTITY, ChildOrder, Market, MarketInputError

__all__ = ["MAX_BODY_BYTES", "MAX_ORDERS", "main", "serve"]

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_ORDERS = 10_000
_Text = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Order(_Strict):
    participant: _Text
    client_id: _Text
    symbol: Annotated[str, Field(min_length=1, max_length=8)]
    side: Literal["buy", "sell"]
    quantity: Annotated[StrictInt, Field(gt=0, le=MAX_QUANTITY)]
    limit_cents: Annotated[StrictInt, Field(gt=0, le=10**9)]
    tif: Literal["ioc", "day"] = "ioc"


class _Orders(_Strict):
    orders: Annotated[list[_Order], Field(min_length=1, max_length=MAX_ORDERS)]


class _Cancel(_Strict):
    participant: _Text
    order_ids: Annotated[list[Annotated[StrictInt, Field(ge=1)]], Field(max_length=MAX_ORDERS)]


class _Clock(_Strict):
    now: Annotated[float, Field(ge=0, le=10**7, allow_inf_nan=False)]


class _Reset(_Strict):
    seed: Annotated[StrictInt, Field(ge=0, lt=2**63)]


class _RefusedError(Exception):
    def __init__(self, status: int, error: str, where: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.where = where


def _parse(model: type[_Strict], body: bytes) -> Any:
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _RefusedError(400, f"not JSON: {exc}", "body") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in first["loc"]).replace(
            ".[", "["
        )
        raise _RefusedError(400, f"{where or 'body'}: {first['msg']}", where or "body") from None


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number JSON allows")


class Exchange:
    """The market and the requests that move it (one at a time)."""

    def __init__(self, seed: int, count: int) -> None:
        self.count = count
        self.market = Market(seed, count)
        self.lock = threading.Lock()

    def post(self, path: str, body: bytes) -> dict[str, Any]:
        """Answer a POST, or raise _RefusedError."""
        with self.lock:
            if path == "/orders":
                batch = _parse(_Orders, body)
                orders = [ChildOrder(**o.model_dump()) for o in batch.orders]
                reports = self._market(lambda: self.market.submit(orders))
                return {"reports": [r.to_json() for r in reports]}
            if path == "/cancel":
                cancel = _parse(_Cancel, body)
                done, unknown = self.market.cancel(cancel.participant, cancel.order_ids)
                return {"cancelled": done, "unknown": unknown}
            if path == "/clock":
                clock = _parse(_Clock, body)
                self._market(lambda: self.market.advance(clock.now))
                return {"now": self.market.now}
            if path == "/reset":
                reset = _parse(_Reset, body)
                self.market = Market(reset.seed, self.count)
                return {"now": self.market.now, "seed": reset.seed}
        raise _RefusedError(404, f"no such path {path}", "path")

    def get(self, path: str) -> dict[str, Any]:
        """Answer a GET, or raise _RefusedError."""
        with self.lock:
            if path == "/positions":
                return self.market.positions()
            if path.startswith("/book/"):
                book: dict[str, Any] = self._market(
                    lambda: self.market.book(path.removeprefix("/book/"))
                )
                return book
        raise _RefusedError(404, f"no such path {path}", "path")

    @staticmethod
    def _market(action: Any) -> Any:
        try:
            return action()
        except MarketInputError as exc:
            raise _RefusedError(400, exc.message, exc.where) from None


def _handler(exchange: Exchange) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, b"ok\n", "text/plain")
                return
            self._answer(lambda: exchange.get(self.path))

        def do_POST(self) -> None:
            self._answer(lambda: exchange.post(self.path, self._body()))

        def _body(self) -> bytes:
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                raise _RefusedError(411, "a body needs a Content-Length", "headers") from None
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                raise _RefusedError(413, f"body over {MAX_BODY_BYTES} bytes", "body")
            return self.rfile.read(length)

        def _answer(self, action: Any) -> None:
            try:
                status, data = 200, action()
            except _RefusedError as refused:
                status, data = refused.status, {"error": refused.error, "where": refused.where}
                _log("refused", status=status, path=self.path, error=refused.error)
            self._send(status, json.dumps(data).encode(), "application/json")

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


def _log(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), file=sys.stderr, flush=True)


def serve(host: str, port: int, seed: int, count: int) -> None:
    """Serve the market until SIGTERM or SIGINT; print the listening line first."""
    server = ThreadingHTTPServer((host, port), _handler(Exchange(seed, count)))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(json.dumps({"event": "listening", "port": server.server_address[1]}), flush=True)
    _log("listening", host=host, port=server.server_address[1], seed=seed, symbols=count)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        _log("stopped")


def main(argv: list[str] | None = None) -> None:
    """``python -m knightwatch.sim.exchange [--host H] [--port P] [--seed S] [--symbols N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m knightwatch.sim.exchange",
        description="The Knightmare drill's exchange simulator (JSON over HTTP).",
        epilog="Example: python -m knightwatch.sim.exchange --port 0 --seed 20120801",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=20120801)
    parser.add_argument("--symbols", type=int, default=154)
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.seed, args.symbols)


if __name__ == "__main__":
    main()
