"""Feature flags end to end on a real control plane and real agents: the Knight sequence.

Eight nodes, as at Knight. The old release (2003.1.1) declares ``power_peg``
but not ``rlp.enabled``; the new one (examples/smars) declares
``rlp.enabled``. While node8 still runs the old release, setting
``rlp.enabled`` is refused naming node8; once node8 is deployed it is
accepted and every node's flags.json holds it, acknowledged. A release
declaring the retired ``power_peg``, or ``rlp.enabled`` with another
description, is refused at push.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from knightwatch.bundle import BuildResult, build_release
from knightwatch.bundle.signing import SigningKey
from knightwatch.errors import KnightwatchError
from knightwatch.localfleet import LocalFleet
from knightwatch.sdk.flags import Flags
from knightwatch.testing import wait_until
from tests.integration.conftest import (
    BUILD_ENV,
    SETTLE_S,
    Releases,
    deploy_ok,
    kw,
    make_fleet,
    smars_variant,
    wait_idle,
)

NODES = tuple(f"node{i}" for i in range(1, 9))
OLD_CODE = "node8"
POWER_PEG = """
[[flag]]
name = "power_peg"
kind = "release"
description = "Power Peg: the 2003 test order generator"
default = false
"""


def _variant(
    work: Path, name: str, version: str, store: Path, key: SigningKey, edit: Any
) -> BuildResult:
    source = smars_variant(work / name, version)
    spec = source / "knightwatch.toml"
    spec.write_text(edit(spec.read_text()))
    return build_release(source, store, key, environ=BUILD_ENV)


def _without_rlp(text: str) -> str:
    return re.sub(r"\[\[flag\]\]\nname = \"rlp.enabled\"[^\[]*", "", text, count=1) + POWER_PEG


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory, releases: Releases, signing_key: SigningKey
) -> dict[str, BuildResult]:
    """The old release, and two releases the registry must refuse."""
    work = tmp_path_factory.mktemp("flag-releases")
    store = releases.store
    return {
        "old": _variant(work, "old", "2003.1.1", store, signing_key, _without_rlp),
        "peg": _variant(work, "peg", "2012.8.7", store, signing_key, lambda t: t + POWER_PEG),
        "reworded": _variant(
            work,
            "reworded",
            "2012.8.8",
            store,
            signing_key,
            lambda t: t.replace("Retail Liquidity Program routing", "RLP order routing", 1),
        ),
    }


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, releases: Releases, built: dict[str, BuildResult]
) -> Iterator[LocalFleet]:
    """Eight nodes on the new release except node8, which still runs the old one."""
    directory = tmp_path_factory.mktemp("flag-fleet")
    with make_fleet(
        directory, releases, nodes=len(NODES), agent_args=("--health-timeout", "30")
    ) as fleet:
        fleet.push(releases.store, built["old"].release_id)
        fleet.push(releases.store, releases.v1.release_id)
        deploy_ok(fleet, built["old"])
        deploy_ok(fleet, releases.v1, nodes=",".join(NODES[:-1]))
        wait_idle(fleet)
        yield fleet


def flags_file(fleet: LocalFleet, node: str) -> dict[str, Any]:
    """The node's flags.json as its service reads it."""
    data: dict[str, Any] = json.loads((fleet.root(node) / "flags.json").read_text())
    return data


def test_a_flag_the_old_release_does_not_declare_is_refused_naming_the_node(
    fleet: LocalFleet,
) -> None:
    """node8 runs old code: setting rlp.enabled is refused (exit 2), naming node8; nothing set."""
    done = kw(fleet, "flags", "set", "rlp.enabled", "true", "--json")
    assert done.returncode == 2, done.stdout + done.stderr
    refusals = json.loads(done.stdout)["refusals"]
    checks = {r["check"]: r for r in refusals}
    assert checks["release-declares-flag"]["subjects"] == [OLD_CODE]
    assert checks["scope-converged"]["subjects"] == [OLD_CODE]
    assert fleet.client.get("/flags/rlp.enabled")["values"] == []
    assert flags_file(fleet, "node1")["flags"]["rlp.enabled"]["value"] is False
    dry = kw(fleet, "check", "flag-set", "--flag", "rlp.enabled", "--value", "true")
    assert dry.returncode == 2 and OLD_CODE in dry.stdout


def test_after_the_eighth_server_is_deployed_the_flag_reaches_every_node(
    fleet: LocalFleet, releases: Releases
) -> None:
    """Deploy node8, then the same set is accepted, acknowledged by all, and in every flags.json."""
    deploy_ok(fleet, releases.v1, nodes=OLD_CODE)
    fleet.wait_state("CONVERGED", timeout=SETTLE_S)
    done = kw(
        fleet,
        "flags",
        "set",
        "rlp.enabled",
        "true",
        "--reason",
        "RLP live",
        "--wait",
        "60",
        "--json",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    change = json.loads(done.stdout)
    assert change["acknowledged"] == sorted(NODES) and change["missing"] == []
    for node in NODES:
        written = flags_file(fleet, node)
        assert written["version"] >= change["version"]
        assert written["flags"]["rlp.enabled"] == {
            "kind": "release",
            "type": "boolean",
            "default": False,
            "value": True,
            "source": "fleet",
        }
        with Flags(path=fleet.root(node) / "flags.json", evaluations_dir=None) as sdk:
            assert sdk.is_enabled("rlp.enabled") is True
    history = fleet.client.get("/flags/rlp.enabled/history")
    assert history[0]["kind"] == "set" and history[0]["new"] is True


def test_a_staged_change_goes_node_by_node_then_fleet_wide(fleet: LocalFleet) -> None:
    """--stage 12% --stage node2: node1, then node2, each acknowledged; then the fleet; the
    stages' own values removed, every node on the fleet value."""
    done = kw(
        fleet,
        "flags",
        "set",
        "rlp.enabled",
        "false",
        "--stage",
        "12%",
        "--stage",
        "node2",
        "--reason",
        "staged",
        "--wait",
        "60",
        "--json",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stage 1/2: node:node1" in done.stderr and "stage 2/2: node:node2" in done.stderr
    values = fleet.client.get("/flags/rlp.enabled")["values"]
    assert [(v["scope"], v["value"]) for v in values] == [("fleet", False)]
    for node in NODES:
        assert flags_file(fleet, node)["flags"]["rlp.enabled"]["value"] is False
    kinds = [(c["kind"], c["scope"]) for c in fleet.client.get("/flags/rlp.enabled/history")[:5]]
    assert kinds == [
        ("unset", "node:node2"),
        ("unset", "node:node1"),
        ("set", "fleet"),
        ("set", "node:node2"),
        ("set", "node:node1"),
    ]


def test_a_wrong_type_is_refused_and_changes_nothing(fleet: LocalFleet) -> None:
    """A string for a boolean flag: exit 2 before anything is sent."""
    before = fleet.client.get("/flags/rlp.enabled")["values"]
    done = kw(fleet, "flags", "set", "rlp.enabled", "yes-please")
    assert done.returncode == 2
    assert "not a boolean" in done.stderr
    assert fleet.client.get("/flags/rlp.enabled")["values"] == before


def test_hostile_flag_names_are_refused(fleet: LocalFleet) -> None:
    """Path separators, NUL and 10 KB names: a clear refusal, nothing created."""
    for name in ("../etc/passwd", "a/b", "x\x00y", "a" * 10_000):
        with pytest.raises(KnightwatchError):
            fleet.client.post(
                "/flags", {"name": name, "kind": "ops", "description": "d", "default": 1}
            )
    assert all(
        f["name"] in ("power_peg", "rlp.enabled", "smars.halt") for f in fleet.client.get("/flags")
    )


def test_a_restarted_agent_keeps_the_current_values(fleet: LocalFleet) -> None:
    """node2's agent restarts: its service starts with flags.json at the control plane's values."""
    done = kw(fleet, "flags", "set", "rlp.enabled", "true", "--wait", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    fleet.stop_agent("node2")
    wait_until(
        lambda: not next(n for n in fleet.status()["nodes"] if n["name"] == "node2")["connected"],
        timeout=SETTLE_S,
        what="the control plane to see node2's agent gone",
    )
    refused = kw(fleet, "flags", "set", "rlp.enabled", "false", "--json")
    assert refused.returncode == 2  # node2 is not connected: nothing changes behind its back
    assert "nodes-connected" in refused.stdout
    fleet.start_agent("node2")
    fleet.wait_connected(["node2"], timeout=SETTLE_S)
    wait_until(
        lambda: flags_file(fleet, "node2")["flags"]["rlp.enabled"]["value"] is True,
        timeout=SETTLE_S,
        what="node2's flags.json to hold rlp.enabled=true after its agent restarted",
    )


def test_a_retired_flag_is_refused_at_push(
    fleet: LocalFleet, built: dict[str, BuildResult], releases: Releases
) -> None:
    """power_peg retired: a release declaring it again is refused, saying when and why."""
    done = kw(fleet, "flags", "retire", "power_peg", "--reason", "dead code since 2003")
    assert done.returncode == 0, done.stderr
    with pytest.raises(KnightwatchError, match="retired"):
        fleet.push(releases.store, built["peg"].release_id)
    assert built["peg"].release_id not in {r["release_id"] for r in fleet.client.get("/releases")}


def test_a_flag_with_a_changed_meaning_is_refused_at_push(
    fleet: LocalFleet, built: dict[str, BuildResult], releases: Releases
) -> None:
    """rlp.enabled with another description: "would change meaning — give it a new name"."""
    with pytest.raises(KnightwatchError, match="would change meaning"):
        fleet.push(releases.store, built["reworded"].release_id)


def test_a_retired_flag_still_evaluated_raises_a_critical_alert(fleet: LocalFleet) -> None:
    """Counts reported for smars.halt after it is retired: a critical alert naming the node."""
    digest = flags_file(fleet, "node1")["release"]
    counts = fleet.root("node1") / "flag-evaluations" / "4000000.json"

    def report(count: int) -> None:
        counts.write_text(
            json.dumps(
                {"format": 1, "pid": 4000000, "release": digest, "counts": {"smars.halt": count}}
            )
        )

    report(5)
    wait_until(
        lambda: any(e["count"] == 5 for e in fleet.client.get("/flags/smars.halt")["evaluations"]),
        timeout=SETTLE_S,
        what="node1's evaluation count of smars.halt to reach the control plane",
    )
    assert kw(fleet, "flags", "retire", "smars.halt", "--reason", "test").returncode == 0
    report(6)

    def alerted() -> bool:
        return any(
            a["rule"] == "flag-retired-evaluated:smars.halt"
            and a["node"] == "node1"
            and a["severity"] == "critical"
            for a in fleet.client.get("/alerts?state=firing")
        )

    wait_until(alerted, timeout=SETTLE_S, what="a critical alert for the retired smars.halt")


def sql(fleet: LocalFleet, statement: str) -> None:
    """Change the control plane's SQLite database behind its back, with the sqlite3 tool.

    The running server writes to it too (reports, alerts), so the tool waits for its lock
    as the server does instead of failing at once with "database is locked".
    """
    database = fleet.directory / "server" / "knightwatch.db"
    command = ["sqlite3", "-cmd", ".timeout 30000", str(database), statement]
    subprocess.run(command, check=True, timeout=60)


def test_the_audit_log_records_every_change_and_names_tampering(fleet: LocalFleet) -> None:
    """The flag changes, pushes and deploys above are in one intact chain; a checkpoint is
    signed; deleting the newest rows, then editing an old one, is named by verify (exit 1)."""
    done = kw(fleet, "audit-log", "verify", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["ok"] is True
    actions = {e["action"] for e in fleet.client.get("/audit-log?limit=10000")}
    assert {
        "release.pushed",
        "deploy.requested",
        "flag.declare",
        "flag.set",
        "flag.retire",
        "node.join-token",
        "alert.fired",
    } <= actions
    setter = next(e for e in fleet.client.get("/audit-log?action=flag.set&limit=10000"))
    assert setter["object"] == "rlp.enabled" and setter["payload"]["new"] is True
    assert kw(fleet, "audit-log", "checkpoint").returncode == 0
    head = json.loads(kw(fleet, "audit-log", "verify", "--json").stdout)["head_seq"]
    sql(fleet, f"DELETE FROM audit_log WHERE seq > {head - 2};")
    done = kw(fleet, "audit-log", "verify")
    assert done.returncode == 1
    assert "entries were deleted" in done.stderr or "rewritten" in done.stderr, done.stderr
    sql(fleet, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 3;")
    done = kw(fleet, "audit-log", "verify", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["broken_seq"] == 3
