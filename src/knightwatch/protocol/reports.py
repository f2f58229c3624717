"""Signing and opening agent reports with the node's Ed25519 key."""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from knightwatch.canonical import canonical_json
from knightwatch.errors import KnightwatchError
from knightwatch.protocol.messages import Report, SignedReport
from knightwatch.protocol.versions import ADOPTION_PROTOCOL, PROTOCOLS

__all__ = [
    "NodeKey",
    "ReportError",
    "is_plain_heartbeat",
    "load_node_key",
    "open_report",
    "public_key_from_text",
    "public_key_text",
    "report_document",
    "sign_report",
]


class ReportError(KnightwatchError):
    """A report was refused: bad signature, wrong node, stale nonce, replay, malformed."""


@dataclass(frozen=True)
class NodeKey:
    """A node's private signing key."""

    key: Ed25519PrivateKey

    @property
    def public_text(self) -> str:
        """The public key as base64 of its 32 raw bytes (what the server registers)."""
        return public_key_text(self.key.public_key())


def load_node_key(path: Path) -> NodeKey:
    """Load the node key at ``path``, creating it (mode 0600) if it does not exist."""
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(base64.b64encode(raw))
            handle.flush()
            os.fsync(handle.fileno())
        return NodeKey(key)
    raw = base64.b64decode(path.read_bytes().strip(), validate=True)
    return NodeKey(Ed25519PrivateKey.from_private_bytes(raw))


def public_key_text(key: Ed25519PublicKey) -> str:
    """Return base64 of the raw 32-byte public key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """Parse base64 of a raw 32-byte Ed25519 public key; ValueError if malformed."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError("public key is not base64") from exc
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def report_document(report: Report, protocol: int = PROTOCOLS[-1]) -> dict[str, Any]:
    """``report`` as JSON for a session of ``protocol``: without the fields a later one added.

    A protocol-1 control plane (0.1.x) refuses a report with a key it does not
    know, even one whose value is null.
    """
    document = report.model_dump(mode="json")
    if protocol < ADOPTION_PROTOCOL:
        service = document.get("state", {}).get("service")
        if isinstance(service, dict):
            service.pop("adoption", None)
    return document


def sign_report(report: Report, key: NodeKey, *, protocol: int = PROTOCOLS[-1]) -> SignedReport:
    """Sign ``report`` with the node key, as a session of ``protocol`` carries it."""
    payload = canonical_json(report_document(report, protocol))
    return SignedReport(
        payload=base64.b64encode(payload).decode("ascii"),
        signature=base64.b64encode(key.key.sign(payload)).decode("ascii"),
    )


def open_report(signed: SignedReport, public_key: Ed25519PublicKey) -> Report:
    """Verify the signature and parse the report; raise ReportError if either fails.

    Freshness (node, nonce, seq) is the caller's check: it knows the session.
    """
    try:
        payload = base64.b64decode(signed.payload, validate=True)
        signature = base64.b64decode(signed.signature, validate=True)
    except binascii.Error:
        raise ReportError("report is not valid base64") from None
    try:
        public_key.verify(signature, payload)
    except InvalidSignature:
        raise ReportError("report signature does not verify with the node's key") from None
    try:
        return Report.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ReportError(f"malformed report: {where}: {first['msg']}") from None


def is_plain_heartbeat(text: str) -> bool:
    """Whether the message ``text``, read but not verified, is a heartbeat and nothing more.

    Every report carries the node's whole state, so a later report from the
    same session makes a plain heartbeat (no answer, no alert) redundant.
    Nothing is believed here: a message that does not parse is not a plain
    heartbeat, and whatever is kept is verified as before.
    """
    try:
        payload = base64.b64decode(SignedReport.model_validate_json(text).payload, validate=True)
        report = Report.model_validate_json(payload)
    except (ValidationError, binascii.Error, ValueError):
        return False
    answers = (report.ack, report.audit, report.retire, report.halt, report.rearm)
    return report.kind == "heartbeat" and all(a is None for a in answers) and not report.alerts
