"""Pushes and deploys the control plane must refuse, leaving nothing changed.

One fleet of two nodes (v1 pushed, nothing deployed) is shared by the tests
of this file.
"""

from __future__ import annotations

import base64
import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from knightwatch.bundle import ReleaseStore
from knightwatch.bundle.release_store import ENVELOPE_FILE, MANIFEST_FILE, SBOM_FILE
from knightwatch.errors import (
    GateRefusedError,
    InvalidInputError,
    ReleaseNotFoundError,
    VerificationError,
)
from knightwatch.localfleet import LocalFleet
from tests.integration.conftest import SETTLE_S, Releases, kw, make_fleet, wait_idle


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Iterator[LocalFleet]:
    """Two nodes; v1 pushed; nothing deployed."""
    with make_fleet(tmp_path_factory.mktemp("fleet"), releases, nodes=2) as local:
        local.push(releases.store, releases.v1.release_id)
        yield local


def release_ids(fleet: LocalFleet) -> set[str]:
    """The release IDs GET /api/v1/releases lists."""
    return {r["release_id"] for r in fleet.client.get("/releases")}


def deployment_ids(fleet: LocalFleet) -> list[int]:
    """The ids GET /api/v1/deployments lists."""
    return [d["id"] for d in fleet.client.get("/deployments")]


def begin_upload(fleet: LocalFleet, releases: Releases, release_id: str) -> dict[str, Any]:
    """POST /uploads with a release's three documents; return the ticket."""
    found = ReleaseStore(releases.store).find(release_id)
    docs = {
        key: base64.b64encode(found.read(name)).decode("ascii")
        for key, name in (
            ("manifest", MANIFEST_FILE),
            ("sbom", SBOM_FILE),
            ("envelope", ENVELOPE_FILE),
        )
    }
    ticket: dict[str, Any] = fleet.client.post("/uploads", docs)
    return ticket


class TestPush:
    def test_release_signed_by_an_untrusted_key_is_refused(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """A release signed by a key the server does not trust is refused (422), not listed."""
        with pytest.raises(VerificationError) as caught:
            fleet.push(releases.untrusted_store, releases.untrusted.release_id)
        assert any("trusted key" in p for p in caught.value.problems), caught.value.problems
        assert releases.untrusted.release_id not in release_ids(fleet)

    def test_cli_push_of_an_untrusted_release_shows_the_server_reasons(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """``release push`` names the untrusted key the server refused; --json prints a document."""
        args = ("release", "push", releases.untrusted.release_id)
        args += ("--store", str(releases.untrusted_store))
        done = kw(fleet, *args)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "trusted key" in done.stderr and "Traceback" not in done.stderr
        as_json = kw(fleet, *args, "--json")
        assert as_json.returncode == 1, as_json.stderr
        document = json.loads(as_json.stdout)
        assert document["ok"] is False and document["kind"] == "VerificationError"
        assert any("trusted key" in p for p in document["problems"]), document

    def test_interrupted_upload_leaves_no_visible_release(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """An upload that never commits is not listed, and deploying it finds no release."""
        before = deployment_ids(fleet)
        ticket = begin_upload(fleet, releases, releases.v2.release_id)
        assert not ticket["already_present"] and len(ticket["missing"]) >= 2, ticket
        digest = ticket["missing"][0]
        fleet.client.put_bytes(
            f"/uploads/{ticket['upload_id']}/blobs/{digest}",
            ReleaseStore(releases.store).blobs.read(digest),
        )
        assert releases.v2.release_id not in release_ids(fleet)
        with pytest.raises(ReleaseNotFoundError):
            fleet.client.get(f"/releases/{releases.v2.release_id}")
        with pytest.raises(ReleaseNotFoundError):
            fleet.deploy(releases.v2.release_id, wait=False)
        assert deployment_ids(fleet) == before

    def test_blob_with_one_wrong_byte_is_refused(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """A blob whose bytes differ from its digest by one byte is refused; commit then fails."""
        ticket = begin_upload(fleet, releases, releases.v2.release_id)
        upload = ticket["upload_id"]
        blobs = ReleaseStore(releases.store).blobs
        for digest in ticket["missing"][1:]:
            fleet.client.put_bytes(f"/uploads/{upload}/blobs/{digest}", blobs.read(digest))
        digest = ticket["missing"][0]
        data = bytearray(blobs.read(digest))
        data[len(data) // 2] ^= 0x01
        with pytest.raises(VerificationError) as caught:
            fleet.client.put_bytes(f"/uploads/{upload}/blobs/{digest}", bytes(data))
        assert any(digest in p for p in caught.value.problems), caught.value.problems
        with pytest.raises(InvalidInputError, match="not uploaded"):
            fleet.client.post(f"/uploads/{upload}/commit")
        assert releases.v2.release_id not in release_ids(fleet)


class TestDeploy:
    def test_unknown_release_is_refused_without_a_deployment(self, fleet: LocalFleet) -> None:
        """Deploying a release nobody pushed is a 404 and creates no deployment."""
        before = deployment_ids(fleet)
        with pytest.raises(ReleaseNotFoundError):
            fleet.deploy("smars@1999.1.1", wait=False)
        with pytest.raises(ReleaseNotFoundError):
            fleet.deploy("0" * 64, wait=False)
        assert deployment_ids(fleet) == before

    def test_selector_matching_no_node_is_refused(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """A deploy whose selector matches zero nodes is refused and changes nothing."""
        wait_idle(fleet)
        before, status = deployment_ids(fleet), fleet.status()
        with pytest.raises(InvalidInputError, match="no enrolled node matches"):
            fleet.deploy(releases.v1.release_id, wait=False, nodes="nosuchnode*")
        assert deployment_ids(fleet) == before
        after = fleet.status()
        assert (after["state"], after["desired_release"]) == (
            status["state"],
            status["desired_release"],
        )

    @pytest.mark.parametrize(
        "command",
        [
            ("deploy", "smars@2012.8.1", "--nodes", ""),
            ("deploy", "smars@2012.8.1", "--nodes", " , "),
            ("kill", "--reason", "x", "--nodes", " "),
            ("rearm", "--reason", "x", "--nodes", ""),
            ("audit", "--node", ""),
        ],
        ids=["deploy-empty", "deploy-commas", "kill-blank", "rearm-empty", "audit-empty"],
    )
    def test_empty_selector_is_refused_not_the_whole_fleet(
        self, fleet: LocalFleet, command: tuple[str, ...]
    ) -> None:
        """An empty --nodes (an unset variable) is refused (exit 2): nothing deployed or halted."""
        wait_idle(fleet)
        before = deployment_ids(fleet), fleet.client.get("/halts")
        done = kw(fleet, *command)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "selector is empty" in done.stderr and "hint:" in done.stderr
        assert (deployment_ids(fleet), fleet.client.get("/halts")) == before
        assert not any(n["halted"] for n in fleet.status()["nodes"])

    def test_second_deploy_while_one_runs_is_refused(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """While a deployment is in progress another one is refused (409) and not recorded."""
        wait_idle(fleet)
        pid = fleet.agent_pid("node2")
        os.kill(pid, signal.SIGSTOP)  # PREPARE is sent but never answered meanwhile
        try:
            first = fleet.deploy(releases.v1.release_id, wait=False, nodes="node2")
            assert first["state"] == "PREPARING"
            with pytest.raises(GateRefusedError, match="one deployment runs at a time"):
                fleet.deploy(releases.v1.release_id, wait=False)
            assert deployment_ids(fleet)[0] == first["id"]
        finally:
            os.kill(pid, signal.SIGCONT)
        fleet.wait_deployment(first["id"], timeout=180)
        fleet.wait_connected(fleet.names, timeout=SETTLE_S)


class TestAuth:
    @pytest.mark.parametrize(
        "headers",
        [{}, {"Authorization": "Bearer not-the-token"}, {"Authorization": "not-bearer"}],
        ids=["missing", "wrong", "malformed"],
    )
    def test_operator_api_requires_the_token(
        self, fleet: LocalFleet, headers: dict[str, str]
    ) -> None:
        """The operator API answers 401 without the operator token, and changes nothing."""
        before = deployment_ids(fleet)
        for method, path in (
            ("GET", "/status"),
            ("GET", "/deployments"),
            ("POST", "/deployments"),
            ("POST", "/rollback"),
        ):
            answer = httpx.request(
                method,
                f"{fleet.url}/api/v1{path}",
                headers=headers,
                json={"release": "smars@2012.8.1"},
                timeout=30,
                trust_env=False,
                verify=fleet.verify,
            )
            assert answer.status_code == 401, (method, path, answer.text)
        assert deployment_ids(fleet) == before
