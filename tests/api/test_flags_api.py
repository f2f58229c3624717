"""The flag and audit-log routes as a careless or hostile client meets them: every bad input
is refused naming what was wrong, and nothing is registered, set or logged by a refusal."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from knightwatch.client import ApiClient
from tests.api.conftest import TOKEN, URL
from tests.api.inprocess import PortalTransport

OPERATOR = {"Authorization": f"Bearer {TOKEN}"}
FLAG = {
    "name": "rlp",
    "kind": "release",
    "description": "Retail Liquidity Program",
    "default": False,
}


class _Borrowed(httpx.BaseTransport):
    """The app's transport lent to a bare client: closing the client leaves it open for the
    operator's client of the same test."""

    def __init__(self, inner: PortalTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.inner.handle_request(request)


def http(transport: PortalTransport) -> httpx.Client:
    """A bare HTTP client of the app, for what ``ApiClient`` would interpret away."""
    return httpx.Client(transport=_Borrowed(transport), base_url=URL)


def logged(operator: ApiClient) -> list[str]:
    return [e["action"] for e in operator.get("/audit-log")]


def test_create_show_retire_and_the_name_stays_reserved(operator: ApiClient) -> None:
    """Created by hand, shown, retired with a reason; creating it again names the retirement."""
    created = operator.post("/flags", FLAG)
    assert (created["type"], created["state"]) == ("boolean", "active")
    shown = operator.get("/flags/rlp")
    assert (shown["evaluations"], shown["declared_by"]) == ([], [])
    (stale,) = operator.get("/flags/stale?days=0")
    assert "never evaluated" in stale["reasons"]
    assert [c["kind"] for c in operator.get("/flags/rlp/history")] == ["create"]
    operator.post("/flags/rlp/retire", {"reason": "code removed"})
    with pytest.raises(Exception, match=r"retired on .* names are reserved forever"):
        operator.post("/flags", FLAG)
    assert logged(operator) == ["flag.create", "flag.retire"]


BAD_CREATES: list[tuple[str, dict[str, Any], str]] = [
    ("slash", {**FLAG, "name": "a/b"}, "not a flag name"),
    ("nul", {**FLAG, "name": "a\x00b"}, "not a flag name"),
    ("10KB", {**FLAG, "name": "a" * 10_000}, "name"),
    ("kind", {**FLAG, "kind": "forever"}, "kind"),
    ("default", {**FLAG, "default": [1, 2]}, "default"),
    ("nan", {**FLAG, "default": float("inf")}, ""),
    ("extra", {**FLAG, "colour": "red"}, "colour"),
    ("control", {**FLAG, "description": "a\x1b[31mred"}, "description"),
]


@pytest.mark.parametrize(
    ("body", "named"), [b[1:] for b in BAD_CREATES], ids=[b[0] for b in BAD_CREATES]
)
def test_bad_creates_are_refused_and_change_nothing(
    transport: PortalTransport, operator: ApiClient, body: dict[str, Any], named: str
) -> None:
    """400/422 naming the field; no flag registered, nothing in the audit log."""
    with http(transport) as client:
        answer = client.post(
            "/api/v1/flags",
            content=_json(body),
            headers={**OPERATOR, "Content-Type": "application/json"},
        )
    assert answer.status_code in (400, 422), answer.text
    assert named in answer.text
    assert operator.get("/flags") == []
    assert logged(operator) == []


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


@pytest.mark.parametrize(
    ("scope", "value", "status", "named"),
    [
        ("fleet", "yes", 400, "not a boolean"),
        ("fleet", 2**70, 400, "value"),
        ("galaxy", True, 400, "not a flag scope"),
        ("node:../x", True, 400, "not a flag scope"),
        ("fleet", True, 400, "no enrolled node"),  # an empty fleet: nothing would read it
    ],
)
def test_bad_values_and_scopes_are_refused(
    transport: PortalTransport,
    operator: ApiClient,
    scope: str,
    value: object,
    status: int,
    named: str,
) -> None:
    """Wrong types, huge integers, unknown or path-like scopes, a scope with no node."""
    operator.post("/flags", FLAG)
    with http(transport) as client:
        answer = client.post(
            "/api/v1/flags/rlp/values", json={"scope": scope, "value": value}, headers=OPERATOR
        )
    assert answer.status_code in (status, 422), answer.text
    assert named in answer.text
    assert operator.get("/flags/rlp")["values"] == []
    assert logged(operator) == ["flag.create"]


def test_unknown_flags_and_changes_are_404(transport: PortalTransport) -> None:
    """An unknown flag or change: 404 with one line."""
    with http(transport) as client:
        for path in (
            "/api/v1/flags/nosuch",
            "/api/v1/flags/changes/99",
            "/api/v1/flags/nosuch/history",
        ):
            answer = client.get(path, headers=OPERATOR)
            assert answer.status_code == 404, (path, answer.text)


def test_the_audit_log_routes_need_the_operator(transport: PortalTransport) -> None:
    """No token: 401 for reading, verifying and checkpointing the log."""
    with http(transport) as client:
        for method, path in (
            ("GET", "/api/v1/audit-log"),
            ("GET", "/api/v1/audit-log/verify"),
            ("POST", "/api/v1/audit-log/checkpoint"),
        ):
            assert client.request(method, path).status_code == 401


def test_verify_and_checkpoint_through_the_api(operator: ApiClient) -> None:
    """An empty log verifies; after a change and a checkpoint it still does, with one checked."""
    assert operator.get("/audit-log/verify")["ok"] is True
    operator.post("/flags", FLAG)
    written = operator.post("/audit-log/checkpoint", {})
    assert written["seq"] == 1
    report = operator.get("/audit-log/verify")
    assert report["ok"] and report["checkpoints"]["checked"] >= 1  # the tick may add its own


def test_refused_operator_credentials_are_counted_slowed_and_audited(
    transport: PortalTransport, operator: ApiClient
) -> None:
    """Three wrong tokens: 401 each, the second and third answered later, one audit entry
    (the first failure; the burst's rest goes into the next entry, counted)."""
    with http(transport) as client:
        answers = [
            client.get("/api/v1/status", headers={"Authorization": f"Bearer wrong{i}"})
            for i in range(3)
        ]
    assert [a.status_code for a in answers] == [401, 401, 401]
    entries = operator.get("/audit-log?action=auth.failed")
    assert len(entries) == 1
    assert entries[0]["payload"] == {"route": "GET /api/v1/status", "failures": 1}
    assert entries[0]["actor"].startswith("unauthenticated@")
