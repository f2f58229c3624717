"""The control plane as a release source: manifests, envelopes and blobs over HTTP GET.

``GET /api/agent/v1/releases/<digest>/manifest`` and ``…/envelope`` return
bytes; ``GET /api/agent/v1/blobs/<digest>`` returns a blob and honours
``Range: bytes=N-`` (206) so an interrupted download resumes. Every request
carries the node's credential. Connection failures and 5xx answers are
:class:`AgentTransportError` (worth retrying); anything else is a
:class:`StagingError` naming the URL and the status.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import httpx

from knightwatch.agent.enroll import Credential, auth_headers
from knightwatch.agent.errors import AgentTransportError, StagingError
from knightwatch.agent.source import (
    MAX_ENVELOPE_BYTES,
    MAX_MANIFEST_BYTES,
    BlobStream,
    ReleaseSource,
)

__all__ = ["HttpReleaseSource"]

_API = "/api/agent/v1"
_ATTEMPTS = 3


class HttpReleaseSource(ReleaseSource):
    """Releases served by the control plane."""

    def __init__(
        self,
        server: str,
        credential: Credential,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.server = server.rstrip("/")
        self._client = httpx.Client(
            base_url=self.server + _API,
            headers=auth_headers(credential),
            timeout=timeout_s,
            transport=transport,
            verify=verify,
        )

    def describe(self) -> str:
        """Name the server."""
        return self.server

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def manifest(self, digest: str) -> bytes:
        """GET the release's canonical manifest bytes."""
        return self._get_small(f"/releases/{digest}/manifest", MAX_MANIFEST_BYTES)

    def envelope(self, digest: str) -> bytes:
        """GET the release's DSSE envelope bytes."""
        return self._get_small(f"/releases/{digest}/envelope", MAX_ENVELOPE_BYTES)

    def open_blob(self, digest: str, offset: int) -> AbstractContextManager[BlobStream]:
        """GET a blob from ``offset`` (a ``Range`` request when resuming)."""
        return self._open_blob(digest, offset)

    @contextmanager
    def _open_blob(self, digest: str, offset: int) -> Iterator[BlobStream]:
        path = f"/blobs/{digest}"
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with self._client.stream("GET", path, headers=headers) as response:
                self._check(response, path, ok=(200, 206))
                start = offset if response.status_code == 206 else 0
                if start and not response.headers.get("content-range", "").startswith(
                    f"bytes {offset}-"
                ):
                    raise StagingError(f"GET {self._url(path)}: 206 for the wrong range")
                yield start, self._chunks(response, path)
        except httpx.HTTPError as exc:
            raise AgentTransportError(f"GET {self._url(path)}: {_describe(exc)}") from exc

    def open_blobs(self, digests: list[str]) -> AbstractContextManager[Iterator[bytes]] | None:
        """POST ``/blobs`` for many blobs in one framed stream."""
        return self._open_blobs(digests)

    @contextmanager
    def _open_blobs(self, digests: list[str]) -> Iterator[Iterator[bytes]]:
        path = "/blobs"
        try:
            with self._client.stream("POST", path, json={"digests": digests}) as response:
                if response.status_code != 200:
                    raise AgentTransportError(
                        f"POST {self._url(path)}: HTTP {response.status_code} "
                        f"{response.reason_phrase}"
                    )
                yield self._chunks(response, path)
        except httpx.HTTPError as exc:
            raise AgentTransportError(f"POST {self._url(path)}: {_describe(exc)}") from exc

    def _chunks(self, response: httpx.Response, path: str) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes()
        except httpx.HTTPError as exc:
            raise AgentTransportError(f"{self._url(path)}: {_describe(exc)}") from exc

    def _get_small(self, path: str, limit: int) -> bytes:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return self._get_once(path, limit)
            except AgentTransportError as exc:
                if attempt == _ATTEMPTS:
                    raise StagingError(exc.message) from exc
        raise AssertionError("unreachable")

    def _get_once(self, path: str, limit: int) -> bytes:
        try:
            with self._client.stream("GET", path) as response:
                self._check(response, path, ok=(200,))
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > limit:
                        raise StagingError(f"GET {self._url(path)}: larger than {limit} bytes")
                return bytes(data)
        except httpx.HTTPError as exc:
            raise AgentTransportError(f"GET {self._url(path)}: {_describe(exc)}") from exc

    def _check(self, response: httpx.Response, path: str, *, ok: tuple[int, ...]) -> None:
        status = response.status_code
        if status in ok:
            return
        what = f"GET {self._url(path)}: HTTP {status} {response.reason_phrase}"
        if status >= 500:
            raise AgentTransportError(what)
        if status in (401, 403):
            raise StagingError(f"{what} (the server refused this node's credential)")
        raise StagingError(what)

    def _url(self, path: str) -> str:
        return f"{self.server}{_API}{path}"


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
