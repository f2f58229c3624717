"""A small JSON client for the exchange simulator, over one kept-alive HTTP connection."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit


class ExchangeError(Exception):
    """The exchange did not answer, or refused a request."""


class ExchangeClient:
    """``POST /orders`` and ``POST /cancel`` of the exchange at ``url``."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ExchangeError(f"SMARS_EXCHANGE must be an http:// URL, not {url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def orders(self, orders: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send child orders in one batch; their reports, in order."""
        reports: list[dict[str, Any]] = self._post("/orders", {"orders": orders})["reports"]
        return reports

    def cancel(self, participant: str, order_ids: list[int]) -> dict[str, Any]:
        """Cancel resting orders by id."""
        return self._post("/cancel", {"participant": participant, "order_ids": order_ids})

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        for attempt in (1, 2):  # a kept-alive connection the exchange closed: reconnect once
            connection = self._connect()
            try:
                connection.request(
                    "POST", path, body=data, headers={"Content-Type": "application/json"}
                )
                answer = connection.getresponse()
                text = answer.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt == 2:
                    raise ExchangeError(f"exchange {path}: {exc}") from exc
                continue
            if answer.status != 200:
                raise ExchangeError(f"exchange {path}: {answer.status} {text[:300]!r}")
            result: dict[str, Any] = json.loads(text)
            return result
        raise ExchangeError(f"exchange {path}: no answer")

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            self._connection = http.client.HTTPConnection(
                self._host, self._port, timeout=self._timeout
            )
        return self._connection

    def close(self) -> None:
        """Drop the connection."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
