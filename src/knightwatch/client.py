"""A Python client of the operator API: what the CLI (and scripts) use; never the store."""

from __future__ import annotations

import json
import os
import ssl
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from knightwatch.errors import (
    GateRefusedError,
    InvalidInputError,
    KnightwatchError,
    NotFoundError,
    PolicyRefusedError,
    Refusal,
    ReleaseNotFoundError,
    VerificationError,
)

__all__ = ["ApiClient", "ServerTarget", "UnexpectedAnswerError", "resolve_target"]

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
    """Options, then KNIGHTWATCH_SERVER/KNIGHTWATCH_TOKEN, the config file, a local fleet file.

    The config file is :func:`config_path` (``server``, ``token``, ``ca``).
    A token goes only where it was meant to: one from the environment (or
    the local ``knightwatch-data/operator.token``) only to a server named by
    an option, the environment or the default; a config or fleet file's token
    only to that file's server. A server named by a fleet file gets its token or none.
    The CA to pin comes from KNIGHTWATCH_CA, else from the fleet file when it
    names the server.
    """
    url, where = server, "--server"
    if url is None and os.environ.get("KNIGHTWATCH_SERVER"):
        url, where = os.environ["KNIGHTWATCH_SERVER"], "KNIGHTWATCH_SERVER"
    secret, secret_from = token, "the token given"
    if secret is None and os.environ.get("KNIGHTWATCH_TOKEN"):
        secret, secret_from = os.environ["KNIGHTWATCH_TOKEN"], "KNIGHTWATCH_TOKEN"
    config = _config_file()
    if url is None and config.get("server"):
        url, where = str(config["server"]), str(config_path())
        secret, secret_from = token, "the token given"  # never the environment's
    if secret is None and config.get("token") and url in (None, config.get("server")):
        secret, secret_from = str(config["token"]), str(config_path())
        url = url or config.get("server")
    fleet = _fleet_file() if FLEET_FILE.exists() else {}
    if url is None and fleet.get("server"):
        url, where = str(fleet["server"]), str(FLEET_FILE)
        secret, secret_from = token, "the token given"  # never the environment's
    if secret is None and fleet.get("token") and fleet.get("server") and fleet["server"] == url:
        secret, secret_from = str(fleet["token"]), str(FLEET_FILE)
    local = Path("knightwatch-data/operator.token")
    if secret is None and where != str(FLEET_FILE) and local.exists():
        secret, secret_from = local.read_text().strip(), str(local)
    url = _checked_url(url or DEFAULT_SERVER, where)
    if secret is not None:
        _check_token(secret, secret_from)
    ca = os.environ.get("KNIGHTWATCH_CA") or None
    if ca is None and config.get("ca") and str(config.get("server", "")).rstrip("/") == url:
        ca = str(config["ca"])
    if ca is None and fleet.get("ca") and str(fleet.get("server", "")).rstrip("/") == url:
        ca = str(fleet["ca"])
    return ServerTarget(url, secret, ca)


def config_path() -> Path:
    """The CLI's config file: KNIGHTWATCH_CONFIG, else ~/.config/knightwatch/config.toml."""
    given = os.environ.get("KNIGHTWATCH_CONFIG")
    if given:
        return Path(given)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "knightwatch" / "config.toml"


def _config_file() -> dict[str, Any]:
    """``server``, ``token`` and ``ca`` from the config file (empty when there is none).

    A file holding a token must be readable by its owner only: one readable by
    others is refused, as ssh refuses a private key others can read.
    """
    path = config_path()
    try:
        mode = path.stat().st_mode
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInputError(
            f"{path}: cannot read the knightwatch config file: {exc}",
            hint='it holds: server = "https://cp:7400", token = "…", ca = "/path/ca.pem"',
        ) from None
    unknown = sorted(set(data) - {"server", "token", "ca"})
    if unknown:
        raise InvalidInputError(
            f"{path}: unknown key(s) {', '.join(unknown)}", hint="the keys are server, token, ca"
        )
    if "token" in data and mode & 0o077:
        raise InvalidInputError(
            f"{path} holds a token and is readable by others (mode {mode & 0o777:o})",
            hint=f"chmod 600 {path}",
        )
    return data


def _fleet_file() -> dict[str, Any]:
    """The local fleet file's server and token (``knightwatch fleet up`` wrote it)."""
    try:
        data = json.loads(FLEET_FILE.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(
            f"{FLEET_FILE}: cannot read the local fleet file: {exc}",
            hint="remove it, or start the fleet again: knightwatch fleet up",
        ) from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{FLEET_FILE}: not a JSON object", hint="remove it")
    return data


def _checked_url(url: str, where: str) -> str:
    """``url`` without a trailing slash, refused (naming ``where``) unless an http(s) URL."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, UnicodeError, TypeError) as exc:
        problem = str(exc)
    else:
        ok = parsed.scheme in ("http", "https") and parsed.host
        problem = "" if ok else "not an http:// or https:// URL with a host"
    if problem:
        raise InvalidInputError(
            f"the control plane URL {url!r} (from {where}) is invalid: {problem}",
            hint="e.g. KNIGHTWATCH_SERVER=http://127.0.0.1:7400",
        )
    return url.rstrip("/")


def _check_token(token: str, where: str) -> None:
    """Refuse a token that cannot be an operator token (naming ``where`` it came from)."""
    bad = next((c for c in token if not "!" <= c <= "~"), None)
    if bad is None:
        return
    what = "a line break" if bad in "\r\n" else "a space" if bad == " " else f"{bad!r}"
    raise InvalidInputError(
        f"the operator token from {where} contains {what}; a token is printable ASCII",
        hint="copy it again from the server's DATA/operator.token, e.g. "
        "export KNIGHTWATCH_TOKEN=$(cat DATA/operator.token)",
    )


class ApiClient:
    """Calls the operator API and turns its errors back into KnightwatchErrors."""

    def __init__(
        self,
        target: ServerTarget,
        timeout: float = 60.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """Talk to ``target``; ``transport`` replaces the network (e.g. an in-process app)."""
        headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
        self.target = target
        # Plain http:// never uses a TLS context, and building the default one (the whole CA
        # bundle) costs a kill from the keyboard more than the halt itself.
        plain = target.url.startswith("http://")
        self._http = httpx.Client(
            base_url=target.url,
            headers=headers,
            timeout=timeout,
            verify=False if plain or transport else _tls_context(target.ca),
            transport=transport,
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
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:
            if isinstance(exc, httpx.HTTPError) and _is_tls_failure(exc):
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
        return _answer(response, self.target.url)


class UnexpectedAnswerError(InvalidInputError):
    """The server's answer is not what a knightwatch control plane answers."""


class _Answer(dict[str, Any]):
    """A JSON object from the server: a missing key is an UnexpectedAnswerError, not a crash."""

    def __init__(self, data: dict[str, Any], source: str) -> None:
        super().__init__(data)
        self.source = source

    def __missing__(self, key: str) -> Any:
        raise UnexpectedAnswerError(
            f"the answer of {self.source} has no {key!r}",
            hint="is it a knightwatch control plane of this version? check KNIGHTWATCH_SERVER",
        )


def _answer(response: httpx.Response, url: str) -> Any:
    """The JSON of a successful response, its objects answering missing keys with an error."""
    try:
        return json.loads(response.content, object_hook=lambda data: _Answer(data, url))
    except ValueError:
        raise UnexpectedAnswerError(
            f"the answer of {url} to {response.request.method} {response.request.url.path} "
            "is not JSON",
            hint="is it a knightwatch control plane? check KNIGHTWATCH_SERVER",
        ) from None


def _error_from(response: httpx.Response) -> KnightwatchError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"error": response.text[:200] or f"HTTP {response.status_code}"}
    message = str(body.get("error") or body.get("detail") or f"HTTP {response.status_code}")
    hint = body.get("hint")
    if response.status_code == 401:
        return InvalidInputError(message, hint=hint or "check KNIGHTWATCH_TOKEN")
    if response.status_code == 404 and body.get("kind") == "ReleaseNotFoundError":
        return ReleaseNotFoundError("", hint=hint, message=message)
    if response.status_code == 409:
        return _gate_refused(body, message, hint)
    if response.status_code == 422 and "problems" in body:
        return VerificationError(message.split(":", maxsplit=1)[0], list(body["problems"]))
    kind = _ERROR_KINDS.get(response.status_code, KnightwatchError)
    return kind(message, hint=hint)


_ERROR_KINDS: dict[int, type[KnightwatchError]] = {
    400: InvalidInputError,
    403: InvalidInputError,  # a role that does not allow it: refused, as bad input is
    404: NotFoundError,
    413: InvalidInputError,
    422: InvalidInputError,
}


def _gate_refused(body: dict[str, Any], message: str, hint: str | None) -> GateRefusedError:
    """A 409: the safety policy's refusal with every reason typed again, else a plain one."""
    try:
        refusals = [Refusal.from_json(r) for r in body["refusals"]]
    except (KeyError, TypeError, AttributeError):
        refusals = []
    if not refusals:
        return GateRefusedError(message, hint=hint)
    return PolicyRefusedError(str(body.get("action") or "the action"), refusals)


def _tls_context(ca: str | None) -> ssl.SSLContext | bool:
    """The TLS context for an https:// control plane (``ca`` pinned when given)."""
    from knightwatch.tlsca import client_context  # only https pays for the TLS helpers

    return client_context(ca)


def _is_tls_failure(exc: httpx.HTTPError) -> bool:
    from knightwatch.tlsca import is_tls_failure

    return is_tls_failure(exc)
