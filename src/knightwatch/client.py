"""A Python client of the operator API: what the CLI (and scripts) use; never the store."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from knightwatch.errors import (
    GateRefusedError,
    InvalidInputError,
    KnightwatchError,
    ReleaseNotFoundError,
    VerificationError,
)
from knightwatch.tlsca import client_context, is_tls_failure

__all__ = ["ApiClient", "ServerTarget", "resolve_target"]

DEFAULT_SERVER = "http://127.0.0.1:7400"
FLEET_FILE = Path(".knightwatch-fleet") / "fleet.json"


@dataclass(frozen=True)
class ServerTarget:
    """Where the control plane is and how to authenticate to it."""

    url: str
    token: str | None
    ca: str | None = None
    """CA certificate (PEM file) the server's TLS certificate must chain to; None: system CAs."""


def resolve_target(server: str | None = None, token: str | None = None) -> ServerTarget:
    """Options first, then KNIGHTWATCH_SERVER/KNIGHTWATCH_TOKEN, then a local fleet file.

    The CA to pin comes from KNIGHTWATCH_CA, else from the fleet file when it names the server.
    """
    url = server or os.environ.get("KNIGHTWATCH_SERVER")
    secret = token or os.environ.get("KNIGHTWATCH_TOKEN")
    ca = os.environ.get("KNIGHTWATCH_CA") or None
    if FLEET_FILE.exists():
        fleet = json.loads(FLEET_FILE.read_text())
        if ca is None and (url is None or url.rstrip("/") == fleet.get("server")):
            ca = fleet.get("ca")
        if url is None or secret is None:
            url = url or fleet.get("server")
            secret = secret or fleet.get("token")
    if secret is None and Path("knightwatch-data/operator.token").exists():
        secret = Path("knightwatch-data/operator.token").read_text().strip()
    return ServerTarget((url or DEFAULT_SERVER).rstrip("/"), secret, ca)


class ApiClient:
    """Calls the operator API and turns its errors back into KnightwatchErrors."""

    def __init__(self, target: ServerTarget, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
        self.target = target
        self._http = httpx.Client(
            base_url=target.url, headers=headers, timeout=timeout, verify=client_context(target.ca)
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def get(self, path: str) -> Any:
        """GET ``/api/v1{path}`` and return its JSON."""
        return self._call("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        """POST JSON to ``/api/v1{path}`` and return its JSON."""
        return self._call("POST", path, json=body if body is not None else {})

    def put_bytes(self, path: str, data: bytes) -> None:
        """PUT raw bytes to ``/api/v1{path}``."""
        self._call("PUT", path, content=data, headers={"Content-Type": "application/octet-stream"})

    def put_stream(self, path: str, chunks: Iterator[bytes]) -> None:
        """PUT a streamed body to ``/api/v1{path}``."""
        self._call(
            "PUT", path, content=chunks, headers={"Content-Type": "application/x-knightwatch-blobs"}
        )

    def delete(self, path: str) -> None:
        """DELETE ``/api/v1{path}``."""
        self._call("DELETE", path)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, "/api/v1" + path, **kwargs)
        except httpx.HTTPError as exc:
            if is_tls_failure(exc):
                pinned = f"the pinned CA {self.target.ca}" if self.target.ca else "a trusted CA"
                raise KnightwatchError(
                    f"refusing {self.target.url}: its TLS certificate does not chain to {pinned}",
                    hint="set KNIGHTWATCH_CA to the control plane's CA certificate",
                ) from None
            raise KnightwatchError(
                f"cannot reach the control plane at {self.target.url}: {exc}",
                hint="start it (knightwatch server or knightwatch "
                "fleet up) or set KNIGHTWATCH_SERVER",
            ) from None
        if response.status_code >= 400:
            raise _error_from(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


def _error_from(response: httpx.Response) -> KnightwatchError:
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:200] or f"HTTP {response.status_code}"}
    message = str(body.get("error") or body.get("detail") or f"HTTP {response.status_code}")
    hint = body.get("hint")
    if response.status_code == 401:
        return InvalidInputError(message, hint=hint or "check KNIGHTWATCH_TOKEN")
    if response.status_code == 404 and body.get("kind") == "ReleaseNotFoundError":
        return ReleaseNotFoundError("", hint=hint, message=message)
    if response.status_code == 409:
        return GateRefusedError(message, hint=hint)
    if response.status_code == 422 and "problems" in body:
        return VerificationError(message.split(":", maxsplit=1)[0], list(body["problems"]))
    if response.status_code in (400, 404):
        return InvalidInputError(message, hint=hint)
    return KnightwatchError(message, hint=hint)
