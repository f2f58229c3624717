"""The local CA, the server's transport check, and the agent's trust and CA settings."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509

from knightwatch.agent.enroll import check_trust_anchor, pinned_keys
from knightwatch.agent.errors import AgentSetupError
from knightwatch.agent.settings import AgentSettings
from knightwatch.bundle.signing import generate_keypair
from knightwatch.errors import InvalidInputError
from knightwatch.server.settings import ServerSettings
from knightwatch.tlsca import client_context, create_local_ca, is_loopback


class TestLocalCA:
    def test_keys_are_private_and_the_server_cert_names_loopback(self, tmp_path: Path) -> None:
        """The CA and server keys are 0600; the server cert is for 127.0.0.1 and localhost."""
        made = create_local_ca(tmp_path)
        assert made.server_key.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
        cert = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "localhost" in names.get_values_for_type(x509.DNSName)
        assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]

    def test_an_existing_ca_is_reused_and_pinnable(self, tmp_path: Path) -> None:
        """A second call reuses the CA; each directory gets its own; a context pins it."""
        made = create_local_ca(tmp_path / "a")
        other = create_local_ca(tmp_path / "b")
        context = client_context(made.ca_cert)
        assert isinstance(context, ssl.SSLContext)
        assert other.ca_cert.read_bytes() != made.ca_cert.read_bytes()
        assert create_local_ca(tmp_path / "a") == made, "an existing CA is reused"

    def test_an_unreadable_ca_is_one_clear_error(self, tmp_path: Path) -> None:
        """A --ca that is not a PEM certificate is refused, naming the file."""
        bad = tmp_path / "ca.pem"
        bad.write_text("not a certificate")
        with pytest.raises(InvalidInputError, match="cannot read the CA certificate"):
            client_context(bad)


class TestServerTransport:
    @pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
    def test_loopback_may_serve_plain_http(self, host: str) -> None:
        """Loopback addresses need no TLS."""
        assert is_loopback(host)
        ServerSettings.load({"host": host}, environ={}).check_transport()

    def test_another_host_without_tls_is_refused(self) -> None:
        """0.0.0.0 without TLS is refused with a hint naming both ways out."""
        settings = ServerSettings.load({"host": "0.0.0.0"}, environ={})
        with pytest.raises(InvalidInputError, match="not loopback") as refused:
            settings.check_transport()
        assert "--insecure-plaintext" in (refused.value.hint or "")

    def test_insecure_plaintext_allows_it(self) -> None:
        """--insecure-plaintext (or KNIGHTWATCH_INSECURE_PLAINTEXT=true) lifts the refusal."""
        ServerSettings.load(
            {"host": "10.0.0.1"}, environ={"KNIGHTWATCH_INSECURE_PLAINTEXT": "true"}
        ).check_transport()

    def test_a_certificate_without_its_key_is_refused(self, tmp_path: Path) -> None:
        """--tls-cert without --tls-key is refused."""
        made = create_local_ca(tmp_path)
        settings = ServerSettings.load({"tls_cert": made.server_cert}, environ={})
        with pytest.raises(InvalidInputError, match="go together"):
            settings.check_transport()


class TestAgentTrust:
    def test_no_anchor_is_refused(self) -> None:
        """Neither --trust nor --trust-fingerprint: refused before any network call."""
        with pytest.raises(AgentSetupError, match="without a trust anchor"):
            check_trust_anchor((), ())

    def test_only_the_pinned_key_is_kept(self, tmp_path: Path) -> None:
        """Of the server's keys only the one whose id was pinned is kept."""
        _, first, first_id = generate_keypair(tmp_path, "first")
        _, second, _ = generate_keypair(tmp_path, "second")
        pems = [first.read_text(), second.read_text()]
        assert pinned_keys("https://x", pems, (f"SHA256:{first_id}",)) == [first.read_text()]

    def test_a_missing_pinned_key_is_refused(self, tmp_path: Path) -> None:
        """A pinned id the server does not offer refuses enrollment, listing what it offered."""
        _, first, first_id = generate_keypair(tmp_path, "first")
        with pytest.raises(AgentSetupError, match=f"it offered: SHA256:{first_id}"):
            pinned_keys("https://x", [first.read_text()], ("SHA256:" + "a" * 64,))

    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"trust_fingerprints": ("abc",)}, "is not SHA256:<64 hex digits>"),
            ({"ca": Path("/etc/hostname")}, "is not https://"),
            ({"ca": Path("/nonexistent.pem"), "server": "https://h:1"}, "does not exist"),
        ],
    )
    def test_bad_settings_are_refused(self, changes: dict[str, object], message: str) -> None:
        """A malformed fingerprint, --ca with http://, or a missing --ca file: exit 2."""
        base: dict[str, object] = {"server": "http://h:1", "root": Path("/r"), "name": "n1"}
        with pytest.raises(AgentSetupError, match=message):
            AgentSettings(**{**base, **changes})  # type: ignore[arg-type]
