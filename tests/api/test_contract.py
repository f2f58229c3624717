"""The operator and agent API's own contract, in process: status codes, bodies, auth.

The app is the real one over a real ControlPlane (SQLite in a temporary
directory, a virtual clock); the client is the CLI's own ``ApiClient`` on an
httpx transport into the app. The process-level tests (tests/integration)
cover the same routes with real agents; these pin the HTTP contract.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from knightwatch import __version__
from knightwatch.bundle import SigningKey, build_release
from knightwatch.client import ApiClient
from knightwatch.errors import NotFoundError, PolicyRefusedError, ReleaseNotFoundError
from knightwatch.protocol.reports import NodeKey
from knightwatch.push import push_release
from knightwatch.store.migrate import head_revision
from tests.api.conftest import TOKEN, URL
from tests.api.inprocess import PortalTransport

OPERATOR = {"Authorization": f"Bearer {TOKEN}"}
UPLOAD = "0" * 32


def http(transport: PortalTransport) -> httpx.Client:
    """A bare HTTP client of the app, for what ``ApiClient`` would interpret away."""
    return httpx.Client(transport=transport, base_url=URL)


def enroll_node(transport: PortalTransport, name: str) -> str:
    """Enroll ``name`` as its agent would (join token, then a key); return its credential."""
    with http(transport) as client:
        grant = client.post(f"/api/v1/nodes/{name}/enroll", json={}, headers=OPERATOR)
        assert grant.status_code == 201, grant.text
        key = NodeKey(Ed25519PrivateKey.generate())
        answer = client.post(
            "/api/agent/v1/enroll",
            json={"name": name, "token": grant.json()["token"], "public_key": key.public_text},
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["credential"])


@pytest.fixture
def pushed(
    operator: ApiClient,
    make_source: Callable[..., Path],
    signing_key: SigningKey,
    tmp_path: Path,
) -> dict[str, Any]:
    """One release built, signed and pushed through the API; its summary from the server."""
    store = tmp_path / "store"
    built = build_release(make_source(), store, signing_key)
    push_release(operator, store, built.release_id)
    releases = operator.get("/releases")
    assert [r["release_id"] for r in releases] == [built.release_id]
    return dict(releases[0])


UNKNOWN = [
    ("deployment", "GET", "/api/v1/deployments/4242"),
    ("retirement", "GET", "/api/v1/retirements/4242"),
    ("release", "GET", "/api/v1/releases/nosuch@1.0"),
    ("alert", "GET", "/api/v1/alerts/4242"),
    ("halt", "GET", "/api/v1/halts/4242"),
    ("audit", "GET", "/api/v1/audits/4242"),
    ("reconcile-node", "POST", "/api/v1/nodes/ghost/reconcile"),
    ("drain-node", "POST", "/api/v1/nodes/ghost/drain"),
    ("commit-upload", "POST", f"/api/v1/uploads/{UPLOAD}/commit"),
    ("abort-upload", "DELETE", f"/api/v1/uploads/{UPLOAD}"),
]


@pytest.mark.parametrize(("method", "path"), [u[1:] for u in UNKNOWN], ids=[u[0] for u in UNKNOWN])
def test_an_unknown_object_is_404_with_a_hint(
    transport: PortalTransport, method: str, path: str
) -> None:
    """Every unknown object answers 404 with one error line, a kind and the exit code."""
    body = {"reason": "testing"} if method == "POST" else None
    with http(transport) as client:
        answer = client.request(method, path, json=body, headers=OPERATOR)
    assert answer.status_code == 404, answer.text
    error = answer.json()
    assert error["error"] and "\n" not in error["error"]
    assert error["kind"].endswith("NotFoundError")
    assert error["exit_code"] == 2


def test_the_client_raises_not_found(operator: ApiClient) -> None:
    """``ApiClient`` turns a 404 back into a NotFoundError (the CLI's one-line message)."""
    with pytest.raises(NotFoundError, match="no deployment 4242"):
        operator.get("/deployments/4242")
    with pytest.raises(ReleaseNotFoundError):
        operator.get("/releases/nosuch@1.0")


def test_a_release_is_found_by_every_name_deploy_accepts(
    operator: ApiClient, pushed: dict[str, Any]
) -> None:
    """GET /releases/REF takes what ``deploy`` takes: ID, name@version, digest, 8-hex prefix."""
    digest = pushed["digest"].removeprefix("sha256:")
    refs = [pushed["release_id"], f"{pushed['name']}@{pushed['version']}", digest, digest[:8]]
    for ref in refs:
        shown = operator.get(f"/releases/{ref}")
        assert shown["digest"] == pushed["digest"], ref
        assert shown["manifest"]["files"], ref


AUTH_CASES = [
    ("no-token", {}),
    ("wrong-token", {"Authorization": "Bearer not-the-token"}),
    ("not-bearer", {"Authorization": f"Basic {TOKEN}"}),
]


@pytest.mark.parametrize("headers", [a[1] for a in AUTH_CASES], ids=[a[0] for a in AUTH_CASES])
def test_operator_calls_need_the_operator_token(
    transport: PortalTransport, headers: dict[str, str]
) -> None:
    """Without the operator's token: 401, and nothing was created."""
    with http(transport) as client:
        answer = client.post("/api/v1/halts", json={"reason": "x"}, headers=headers)
        assert answer.status_code == 401, answer.text
        assert client.get("/api/v1/halts", headers=OPERATOR).json() == []


def test_the_version_is_open_to_read_and_nothing_else_is(transport: PortalTransport) -> None:
    """GET /api/v1/version needs no token (like /healthz); any other method still does."""
    with http(transport) as client:
        answer = client.get("/api/v1/version")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "version": __version__,
            "protocols": [1, 2],
            "schema": head_revision(),
        }
        assert client.post("/api/v1/version").status_code == 401
        assert client.get("/api/v1/version/").status_code in (401, 404)
        assert client.get("/api/v1/status").status_code == 401


def test_an_agent_credential_cannot_call_the_operator_api(transport: PortalTransport) -> None:
    """A node's credential is not an operator token: 401 on every operator route."""
    credential = enroll_node(transport, "node1")
    agent = {"Authorization": f"Bearer {credential}", "X-Knightwatch-Node": "node1"}
    with http(transport) as client:
        assert client.get("/api/v1/status", headers=agent).status_code == 401
        assert client.post("/api/v1/halts", json={"reason": "x"}, headers=agent).status_code == 401


def test_the_operator_token_cannot_speak_for_an_agent(
    transport: PortalTransport, pushed: dict[str, Any]
) -> None:
    """The operator's token fetches no release bytes as a node: 401."""
    enroll_node(transport, "node1")
    as_node = {**OPERATOR, "X-Knightwatch-Node": "node1"}
    with http(transport) as client:
        answer = client.get(f"/api/agent/v1/releases/{pushed['digest']}/manifest", headers=as_node)
    assert answer.status_code == 401, answer.text


def test_a_refusal_is_409_with_every_reason(
    transport: PortalTransport, operator: ApiClient, pushed: dict[str, Any]
) -> None:
    """A deploy onto halted nodes: 409, the policy's refusals by check, naming each node."""
    for name in ("node1", "node2"):
        enroll_node(transport, name)
    operator.post("/halts", {"reason": "testing the policy"})
    with http(transport) as client:
        answer = client.post(
            "/api/v1/deployments", json={"release": pushed["release_id"]}, headers=OPERATOR
        )
    assert answer.status_code == 409, answer.text
    body = answer.json()
    assert body.get("action") == "deploy", body
    assert body["exit_code"] == 2
    halted = [r for r in body["refusals"] if r["check"] == "nodes-not-halted"]
    assert len(halted) == 1
    assert set(halted[0]["subjects"]) == {"node1", "node2"}
    assert halted[0]["reason"] and halted[0]["hint"]
    with pytest.raises(PolicyRefusedError) as refused:
        operator.post("/deployments", {"release": pushed["release_id"]})
    assert {r.check for r in refused.value.refusals} == {r["check"] for r in body["refusals"]}
    assert operator.get("/deployments") == []


def test_a_dry_run_lists_the_same_refusals(
    transport: PortalTransport, operator: ApiClient, pushed: dict[str, Any]
) -> None:
    """POST /check/deploy answers 200 with the refusals a deploy would meet, changing nothing."""
    enroll_node(transport, "node1")
    operator.post("/halts", {"reason": "testing the policy"})
    checked = operator.post("/check/deploy", {"release": pushed["release_id"]})
    assert "nodes-not-halted" in {r["check"] for r in checked["refusals"]}
    assert operator.get("/deployments") == []


def test_bad_input_is_400_or_422_and_names_the_field(transport: PortalTransport) -> None:
    """A body with an unknown key or a wrong type is refused naming that key."""
    with http(transport) as client:
        extra = client.post(
            "/api/v1/deployments", json={"release": "r", "colour": "red"}, headers=OPERATOR
        )
        wrong = client.post("/api/v1/deployments", json={"release": 7}, headers=OPERATOR)
    assert extra.status_code in (400, 422) and "colour" in extra.text
    assert wrong.status_code in (400, 422) and "release" in wrong.text
