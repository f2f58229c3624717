"""Retired code is removed from every node and its absence verified (P3).

smars 2012.7.1 ships a ``powerpeg`` component; 2012.7.2 drops it. After the
fleet moves to 2012.7.2 the audit checks that no powerpeg file is left on
any node; once 2012.7.3 is out, 2012.7.1 can be retired: every node deletes
it and reports its absence — an offline node when it returns — and it can
never be deployed again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from knightwatch.bundle import BuildResult, SigningKey, build_release
from knightwatch.errors import GateRefusedError
from knightwatch.localfleet import LocalFleet
from knightwatch.testing import wait_until
from tests.integration.conftest import (
    BUILD_ENV,
    SETTLE_S,
    Releases,
    converge_on,
    deploy_ok,
    make_fleet,
    smars_variant,
)

POWER_PEG = '''"""Power Peg: retired in 2003, repurposed flag woken in 2012."""


def run() -> None:
    """Buy high, sell low, forever."""
'''


def _build(
    work: Path, store: Path, key: SigningKey, version: str, *, power_peg: bool
) -> BuildResult:
    source = smars_variant(work / version, version)
    spec = source / "knightwatch.toml"
    text = spec.read_text()
    if power_peg:
        (source / "smars" / "powerpeg.py").write_text(POWER_PEG)
        text = text.replace(
            '[[component]]\nname = "config"',
            '[[component]]\nname = "powerpeg"\nversion = "2003.1.0"\n'
            'paths = ["smars/powerpeg.py"]\n\n[[component]]\nname = "config"',
            1,
        )
    spec.write_text(text)
    return build_release(source, store, key, environ=BUILD_ENV)


@pytest.fixture(scope="module")
def generations(
    releases: Releases, signing_key: SigningKey, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, BuildResult]:
    """2012.7.1 with powerpeg, 2012.7.2 and 2012.7.3 without it."""
    work = tmp_path_factory.mktemp("generations")
    return {
        "with": _build(work, releases.store, signing_key, "2012.7.1", power_peg=True),
        "without": _build(work, releases.store, signing_key, "2012.7.2", power_peg=False),
        "next": _build(work, releases.store, signing_key, "2012.7.3", power_peg=False),
    }


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    releases: Releases,
    generations: dict[str, BuildResult],
) -> Iterator[LocalFleet]:
    """Two nodes that ran 2012.7.1 and now run 2012.7.2."""
    directory = tmp_path_factory.mktemp("retire-fleet")
    with make_fleet(directory, releases, nodes=2, agent_args=("--stat-interval", "1")) as fleet:
        for release in generations.values():
            fleet.push(releases.store, release.release_id)
        deploy_ok(fleet, generations["with"])
        converge_on(fleet, generations["without"])
        yield fleet


def _audit(fleet: LocalFleet) -> dict[str, object]:
    started = fleet.client.post("/audits", {})

    def complete() -> dict[str, object] | None:
        report: dict[str, object] = fleet.client.get(f"/audits/{started['audit_id']}")
        return report if report["complete"] else None

    return wait_until(complete, timeout=SETTLE_S, what="audit complete", interval=0.2)


def test_a_dropped_component_is_absent_and_audited(
    fleet: LocalFleet, generations: dict[str, BuildResult]
) -> None:
    """After the deploy no powerpeg file is on any node; a planted one is named by the audit."""
    for name in fleet.names:
        tree = fleet.root(name) / "releases" / generations["without"].digest
        assert not (tree / "smars" / "powerpeg.py").exists()
    assert _audit(fleet)["ok"] is True
    tree = fleet.root("node2") / "releases" / generations["without"].digest
    (tree / "smars").chmod(0o755)
    (tree / "smars" / "powerpeg.py").write_text(POWER_PEG)
    report = _audit(fleet)
    assert report["ok"] is False
    node = next(n for n in report["nodes"] if n["node"] == "node2")  # type: ignore[attr-defined]
    kinds = {(f["kind"], f.get("path")) for f in node["findings"]}
    assert ("retired-present", "smars/powerpeg.py") in kinds
    assert ("unmanaged", "smars/powerpeg.py") in kinds
    done = fleet.client.post("/nodes/node2/reconcile", {})
    assert fleet.wait_deployment(done["id"], timeout=180)["state"] == "SUCCEEDED"
    wait_until(lambda: _audit(fleet)["ok"], timeout=SETTLE_S, what="clean audit")


def test_retire_is_refused_for_the_rollback_target(
    fleet: LocalFleet, generations: dict[str, BuildResult]
) -> None:
    """2012.7.1 is the rollback target, 2012.7.2 is active: neither may be retired."""
    for release in (generations["with"], generations["without"]):
        with pytest.raises(GateRefusedError):
            fleet.client.post(f"/releases/{release.release_id}/retire", {"reason": "test"})


def test_retired_release_is_deleted_everywhere_offline_node_included(
    fleet: LocalFleet, generations: dict[str, BuildResult]
) -> None:
    """Every node deletes 2012.7.1 and verifies it; node2 does so when it reconnects."""
    deploy_ok(fleet, generations["next"])
    old = generations["with"]
    for name in fleet.names:  # old code lingering on disk, as Power Peg did
        lingering = fleet.root(name) / "releases" / old.digest / "smars"
        lingering.mkdir(parents=True, exist_ok=True)
        (lingering / "powerpeg.py").write_text(POWER_PEG)
    fleet.stop_agent("node2")
    report = fleet.client.post(f"/releases/{old.release_id}/retire", {"reason": "dead code"})
    states = {n["node"]: n["state"] for n in report["nodes"]}
    assert states["node2"] == "pending"

    def node_1_done() -> bool:
        data = fleet.client.get(f"/retirements/{report['retirement_id']}")
        return any(n["node"] == "node1" and n["state"] == "absent" for n in data["nodes"])

    wait_until(node_1_done, timeout=SETTLE_S, what="node1 verified absence")
    assert not (fleet.root("node1") / "releases" / old.digest).exists()
    assert (fleet.root("node2") / "releases" / old.digest).exists()
    fleet.start_agent("node2")

    def complete() -> dict[str, object] | None:
        data: dict[str, object] = fleet.client.get(f"/retirements/{report['retirement_id']}")
        return data if data["complete"] else None

    final = wait_until(complete, timeout=SETTLE_S, what="retirement complete")
    assert all(n["state"] == "absent" for n in final["nodes"])  # type: ignore[attr-defined]
    assert not (fleet.root("node2") / "releases" / old.digest).exists()
    with pytest.raises(GateRefusedError, match="retired"):
        fleet.client.post("/deployments", {"release": old.release_id})
    history = fleet.client.get(f"/history?item={quote(old.release_id)}")
    assert [e["state"] for e in history["events"]][-2:] == ["retiring", "retired"]
