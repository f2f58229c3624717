"""Ed25519 release signatures in a DSSE envelope over an in-toto Statement.

The Statement's subject is the release manifest (its SHA-256 is the release
digest); its predicate binds the SBOM's digest and the release ID, so one
signature covers every byte of the release. Cryptography comes from the
``cryptography`` package; only the DSSE pre-authentication encoding, which
is framing and not cryptography, is written here (as the DSSE spec gives it).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from knightwatch.canonical import canonical_json, parse_json, sha256_hex
from knightwatch.errors import KeyFileError

__all__ = [
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "SigningKey",
    "TrustedKey",
    "generate_keypair",
    "load_signing_key",
    "load_trusted_key",
    "open_envelope",
    "sign_statement",
    "statement_problems",
]

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://knightwatch.dev/release/v1"


@dataclass(frozen=True)
class TrustedKey:
    """A public key whose signatures we accept; ``keyid`` is SHA-256 of the raw key."""

    keyid: str
    key: Ed25519PublicKey
    source: str

    def public_pem(self) -> str:
        """The key in PEM (SubjectPublicKeyInfo) form, as ``keys generate`` writes it."""
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")


@dataclass(frozen=True)
class SigningKey:
    """A private Ed25519 key used to sign releases."""

    keyid: str
    key: Ed25519PrivateKey


def _keyid(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_hex(raw)


def generate_keypair(out_dir: Path, name: str = "release") -> tuple[Path, Path, str]:
    """Write ``NAME.key`` (0600) and ``NAME.pub`` into ``out_dir``; refuse to overwrite."""
    private_path, public_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileError(
                f"{path} already exists; refusing to overwrite a key",
                hint="choose another --out directory or --name",
            )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_pem)
        public_path.write_bytes(public_pem)
    except OSError as exc:
        raise KeyFileError(f"cannot write keys into {out_dir}: {exc.strerror}") from exc
    return private_path, public_path, _keyid(key.public_key())


def load_signing_key(path: Path) -> SigningKey:
    """Load a PEM Ed25519 private key."""
    try:
        key = serialization.load_pem_private_key(_read_key(path), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            f"{path} is not an Ed25519 private key in PEM form",
            hint="create one with: knightwatch keys generate --out DIR",
        )
    return SigningKey(_keyid(key.public_key()), key)


def load_trusted_key(path: Path) -> TrustedKey:
    """Load a PEM Ed25519 public key to trust."""
    try:
        key = serialization.load_pem_public_key(_read_key(path))
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(
            f"{path} is not an Ed25519 public key in PEM form",
            hint="pass the .pub file written by: knightwatch keys generate",
        )
    return TrustedKey(_keyid(key), key, str(path))


def _read_key(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key {path}: {exc.strerror}") from exc
    if len(data) > 16384:
        raise KeyFileError(f"{path} is too large to be a key")
    return data


def _pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def sign_statement(statement: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """Return a DSSE envelope signing the canonical JSON of ``statement``."""
    payload = canonical_json(statement)
    signature = key.key.sign(_pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": key.keyid, "sig": base64.b64encode(signature).decode("ascii")}],
    }


def open_envelope(
    envelope_bytes: bytes, trusted: list[TrustedKey]
) -> tuple[dict[str, Any], list[str]]:
    """Return the signed statement and the key IDs that verified it.

    Raise ValueError describing the problem if the envelope is malformed or
    no trusted key signed it.
    """
    envelope = parse_json(envelope_bytes)
    if not isinstance(envelope, dict) or envelope.get("payloadType") != PAYLOAD_TYPE:
        raise ValueError(f"envelope payloadType is not {PAYLOAD_TYPE}")
    payload = base64.b64decode(envelope.get("payload", ""), validate=True)
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise ValueError("envelope carries no signatures")
    by_id = {key.keyid: key for key in trusted}
    good: list[str] = []
    for entry in signatures:
        key = by_id.get(str(entry.get("keyid"))) if isinstance(entry, dict) else None
        if key is None:
            continue
        try:
            key.key.verify(
                base64.b64decode(entry.get("sig", ""), validate=True), _pae(PAYLOAD_TYPE, payload)
            )
            good.append(key.keyid)
        except (InvalidSignature, ValueError):
            continue
    if not good:
        ids = ", ".join(str(s.get("keyid"))[:16] for s in signatures if isinstance(s, dict))
        raise ValueError(f"no valid signature by a trusted key (signed by key id {ids})")
    statement = parse_json(payload)
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise ValueError("signed payload is not an in-toto Statement v1")
    return statement, good


def statement_problems(
    statement: dict[str, Any], digest: str, release_id: str, sbom_sha256: str | None = None
) -> list[str]:
    """What keeps a verified Statement from vouching for this exact release.

    The subject must be the manifest ``digest``, the predicate must name
    ``release_id`` and, when ``sbom_sha256`` is given, that SBOM digest.
    Empty when all hold. Tolerates any JSON shape: a hostile but validly
    signed statement gets problems, never an exception.
    """
    problems = []
    subjects = statement.get("subject")
    signed = [_field(s, "digest", "sha256") for s in subjects] if isinstance(subjects, list) else []
    if digest not in signed:
        shown = ", ".join(str(d) for d in signed) or "none"
        problems.append(f"the signature is for another manifest ({shown})")
    predicate = statement.get("predicate")
    predicate = predicate if isinstance(predicate, dict) else {}
    if predicate.get("release_id") != release_id:
        problems.append(f"signed release ID {predicate.get('release_id')!r} is not {release_id!r}")
    signed_sbom = _field(predicate, "sbom", "sha256")
    if sbom_sha256 is not None and signed_sbom != sbom_sha256:
        name = _field(predicate, "sbom", "name") or "the SBOM"
        problems.append(f"{name}: SHA-256 is {sbom_sha256}, the signature covers {signed_sbom}")
    return problems


def _field(value: object, outer: str, inner: str) -> object:
    middle = value.get(outer) if isinstance(value, dict) else None
    return middle.get(inner) if isinstance(middle, dict) else None
