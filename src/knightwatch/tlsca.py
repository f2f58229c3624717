"""TLS for knightwatch: a local certificate authority and the pinned client contexts.

:func:`create_local_ca` writes what ``fleet up`` serves with: a CA key and
certificate, and a server certificate for ``127.0.0.1``/``localhost``
signed by it (keys mode 0600). :func:`client_context` builds the SSL
context every client (agent WebSocket, blob downloads, enrollment, the
CLI) uses to pin a CA given out of band; :func:`is_loopback` decides
whether a listen address may go without TLS.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from knightwatch.errors import InvalidInputError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["LocalCA", "client_context", "create_local_ca", "is_loopback", "is_tls_failure"]

_VALID_DAYS = 365


@dataclass(frozen=True)
class LocalCA:
    """Paths of a local CA certificate and the server certificate and key it signed."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def create_local_ca(directory: Path) -> LocalCA:
    """Create (or reuse) a CA and a 127.0.0.1/localhost server certificate in ``directory``."""
    # cryptography is loaded only by what makes certificates: clients need just ssl
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    found = LocalCA(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    if all(p.exists() for p in (found.ca_cert, found.server_cert, found.server_key)):
        return found
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "knightwatch local CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    server_cert = (
        _builder(server_name, ca_name, server_key.public_key(), now)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / "ca.key", _private_pem(ca_key), 0o600)
    _write(found.server_key, _private_pem(server_key), 0o600)
    _write(found.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(found.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return found


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    from cryptography import x509

    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` with ``mode`` from the start (write-temp, fsync, rename)."""
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(temp, mode)
    temp.replace(path)


def client_context(ca: Path | str | None) -> ssl.SSLContext | bool:
    """The verification to use for a server: pin ``ca`` if given, else the system's CAs."""
    if ca is None or str(ca) == "":
        return True
    try:
        return ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInputError(
            f"cannot read the CA certificate {ca}: {getattr(exc, 'strerror', None) or exc}",
            hint="give --ca (or KNIGHTWATCH_CA) a PEM certificate file",
        ) from None


def is_tls_failure(exc: BaseException) -> bool:
    """True when ``exc`` (or its cause) is a failed certificate check or TLS handshake."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def is_loopback(host: str) -> bool:
    """True when ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
