"""Transport security and trust anchors, with real server, agent and CLI processes.

The shared fleets already run over TLS (LocalFleet pins a CA it creates);
these tests check the refusals: plain HTTP off loopback, a certificate that
does not chain to the pinned CA (agent and CLI), an agent with no trust
anchor, and a server whose keys do not match the pinned fingerprint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from knightwatch.bundle.signing import load_trusted_key
from knightwatch.localfleet import LocalFleet
from knightwatch.testing import free_port, wait_until
from knightwatch.tlsca import create_local_ca
from tests.integration.conftest import SETTLE_S, Releases, kw, log_tail, make_fleet

KNIGHTWATCH = str(Path(sys.executable).with_name("knightwatch"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Iterator[LocalFleet]:
    """One TLS node; the tests enroll more by hand."""
    with make_fleet(tmp_path_factory.mktemp("tls") / "fleet", releases, nodes=1) as local:
        yield local


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The certificate of a CA that did not sign the fleet's server certificate."""
    return create_local_ca(tmp_path_factory.mktemp("other-ca")).ca_cert


def run_agent(fleet: LocalFleet, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``knightwatch agent`` for a new node ``name`` until it exits (refusals exit fast)."""
    base = ["agent", "--server", fleet.url, "--root", str(fleet.root(name)), "--name", name]
    return subprocess.run(
        [KNIGHTWATCH, *base, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "250"},
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error line of a refused command, checking it is one line plus a hint, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, result.stderr
    return lines[0]


class TestServer:
    def test_plaintext_on_a_non_loopback_host_is_refused(self, tmp_path: Path) -> None:
        """``server --host 0.0.0.0`` without TLS exits 2 with one line naming the fix."""
        data = tmp_path / "data"
        result = subprocess.run(
            [KNIGHTWATCH, "server", "--data", str(data), "--host", "0.0.0.0", "--port", "1"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        line = one_line_error(result)
        assert "--host 0.0.0.0 is not loopback" in line
        assert "--insecure-plaintext" in result.stderr
        assert not (data / "knightwatch.db").exists()

    def test_insecure_plaintext_lets_it_serve(self, tmp_path: Path) -> None:
        """With --insecure-plaintext the same server starts and answers /healthz over HTTP."""
        port = free_port()
        args = ["server", "--data", str(tmp_path / "data"), "--host", "0.0.0.0"]
        log = (tmp_path / "server.log").open("wb")
        process = subprocess.Popen(
            [KNIGHTWATCH, *args, "--port", str(port), "--insecure-plaintext"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def healthy() -> bool:
                try:
                    url = f"http://127.0.0.1:{port}/healthz"
                    return httpx.get(url, timeout=2, trust_env=False).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(healthy, timeout=SETTLE_S, what="the plain-HTTP server")
        finally:
            process.terminate()
            process.wait(30)
            log.close()


class TestPinnedCA:
    def test_the_fleet_serves_https_and_agents_pin_its_ca(self, fleet: LocalFleet) -> None:
        """The fleet's URL is https, and its agent was started with --ca and is connected."""
        assert fleet.url.startswith("https://")
        assert {n["name"]: n for n in fleet.status()["nodes"]}["node1"]["connected"]
        assert (fleet.directory / "tls" / "server.key").stat().st_mode & 0o777 == 0o600
        assert (fleet.directory / "tls" / "ca.key").stat().st_mode & 0o777 == 0o600

    def test_an_agent_pinning_another_ca_refuses_to_enroll(
        self, fleet: LocalFleet, releases: Releases, other_ca: Path
    ) -> None:
        """An agent whose --ca did not sign the server's certificate exits 2 before enrolling."""
        join = fleet.enroll("stranger")
        result = run_agent(
            fleet, "stranger", "--join", join, "--ca", str(other_ca),
            "--trust", str(releases.public_key),
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "does not chain to the pinned CA" in one_line_error(result)
        assert not (fleet.root("stranger") / "agent" / "credential.json").exists()

    def test_an_enrolled_agent_pinning_another_ca_does_not_connect(
        self, fleet: LocalFleet, other_ca: Path
    ) -> None:
        """node1 restarted with another --ca logs the refused certificate and stays away."""
        fleet.stop_agent("node1")
        try:
            fleet.start_agent("node1", extra=["--ca", str(other_ca)])

            def refused() -> bool:
                return "does not chain to the pinned CA" in log_tail(fleet, "node1", 20)

            wait_until(refused, timeout=SETTLE_S, what="node1 to refuse the certificate")
            nodes = {n["name"]: n for n in fleet.status()["nodes"]}
            assert not nodes["node1"]["connected"]
        finally:
            fleet.stop_agent("node1")
            fleet.start_agent("node1")
            fleet.wait_connected(["node1"], timeout=SETTLE_S)

    def test_the_cli_with_another_ca_refuses_in_one_line(
        self, fleet: LocalFleet, other_ca: Path
    ) -> None:
        """``knightwatch status`` with KNIGHTWATCH_CA of another CA exits non-zero, one line."""
        result = subprocess.run(
            [KNIGHTWATCH, "status"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={
                **os.environ,
                "KNIGHTWATCH_SERVER": fleet.url,
                "KNIGHTWATCH_TOKEN": fleet.token,
                "KNIGHTWATCH_CA": str(other_ca),
                "COLUMNS": "250",
            },
        )
        assert result.returncode != 0
        line = one_line_error(result)
        assert f"refusing {fleet.url}: its TLS certificate does not chain" in line
        assert kw(fleet, "status").returncode == 0, "the fleet's own CA is accepted"


class TestTrustAnchor:
    def test_an_agent_without_a_trust_anchor_refuses_to_enroll(self, fleet: LocalFleet) -> None:
        """No --trust and no --trust-fingerprint: exit 2, one line, nothing enrolled."""
        join = fleet.enroll("anchorless")
        result = run_agent(fleet, "anchorless", "--join", join, "--ca", str(fleet.ca))
        assert result.returncode == 2, result.stderr
        assert "without a trust anchor" in one_line_error(result)
        assert "--trust-fingerprint" in result.stderr
        assert not (fleet.root("anchorless") / "agent" / "credential.json").exists()

    def test_a_server_key_not_matching_the_fingerprint_is_refused(self, fleet: LocalFleet) -> None:
        """--trust-fingerprint of a key the server does not send: exit 2, no key saved."""
        join = fleet.enroll("pinned-wrong")
        wanted = "SHA256:" + "0" * 64
        args = ["--join", join, "--ca", str(fleet.ca), "--trust-fingerprint", wanted]
        result = run_agent(fleet, "pinned-wrong", *args)
        assert result.returncode == 2, result.stderr
        assert f"no key matching --trust-fingerprint {wanted}" in one_line_error(result)
        agent_dir = fleet.root("pinned-wrong") / "agent"
        assert not list((agent_dir / "trusted").glob("*.pub"))
        assert not (agent_dir / "credential.json").exists()

    def test_a_matching_fingerprint_saves_only_that_key(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """--trust-fingerprint of the release key: the agent enrolls, connects, keeps that key."""
        keyid = load_trusted_key(releases.public_key).keyid
        join = fleet.enroll("pinned")
        root = fleet.root("pinned")
        args = ["agent", "--server", fleet.url, "--ca", str(fleet.ca), "--root", str(root)]
        args += ["--name", "pinned", "--join", join, "--trust-fingerprint", f"SHA256:{keyid}"]
        with (fleet.directory / "logs" / "pinned.log").open("wb") as log:
            agent = subprocess.Popen([KNIGHTWATCH, *args], stdout=log, stderr=subprocess.STDOUT)
        try:
            fleet.wait_connected(["pinned"], timeout=SETTLE_S)
        finally:
            agent.terminate()
            agent.wait(60)
        saved = list((fleet.root("pinned") / "agent" / "trusted").glob("*.pub"))
        assert [load_trusted_key(p).keyid for p in saved] == [keyid]


def test_a_server_stops_on_sigterm_with_an_idle_tls_client_connected(
    tmp_path: Path, releases: Releases
) -> None:
    """An operator's idle keep-alive TLS connection does not keep a SIGTERM'd server running."""
    with make_fleet(tmp_path / "fleet", releases, nodes=1) as local:
        lingering = httpx.Client(base_url=local.url, verify=local.verify)
        try:
            assert lingering.get("/healthz").status_code == 200  # the connection stays open
            status = local.stop_server()  # SIGTERM; SIGKILL only after 15 s without an exit
        finally:
            lingering.close()
    # uvicorn re-raises the SIGTERM it handled once it has shut down; -9 is the harness's SIGKILL
    assert status in (0, -signal.SIGTERM), f"the server did not exit by itself (status {status})"
