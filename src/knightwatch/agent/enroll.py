"""Joining the control plane: enrollment, the node credential and the trusted keys.

A new node posts its name, a one-time join token and its public key to
``/api/agent/v1/enroll`` and receives a credential (kept in
``ROOT/agent/credential.json``, mode 0600) and the release-signing keys the
control plane says it trusts. Trust is given, not learned: keys given with
``--trust`` always win and the server's list is ignored; with
``--trust-fingerprint SHA256:<key id>`` only the server's keys whose id is
named are saved into ``ROOT/agent/trusted/``, and every named one must be
among them. A node with neither refuses to enroll (:func:`check_trust_anchor`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import ssl
from pathlib import Path
from typing import Annotated

import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from knightwatch.agent.errors import AgentSetupError, AgentTransportError
from knightwatch.agent.layout import NodeLayout, atomic_write
from knightwatch.bundle.signing import TrustedKey, load_trusted_key
from knightwatch.errors import KeyFileError
from knightwatch.protocol.reports import NodeKey
from knightwatch.tlsca import is_tls_failure

__all__ = [
    "Credential",
    "EnrollResponse",
    "auth_headers",
    "check_trust_anchor",
    "enroll",
    "load_credential",
    "load_trusted_keys",
    "pinned_keys",
    "save_credential",
    "save_trusted_keys",
]

ENROLL_PATH = "/api/agent/v1/enroll"


class Credential(BaseModel):
    """The node's name and its secret for the control plane (masked in ``repr``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: str
    credential: SecretStr


class EnrollResponse(BaseModel):
    """What the control plane answers to a successful enrollment."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    node: str
    credential: SecretStr
    trusted_keys: Annotated[list[Annotated[str, Field(max_length=16384)]], Field(max_length=64)]
    heartbeat_s: Annotated[float, Field(gt=0, le=3600)] = 1.0


def auth_headers(credential: Credential) -> dict[str, str]:
    """Return the headers that authenticate the node on every request and handshake."""
    return {
        "X-Knightwatch-Node": credential.node,
        "Authorization": f"Bearer {credential.credential.get_secret_value()}",
    }


def enroll(
    server: str,
    name: str,
    token: str,
    node_key: NodeKey,
    *,
    verify: ssl.SSLContext | bool = True,
    transport: httpx.BaseTransport | None = None,
) -> EnrollResponse:
    """Enroll this node; AgentSetupError (exit 2) when the server refuses the token.

    ``verify`` pins the CA the server's certificate must chain to; a
    certificate that does not is refused (AgentSetupError) before the join
    token is sent.
    """
    url = server.rstrip("/") + ENROLL_PATH
    body = {"name": name, "token": token, "public_key": node_key.public_text}
    try:
        with httpx.Client(timeout=30.0, transport=transport, verify=verify) as client:
            response = client.post(url, json=body)
    except httpx.HTTPError as exc:
        if is_tls_failure(exc):
            raise AgentSetupError(
                f"refusing to enroll at {server}: its TLS certificate does not chain to "
                f"the pinned CA ({_first_line(exc)})",
                hint="check --ca (the control plane's CA certificate) and --server",
            ) from None
        raise AgentTransportError(
            f"cannot enroll at {url}: {exc}", hint="check --server and that the server runs"
        ) from exc
    if response.status_code in (401, 403):
        raise AgentSetupError(
            f"enrollment refused by {server}: {_detail(response)}",
            hint="ask the control plane operator for a fresh join token (--join)",
        )
    if response.status_code != 200:
        raise AgentTransportError(
            f"enrollment at {url} failed: HTTP {response.status_code}: {_detail(response)}"
        )
    try:
        answer = EnrollResponse.model_validate_json(response.content)
    except ValidationError as exc:
        raise AgentTransportError(f"enrollment at {url}: malformed answer: {exc}") from None
    if answer.node != name:
        raise AgentSetupError(f"the server enrolled node {answer.node!r}, not {name!r}")
    return answer


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def check_trust_anchor(trust: tuple[Path, ...], fingerprints: tuple[str, ...]) -> None:
    """Refuse to enroll without a trust anchor given out of band (AgentSetupError, exit 2)."""
    if not trust and not fingerprints:
        raise AgentSetupError(
            "refusing to enroll without a trust anchor: the server would choose what "
            "code this node runs",
            hint="give --trust RELEASE.pub or --trust-fingerprint SHA256:<key id>",
        )


def pinned_keys(server: str, pems: list[str], fingerprints: tuple[str, ...]) -> list[str]:
    """The server's keys whose ids were given; refuse when a given fingerprint is missing."""
    by_id: dict[str, str] = {}
    for pem in pems:
        by_id[_keyid_of(pem)] = pem
    wanted = {f.removeprefix("SHA256:") for f in fingerprints}
    missing = sorted(wanted - by_id.keys())
    if missing:
        offered = ", ".join(f"SHA256:{k}" for k in sorted(by_id)) or "none"
        raise AgentSetupError(
            f"refusing to enroll at {server}: it sent no key matching "
            f"--trust-fingerprint SHA256:{missing[0]} (it offered: {offered})",
            hint="check the fingerprint with the release team, and that --server is "
            "the real control plane",
        )
    return [by_id[k] for k in sorted(wanted)]


def _keyid_of(pem: str) -> str:
    """The key id (SHA-256 of the raw Ed25519 key) of a PEM public key the server sent."""
    try:
        key = serialization.load_pem_public_key(pem.encode("utf-8"))
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise AgentTransportError("the server sent a trusted key that is not an Ed25519 PEM key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else response.text[:200].strip() or response.reason_phrase


def load_credential(layout: NodeLayout) -> Credential | None:
    """Read ``credential.json``; None if the node has not enrolled yet."""
    try:
        data = layout.credential_file.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return Credential.model_validate_json(data)
    except ValidationError as exc:
        raise AgentSetupError(
            f"{layout.credential_file} is malformed: {exc.errors()[0]['msg']}",
            hint="delete it and enroll again with --join TOKEN",
        ) from None


def save_credential(layout: NodeLayout, credential: Credential) -> None:
    """Write ``credential.json`` with mode 0600."""
    data = {"node": credential.node, "credential": credential.credential.get_secret_value()}
    atomic_write(layout.credential_file, json.dumps(data).encode("utf-8") + b"\n", mode=0o600)


def save_trusted_keys(layout: NodeLayout, pems: list[str]) -> list[TrustedKey]:
    """Save PEM public keys into ``trusted/`` (named by key id); refuse any malformed one."""
    saved: list[TrustedKey] = []
    for index, pem in enumerate(pems):
        temp = layout.trusted_dir / f".incoming-{index}.tmp-{secrets.token_hex(4)}"
        atomic_write(temp, pem.encode("utf-8"))
        try:
            key = load_trusted_key(temp)
        except KeyFileError as exc:
            temp.unlink(missing_ok=True)
            raise AgentTransportError(f"the server sent a malformed trusted key: {exc}") from None
        final = layout.trusted_dir / f"{key.keyid[:16]}.pub"
        temp.replace(final)
        saved.append(TrustedKey(key.keyid, key.key, str(final)))
    return saved


def load_trusted_keys(layout: NodeLayout, given: list[Path]) -> list[TrustedKey]:
    """Return the keys whose signatures the agent accepts: ``given`` if any, else ``trusted/``."""
    paths = given or sorted(layout.trusted_dir.glob("*.pub"))
    return [load_trusted_key(path) for path in paths]
