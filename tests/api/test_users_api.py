"""People and roles in process: no open default, the upgrade path, the one role table."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from knightwatch.api import create_app
from knightwatch.api.roles import required_role
from knightwatch.clock import VirtualClock
from knightwatch.control.changes import parse_freezes
from knightwatch.control.users import Role, token_hash
from knightwatch.server.plane import ControlPlane
from knightwatch.server.settings import Secret, ServerSettings
from knightwatch.server.users import KnownUser, UserCache
from tests.api.conftest import TOKEN, URL
from tests.api.inprocess import PortalTransport, serving
from tests.api.test_contract import enroll_node

OPERATOR = {"Authorization": f"Bearer {TOKEN}"}


def http(transport: PortalTransport) -> httpx.Client:
    """A bare HTTP client of the app."""
    return httpx.Client(transport=transport, base_url=URL)


def test_a_server_with_no_users_refuses_every_operator_call(tmp_path: Path, key_dir: Path) -> None:
    """No open default: without a user, reads and kills alike are 401, pointing at init."""
    settings = ServerSettings(data_dir=tmp_path / "data", trusted_keys=(key_dir / "release.pub",))
    plane = ControlPlane.open(settings, clock=VirtualClock())
    assert not (tmp_path / "data" / "operator.token").exists()
    with serving(create_app(plane)) as transport, http(transport) as client:
        for method, path in (("GET", "/api/v1/status"), ("POST", "/api/v1/halts")):
            answer = client.request(method, path, json={"reason": "x"}, headers=OPERATOR)
            assert answer.status_code == 401, answer.text
            assert "knightwatch init" in answer.json()["hint"]


def test_an_earlier_shared_token_becomes_admin_once(tmp_path: Path, key_dir: Path) -> None:
    """DATA/operator.token keeps working, now as admin user `admin`; the file is gone."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "operator.token").write_text("the-old-shared-token\n")
    settings = ServerSettings(data_dir=data, trusted_keys=(key_dir / "release.pub",))
    plane = ControlPlane.open(settings, clock=VirtualClock())
    assert not (data / "operator.token").exists()
    old = {"Authorization": "Bearer the-old-shared-token"}
    with serving(create_app(plane)) as transport, http(transport) as client:
        assert client.get("/api/v1/me", headers=old).json() == {"name": "admin", "role": "admin"}
        (entry,) = client.get("/api/v1/audit-log?action=user.added", headers=old).json()
        assert (entry["actor"], entry["object"]) == ("upgrade", "admin")
    plane_again = ControlPlane.open(
        ServerSettings(
            data_dir=data,
            trusted_keys=(key_dir / "release.pub",),
            operator_token=Secret("another-token"),
        ),
        clock=VirtualClock(),
    )  # users exist now: a configured old token is not adopted a second time
    with serving(create_app(plane_again)) as transport, http(transport) as client:
        other = {"Authorization": "Bearer another-token"}
        assert client.get("/api/v1/me", headers=other).status_code == 401


def test_a_role_refusal_is_403_naming_user_role_and_need(
    transport: PortalTransport, plane: ControlPlane
) -> None:
    """A viewer's deploy: 403 with the user, their role and the role the route needs."""
    with http(transport) as client:
        made = client.post(
            "/api/v1/users", json={"name": "vic", "role": "viewer"}, headers=OPERATOR
        ).json()
        viewer = {"Authorization": f"Bearer {made['token']}"}
        answer = client.post("/api/v1/halts", json={"reason": "x"}, headers=viewer)
        assert answer.status_code == 403, answer.text
        assert "user vic has the role viewer" in answer.json()["error"]
        assert "needs operator" in answer.json()["error"]
        assert client.get("/api/v1/halts", headers=OPERATOR).json() == []


def test_reads_need_viewer_changes_operator_users_admin() -> None:
    """The one role table: its defaults and its exceptions."""
    assert required_role("GET", "/api/v1/status") is Role.VIEWER
    assert required_role("POST", "/api/v1/halts") is Role.OPERATOR
    assert required_role("POST", "/api/v1/rearm") is Role.OPERATOR
    assert required_role("DELETE", "/api/v1/uploads/x") is Role.OPERATOR
    assert required_role("POST", "/api/v1/check/deploy") is Role.VIEWER
    assert required_role("GET", "/api/v1/users") is Role.ADMIN
    assert required_role("POST", "/api/v1/users/alice/rotate") is Role.ADMIN
    assert required_role("PATCH", "/api/v1/anything-new") is Role.OPERATOR


def test_every_operator_route_is_covered_by_the_table(plane: ControlPlane) -> None:
    """Each route of the operator API resolves to a role; only users need admin."""
    app = create_app(plane)
    for route in app.routes:
        path = getattr(route, "path", "")
        if not path.startswith("/api/v1/"):
            continue
        for method in getattr(route, "methods", None) or {"GET"}:
            role = required_role(method, path)
            assert (role is Role.ADMIN) == path.startswith("/api/v1/users"), (method, path)


def test_roles_are_ordered() -> None:
    """Each role allows what the ones before it allow, and nothing after."""
    assert Role.ADMIN.allows(Role.APPROVER) and Role.APPROVER.allows(Role.OPERATOR)
    assert Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.OPERATOR.allows(Role.APPROVER)
    assert not Role.VIEWER.allows(Role.OPERATOR)


def test_tokens_are_stored_as_a_keyed_hash() -> None:
    """Not a plain SHA-256 of the token: another key gives another hash."""
    token = "kwu_example"
    first, second = token_hash(b"k" * 32, token), token_hash(b"j" * 32, token)
    assert first != second
    assert hashlib.sha256(token.encode()).hexdigest() not in (first, second)


@pytest.mark.parametrize("elapsed", [0.0, 4.9])
def test_the_user_cache_trusts_a_token_only_briefly(elapsed: float) -> None:
    """A checked token is trusted for 5 s, then checked again; a revoke forgets all."""
    cache = UserCache(ttl_s=5.0)
    cache.remember("digest", KnownUser("amy", Role.OPERATOR), 100.0)
    assert cache.get("digest", 100.0 + elapsed) == KnownUser("amy", Role.OPERATOR)
    assert cache.get("digest", 105.1) is None
    cache.forget_all()
    assert cache.get("digest", 100.0) is None


def test_a_freeze_refuses_all_but_an_emergency(tmp_path: Path, key_dir: Path) -> None:
    """Market hours in New York (the virtual clock starts at 09:30 there on 1 August 2012):
    a rearm is refused naming the freeze, the same rearm as an emergency runs, and after
    16:00 a proposal is accepted again (awaiting approval: 202)."""
    market = {"name": "market hours", "start": "09:30", "end": "16:00", "tz": "America/New_York"}
    clock = VirtualClock()
    settings = ServerSettings(
        data_dir=tmp_path / "data",
        trusted_keys=(key_dir / "release.pub",),
        freeze=parse_freezes([market]),
        operator_token=Secret(TOKEN),
    )
    plane = ControlPlane.open(settings, clock=clock)
    body = {"reason": "after the halt"}
    with serving(create_app(plane)) as transport, http(transport) as client:
        enroll_node(transport, "node1")
        halted = client.post("/api/v1/halts", json={"reason": "stop"}, headers=OPERATOR)
        assert halted.status_code == 201, halted.text  # a kill needs no change request
        refused = client.post("/api/v1/rearm", json=body, headers=OPERATOR)
        assert refused.status_code == 409, refused.text
        assert "change freeze 'market hours' is in force" in refused.json()["error"]
        assert client.get("/api/v1/changes", headers=OPERATOR).json() == []
        emergency = client.post("/api/v1/rearm", json={**body, "emergency": True}, headers=OPERATOR)
        assert emergency.status_code == 201, emergency.text
        assert emergency.json()["change"]["state"] == "EXECUTED"
        (review,) = client.get("/api/v1/reviews", headers=OPERATOR).json()
        assert review["opened_by"] == "admin" and review["open"]
        clock.advance(7 * 3600)  # 16:30 in New York
        later = client.post("/api/v1/rearm", json=body, headers=OPERATOR)
        assert later.status_code == 202, later.text
        assert later.json()["change"]["state"] == "PROPOSED"
