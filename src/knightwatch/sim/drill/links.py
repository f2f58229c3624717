"""The drill's side of the wire: the exchange process and each router, over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from knightwatch.errors import KnightwatchError
from knightwatch.sim.flow import ParentOrder

__all__ = ["DrillError", "ExchangeProcess", "RouterLink", "python_first_path"]

_TIMEOUT_S = 60.0


def python_first_path() -> str:
    """PATH with this Python's directory first: the releases' ``python3`` is the drill's own.

    (A version manager's ``python3`` shim costs a shell and a lookup at every
    start, which would land in the halt hook's time.)
    """
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


class DrillError(KnightwatchError):
    """The drill could not do a step it needed (a process did not start, a call failed)."""


class ExchangeProcess:
    """``python -m knightwatch.sim.exchange`` as a child process, and a client for it."""

    def __init__(self, seed: int, log: Path) -> None:
        self._log = log.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "knightwatch.sim.exchange", "--port", "0", "--seed", str(seed)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,  # in our process group: Ctrl-C or a kill of it stops it
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        try:
            self.port = int(json.loads(line)["port"])
        except (ValueError, KeyError, TypeError):
            self.stop()
            raise DrillError(f"the exchange simulator did not start (it said {line!r})") from None
        self.url = f"http://127.0.0.1:{self.port}"
        self._http = httpx.Client(base_url=self.url, timeout=_TIMEOUT_S)

    def reset(self, seed: int) -> None:
        """A fresh market for the next scenario."""
        self._call("POST", "/reset", {"seed": seed})

    def advance(self, now: float) -> None:
        """Move the market's clock to simulated time ``now``."""
        self._call("POST", "/clock", {"now": now})

    def positions(self) -> dict[str, Any]:
        """Every participant's positions, cash and marked value."""
        return self._call("GET", "/positions")

    def firm(self, participant: str = "knight") -> dict[str, Any]:
        """One participant's book (all zero before it traded)."""
        book: dict[str, Any] = self.positions()["participants"].get(participant, {})
        return book

    def _call(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        answer = self._http.request(method, path, json=body)
        if answer.status_code != 200:
            raise DrillError(f"exchange {method} {path}: {answer.status_code} {answer.text[:300]}")
        data: dict[str, Any] = answer.json()
        return data

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL)."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._log.close()
        if hasattr(self, "_http"):
            self._http.close()


class RouterLink:
    """One SMARS router's HTTP API, as the order flow and the drill's clock use it."""

    def __init__(self, node: str, port: int) -> None:
        self.node = node
        self.port = port
        self._http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=_TIMEOUT_S)

    def send(self, orders: Sequence[ParentOrder]) -> int:
        """Send parent orders; return how many the router accepted (0 if halted or gone)."""
        if not orders:
            return 0
        answer = self._post("/orders", {"orders": [o.to_json() for o in orders]})
        return int(answer.get("accepted", 0)) if answer else 0

    def tick(self, now: float) -> dict[str, Any] | None:
        """Let the router work up to ``now``; None when it is halted or gone."""
        return self._post("/tick", {"now": now})

    def state(self) -> dict[str, Any] | None:
        """The router's own view (halted, scrapes served, counters); None if gone."""
        try:
            answer = self._http.get("/state")
        except httpx.TransportError:
            return None
        return dict(answer.json()) if answer.status_code == 200 else None

    def reset(self) -> None:
        """Forget every parent order and counter (a new trading day)."""
        self._post("/reset", {})

    def _post(self, path: str, body: object) -> dict[str, Any] | None:
        try:
            answer = self._http.post(path, json=body)
        except httpx.TransportError:
            return None
        if answer.status_code == 503:
            return None
        if answer.status_code != 200:
            raise DrillError(
                f"router on {self.node} refused {path}: {answer.status_code} {answer.text[:300]}"
            )
        data: dict[str, Any] = answer.json()
        return data

    def close(self) -> None:
        """Close the connection."""
        self._http.close()
