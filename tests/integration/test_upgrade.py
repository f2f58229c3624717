"""The control plane upgrades a real 0.1.0 store in place (issue 19).

knightwatch 0.1.0 — the released wheel, its server and its agents — runs a
fleet under the standard approval policy and leaves a store with real data
in it: releases, nodes, deployments (each a change request approved by a
second person), flag values, a halt and its re-arm, an acknowledged alert,
users (one revoked), a change request left open, and the audit log with its
checkpoints. Today's server then starts on the same data directory and
database. Everything 0.1.0 recorded must still be there, as it was, the
audit chain must still verify, and the fleet must keep working. Going back
to 0.1.0 afterwards is refused at start, with nothing changed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory

from knightwatch.localfleet import LocalFleet
from knightwatch.polling import wait_until
from knightwatch.store.migrate import alembic_config
from tests.integration.conftest import (
    AGENT_ARGS,
    SERVER_ENV,
    SETTLE_S,
    Releases,
    add_user,
    current_digest,
    kw,
)
from tests.upgrade.old_release import old_command, old_env, unpack_old_release

PENDING = 3
OLD_HEAD = "0008_changes"
# Read-time figures that move with the clock, not with the data.
VOLATILE = {"age_s", "since_s", "last_seen", "last_seen_at", "seen_s", "now", "server_time"}
# A firing alert keeps counting while its cause lasts: these may only grow.
GROWING = {"count", "last_at"}


@pytest.fixture(scope="module")
def old_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """knightwatch 0.1.0, unpacked."""
    return unpack_old_release(tmp_path_factory.mktemp("knightwatch-0.1.0"))


@pytest.fixture
def old_fleet(
    tmp_path: Path, releases: Releases, old_release: Path, db_url: str | None
) -> Iterator[LocalFleet]:
    """A 0.1.0 control plane and two 0.1.0 agents, standard approvals, v1 and v2 pushed."""
    old = {"PYTHONPATH": str(old_release)}
    fleet = LocalFleet(
        tmp_path / "fleet",
        nodes=2,
        trust=[releases.public_key],
        database_url=db_url,
        server_env={**SERVER_ENV, "KNIGHTWATCH_APPROVALS": "standard", **old},
        agent_args=AGENT_ARGS,
        agent_env=old,
    )
    with fleet:
        assert _runs_from(fleet.server_pid, old_release)
        fleet.push(releases.store, releases.v1.release_id)
        fleet.push(releases.store, releases.v2.release_id)
        yield fleet


def _runs_from(pid: int, directory: Path) -> bool:
    """Whether process ``pid`` imports knightwatch from ``directory`` (its PYTHONPATH)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return f"PYTHONPATH={directory}".encode() in environ


def carry_out(fleet: LocalFleet, approvers: list[str], *args: str) -> dict[str, Any]:
    """Run ``knightwatch ARGS`` as the admin; if it is proposed, approve, tick and execute it."""
    done = kw(fleet, *args, "--json")
    if done.returncode == PENDING:
        change = json.loads(done.stdout)["change"]
        for token in approvers[: change["approvals_needed"]]:
            approved = kw(fleet, "change", "approve", str(change["id"]), token=token)
            assert approved.returncode == 0, approved.stdout + approved.stderr
        for item in change["checklist"]:
            ticked = kw(fleet, "change", "tick", str(change["id"]), item["item"])
            assert ticked.returncode == 0, ticked.stdout + ticked.stderr
        done = kw(fleet, "change", "execute", str(change["id"]), "--wait", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout))


def make_history(fleet: LocalFleet, releases: Releases) -> None:
    """Everything a few weeks of 0.1.0 leave in a store, done through 0.1.0's own API."""
    approvers = [add_user(fleet, "bob", "approver"), add_user(fleet, "carol", "approver")]
    add_user(fleet, "alice", "operator")
    add_user(fleet, "mallory", "viewer")
    assert kw(fleet, "user", "revoke", "mallory").returncode == 0
    for release in (releases.v1, releases.v2):
        deployment = carry_out(fleet, approvers, "deploy", release.release_id)
        assert deployment["state"] == "SUCCEEDED", deployment
    carry_out(fleet, approvers, "flags", "set", "rlp.enabled", "true", "--reason", "RLP live")
    wait_until(
        lambda: fleet.client.get("/flags/rlp.enabled")["values"],
        timeout=SETTLE_S,
        what="rlp.enabled set",
    )
    halted = kw(fleet, "kill", "--reason", "drill: runaway orders", "--json")
    assert halted.returncode == 0, halted.stdout + halted.stderr
    carry_out(fleet, approvers, "rearm", "--reason", "drill over")
    fleet.wait_state("CONVERGED", timeout=SETTLE_S)
    left_open = kw(fleet, "deploy", releases.v1.release_id, "--reason", "left open", "--json")
    assert left_open.returncode == PENDING, left_open.stdout + left_open.stderr
    tree = fleet.root("node1") / "releases" / str(current_digest(fleet, "node1"))
    (tree / "smars").chmod(0o755)
    (tree / "smars" / "by_hand.py").write_text("print('not from the release')\n")
    alert = wait_until(
        lambda: next(
            (a for a in fleet.client.get("/alerts?state=firing") if a["rule"] == "node-drift"),
            None,
        ),
        timeout=SETTLE_S,
        what="the drift alert",
    )
    acked = kw(fleet, "alerts", "ack", str(alert["id"]), "--comment", "looking")
    assert acked.returncode == 0, acked.stderr
    assert kw(fleet, "audit-log", "checkpoint").returncode == 0


def snapshot(fleet: LocalFleet) -> dict[str, Any]:
    """What the control plane says it holds, through its API."""
    client = fleet.client
    exported = kw(fleet, "audit-log", "export")
    assert exported.returncode == 0, exported.stderr
    return {
        "releases": client.get("/releases"),
        "deployments": [client.get(f"/deployments/{d['id']}") for d in client.get("/deployments")],
        "alerts": [client.get(f"/alerts/{a['id']}") for a in client.get("/alerts")],
        "halts": [client.get(f"/halts/{h['halt_id']}") for h in client.get("/halts")],
        "flags": client.get("/flags"),
        "flag_history": client.get("/flags/rlp.enabled/history"),
        "users": client.get("/users"),
        "changes": [client.get(f"/changes/{c['id']}") for c in client.get("/changes")],
        "audit_log": [json.loads(line) for line in exported.stdout.splitlines() if line],
    }


def differences(before: Any, after: Any, where: str = "") -> list[str]:
    """Where ``after`` lost or changed something ``before`` had (new keys and rows are fine)."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key, value in before.items():
            if key in VOLATILE:
                continue
            if key in GROWING and key in after and after[key] is not None:
                if value is not None and after[key] < value:
                    found.append(f"{where}.{key}: {value!r} went back to {after[key]!r}")
                continue
            if key not in after:
                found.append(f"{where}.{key}: missing")
            else:
                found += differences(value, after[key], f"{where}.{key}")
        return found
    if isinstance(before, list) and isinstance(after, list):
        key = _identity(before)
        if key is not None:
            by_id = {item.get(key): item for item in after if isinstance(item, dict)}
            found = []
            for item in before:
                place = f"{where}[{key}={item[key]}]"
                if item[key] not in by_id:
                    found.append(f"{place}: missing")
                else:
                    found += differences(item, by_id[item[key]], place)
            return found
        if len(after) < len(before):
            return [f"{where}: {len(before)} items became {len(after)}"]
        pairs = zip(before, after, strict=False)
        return [d for i, (a, b) in enumerate(pairs) for d in differences(a, b, f"{where}[{i}]")]
    return [] if before == after else [f"{where}: {before!r} became {after!r}"]


def _identity(rows: list[Any]) -> str | None:
    """The key that names each row of ``rows`` (``id``, ``halt_id``, …), if they have one."""
    for key in ("id", "halt_id", "digest", "name"):
        if rows and all(isinstance(row, dict) and key in row for row in rows):
            return key
    return None


def test_a_0_1_0_store_with_real_data_upgrades_in_place(
    old_fleet: LocalFleet, releases: Releases, old_release: Path
) -> None:
    """0.1.0's data survives today's server starting on it; the chain verifies; work goes on."""
    fleet = old_fleet
    make_history(fleet, releases)
    before = snapshot(fleet)
    assert before["audit_log"] and before["changes"] and before["halts"]
    fleet.stop_server(signal.SIGTERM)

    data = ["--data", str(fleet.directory / "server")]
    if fleet._database_url:
        data += ["--db", fleet._database_url]
    checked = kw(fleet, "server", *data, "--check-upgrade", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    plan = json.loads(checked.stdout)
    scripts = ScriptDirectory.from_config(alembic_config())
    newer = [r.revision for r in scripts.iterate_revisions("heads", OLD_HEAD)][::-1]
    assert plan["current"] == OLD_HEAD
    assert [m["revision"] for m in plan["pending"]] == newer
    again = json.loads(kw(fleet, "server", *data, "--check-upgrade", "--json").stdout)
    assert again["current"] == OLD_HEAD  # checking changed nothing

    fleet.start_server(env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert not _runs_from(fleet.server_pid, old_release)
    fleet.wait_connected(fleet.names, timeout=SETTLE_S)
    after = snapshot(fleet)
    lost = differences(before, after)
    assert lost == [], "\n".join(lost[:40])
    verified = kw(fleet, "audit-log", "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    if plan["pending"]:
        assert json.loads(kw(fleet, "server", *data, "--check-upgrade", "--json").stdout)[
            "up_to_date"
        ]
        if fleet._database_url is None:  # SQLite: the store as 0.1.0 left it, copied aside
            head = plan["head"]
            assert (fleet.directory / "server" / f"knightwatch.db.before-{head}").exists()

    drift = next(a for a in after["alerts"] if a["rule"] == "node-drift")
    resolved = kw(fleet, "alerts", "resolve", str(drift["id"]), "--comment", "after upgrade")
    assert resolved.returncode == 0, resolved.stdout + resolved.stderr
    status = fleet.status()
    assert {n["name"] for n in status["nodes"]} == set(fleet.names)
    assert kw(fleet, "audit-log", "verify").returncode == 0

    # Back to 0.1.0: it refuses the newer schema at start and changes nothing.
    fleet.stop_server(signal.SIGTERM)
    downgrade = subprocess.run(
        old_command("server", *data, "--port", str(fleet.port)),
        env=old_env(old_release),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert downgrade.returncode != 0, downgrade.stdout + downgrade.stderr
    assert "newer knightwatch" in downgrade.stderr, downgrade.stderr
    assert "Traceback" not in downgrade.stderr, downgrade.stderr
    after_refusal = json.loads(kw(fleet, "server", *data, "--check-upgrade", "--json").stdout)
    assert after_refusal["current"] == plan["head"] and after_refusal["up_to_date"]
