"""People and roles on a real control plane, through the real CLI (issue 13, P7).

One fleet for the module: the admin adds users of every role, and each role
is tried on what it may and may not do. Every refusal must name the user,
their role and the role needed, and change nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from knightwatch.localfleet import LocalFleet
from tests.integration.conftest import SETTLE_S, Releases, add_user, kw, make_fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Iterator[LocalFleet]:
    """Two nodes on v1."""
    with make_fleet(tmp_path_factory.mktemp("users"), releases, nodes=2) as local:
        local.push(releases.store, releases.v1.release_id)
        assert local.deploy(releases.v1.release_id, timeout=180)["state"] == "SUCCEEDED"
        yield local


def refused(done: subprocess.CompletedProcess[str], needed: str) -> None:
    """A CLI call refused for its role: exit 2, one line naming the role needed."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"needs {needed} or above" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_fleet_up_made_an_admin_whose_token_file_is_private(fleet: LocalFleet) -> None:
    """`fleet up` ran `knightwatch init`: user admin, its token in a mode-600 file."""
    assert fleet.token_file.stat().st_mode & 0o077 == 0
    me = kw(fleet, "user", "whoami", "--json")
    assert me.returncode == 0, me.stderr
    assert json.loads(me.stdout) == {"name": "admin", "role": "admin"}


def test_a_viewer_reads_but_cannot_deploy_kill_or_add_users(
    fleet: LocalFleet, releases: Releases
) -> None:
    """status and the audit log work for a viewer; deploy, kill, flags and users are refused."""
    token = add_user(fleet, "vera", "viewer")
    assert kw(fleet, "status", "--json", token=token).returncode == 0
    assert kw(fleet, "audit-log", "show", "--json", token=token).returncode == 0
    assert kw(fleet, "check", "deploy", releases.v1.release_id, token=token).returncode in (0, 2)
    before = fleet.client.get("/deployments")
    refused(kw(fleet, "deploy", releases.v1.release_id, token=token), "operator")
    refused(kw(fleet, "kill", "--reason", "viewer tries", token=token), "operator")
    refused(kw(fleet, "user", "add", "eve", "--role", "admin", token=token), "admin")
    assert fleet.client.get("/deployments") == before
    assert all(e["actor"] != "vera" for e in fleet.client.get("/audit-log?limit=10000"))
    assert "eve" not in {u["name"] for u in fleet.client.get("/users")}


def test_an_operator_can_kill_and_rearm_but_not_manage_users(fleet: LocalFleet) -> None:
    """kill stays open to every operator (stopping is always allowed), recorded under their name."""
    token = add_user(fleet, "otto", "operator")
    killed = kw(fleet, "kill", "--reason", "operator drill", "--json", token=token)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    rearmed = kw(fleet, "rearm", "--reason", "drill over", "--json", token=token)
    assert rearmed.returncode == 0, rearmed.stdout + rearmed.stderr
    refused(kw(fleet, "user", "list", token=token), "admin")
    actors = {(e["action"], e["actor"]) for e in fleet.client.get("/audit-log?limit=10000")}
    assert {("halt.issued", "otto"), ("halt.lifted", "otto")} <= actors, actors


def test_the_actor_is_the_authenticated_user_and_no_header_changes_it(
    fleet: LocalFleet,
) -> None:
    """A drain sent with an X-Knightwatch-Actor header is still the caller's; a body naming
    another actor is refused."""
    token = add_user(fleet, "amy", "operator")
    client = httpx.Client(verify=fleet.ssl_context or True, timeout=30)
    with client:
        answer = client.post(
            f"{fleet.url}/api/v1/nodes/node2/drain",
            json={"reason": "disk swap"},
            headers={"Authorization": f"Bearer {token}", "X-Knightwatch-Actor": "mallory"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["actor"] == "amy"
        smuggled = client.post(
            f"{fleet.url}/api/v1/nodes/node2/resume",
            json={"reason": "ok", "by": "mallory"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert smuggled.status_code == 400, smuggled.text  # no field names another actor
        assert "by: Extra inputs are not permitted" in smuggled.json()["error"]
        resumed = client.post(
            f"{fleet.url}/api/v1/nodes/node2/resume",
            json={"reason": "ok"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resumed.status_code == 200 and resumed.json()["actor"] == "amy"
    actors = {e["actor"] for e in fleet.client.get("/audit-log?limit=10000")}
    assert "amy" in actors and "mallory" not in actors


def test_revoke_and_rotate_take_effect_at_once_and_names_are_never_reused(
    fleet: LocalFleet,
) -> None:
    """A rotated token stops working, the new one works; a revoked user is refused; the
    name cannot be added again; the last admin cannot be revoked."""
    old = add_user(fleet, "rita", "operator")
    rotated = kw(fleet, "user", "rotate", "rita", "--json")
    assert rotated.returncode == 0, rotated.stderr
    new = json.loads(rotated.stdout)["token"]
    assert new != old and new.startswith("kwu_")
    gone = kw(fleet, "status", token=old)
    assert gone.returncode != 0 and "wrong or revoked" in gone.stderr, gone.stderr
    assert kw(fleet, "status", token=new).returncode == 0
    assert kw(fleet, "user", "revoke", "rita").returncode == 0
    assert kw(fleet, "status", token=new).returncode != 0
    again = kw(fleet, "user", "add", "rita", "--role", "viewer")
    assert again.returncode == 2 and "never reused" in again.stderr, again.stderr
    last = kw(fleet, "user", "revoke", "admin")
    assert last.returncode == 2 and "last active admin" in last.stderr, last.stderr
    listed = {u["name"]: u for u in json.loads(kw(fleet, "user", "list", "--json").stdout)}
    assert listed["rita"]["active"] is False and listed["admin"]["active"] is True
    assert not any("token" in key for u in listed.values() for key in u)
    actions = [
        (e["action"], e["object"]) for e in fleet.client.get("/audit-log?action=user.revoked")
    ]
    assert ("user.revoked", "rita") in actions


@pytest.mark.parametrize(
    ("name", "role", "expected"),
    [
        ("bad name", "viewer", "not a user name"),
        ("x" * 65, "viewer", "not a user name"),
        ("ok", "root", "root"),
        ("\x1b[31mred", "viewer", "not a user name"),
    ],
    ids=["space", "too-long", "unknown-role", "escape"],
)
def test_bad_users_are_refused_and_add_nothing(
    fleet: LocalFleet, name: str, role: str, expected: str
) -> None:
    """A bad name or role is refused by name (exit 2) and adds no user."""
    before = fleet.client.get("/users")
    done = kw(fleet, "user", "add", name, "--role", role)
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr or expected in done.stdout, done.stderr
    assert fleet.client.get("/users") == before


def test_credentials_do_not_cross_between_agents_and_people(fleet: LocalFleet) -> None:
    """A node's credential is refused on the operator API; a user's token on the agent API."""
    credential = json.loads((fleet.root("node1") / "agent" / "credential.json").read_text())
    node_headers = {
        "X-Knightwatch-Node": "node1",
        "Authorization": f"Bearer {credential['credential']}",
    }
    with httpx.Client(verify=fleet.ssl_context or True, timeout=30) as client:
        as_operator = client.get(f"{fleet.url}/api/v1/status", headers=node_headers)
        assert as_operator.status_code == 401, as_operator.text
        as_agent = client.get(
            f"{fleet.url}/api/agent/v1/blobs/{'0' * 64}",
            headers={"X-Knightwatch-Node": "node1", "Authorization": f"Bearer {fleet.token}"},
        )
        assert as_agent.status_code == 401, as_agent.text
    url = fleet.url.replace("http", "ws", 1) + "/api/agent/v1/connect"
    with pytest.raises(InvalidStatus):
        connect(
            url,
            additional_headers={
                "X-Knightwatch-Node": "node1",
                "Authorization": f"Bearer {fleet.token}",
            },
            open_timeout=SETTLE_S,
            proxy=None,
            ssl=fleet.ssl_context,
        )


def test_init_makes_one_first_admin_and_refuses_a_second(tmp_path: Path) -> None:
    """`knightwatch init` on a new data directory prints a token once; again, it is refused."""
    knightwatch = str(Path(sys.executable).with_name("knightwatch"))
    data = tmp_path / "data"
    first = subprocess.run(
        [knightwatch, "init", "--data", str(data), "--name", "alice", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert first.returncode == 0, first.stderr
    made = json.loads(first.stdout)
    assert made["name"] == "alice" and made["role"] == "admin" and made["token"].startswith("kwu_")
    assert (data / "users.key").stat().st_mode & 0o077 == 0
    assert made["token"] not in (data / "knightwatch.db").read_bytes().decode("latin-1")
    second = subprocess.run(
        [knightwatch, "init", "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert second.returncode == 2, second.stdout + second.stderr
    assert "already has users" in second.stderr and "Traceback" not in second.stderr
