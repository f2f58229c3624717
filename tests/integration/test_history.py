"""Status accounting on a real fleet: ``knightwatch history`` and node drain, resume, retire.

Two releases of the SMARS example are built for this file: v1 carries a dead
``powerpeg`` component; v2 drops it, changes ``config`` and adds ``docs``.
The fleet (two agents) gets v1 then v2 before any test runs; the tests read
the recorded lifecycles through the real CLI, as an operator would.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from knightwatch.bundle import BuildResult, SigningKey, build_release
from knightwatch.errors import InvalidInputError
from knightwatch.localfleet import LocalFleet
from knightwatch.testing import wait_until
from tests.helpers import EXAMPLE
from tests.integration.conftest import (
    AGENT_ARGS,
    BUILD_ENV,
    SERVER_ENV,
    SETTLE_S,
    add_user,
    deploy_ok,
    kw,
    log_tail,
)

DOCS = '[[component]]\nname = "docs"\nversion = "1.0.0"\npaths = ["docs/**"]\n\n'
V1_COMPONENTS = (
    '[[component]]\nname = "powerpeg"\nversion = "2003.1.0"\npaths = ["legacy/**"]\n\n' + DOCS
)
V2_COMPONENTS = '[[component]]\nname = "cli"\nversion = "1.0.0"\npaths = ["tools/**"]\n\n' + DOCS


@dataclass(frozen=True)
class Built:
    """The two releases of this file, in their bundle store."""

    store: Path
    v1: BuildResult
    v2: BuildResult


def smars_source(target: Path, version: str, components: str, files: dict[str, str]) -> Path:
    """A copy of examples/smars at ``version`` with extra ``components`` and ``files``."""
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    spec = target / "knightwatch.toml"
    text = spec.read_text().replace('version = "2012.8.1"', f'version = "{version}"', 1)
    spec.write_text(text.replace("[service]", components + "[service]", 1))
    for path, content in files.items():
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        (target / path).write_text(content)
    return target


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, signing_key: SigningKey) -> Built:
    """v1: core, router, config, powerpeg, docs; v2: no powerpeg, config changed, cli added."""
    work = tmp_path_factory.mktemp("history-releases")
    store = work / "store"
    v1 = smars_source(
        work / "v1",
        "2012.7.31",
        V1_COMPONENTS,
        {"legacy/power_peg.py": "def power_peg():\n    pass\n", "docs/README.md": "# SMARS\n"},
    )
    v2 = smars_source(
        work / "v2",
        "2012.8.1",
        V2_COMPONENTS,
        {"tools/replay.py": "print('replay')\n", "docs/README.md": "# SMARS\n"},
    )
    routing = v2 / "config" / "routing.toml"
    routing.write_text(routing.read_text().replace('"BATS"]', '"BATS", "EDGX"]'))
    return Built(
        store,
        build_release(v1, store, signing_key, environ=BUILD_ENV),
        build_release(v2, store, signing_key, environ=BUILD_ENV),
    )


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, key_dir: Path, built: Built, db_url: str | None
) -> Iterator[LocalFleet]:
    """Two agents that ran v1, then v2 (on each database engine)."""
    with LocalFleet(
        tmp_path_factory.mktemp("fleet"),
        nodes=2,
        trust=[key_dir / "release.pub"],
        database_url=db_url,
        server_env=SERVER_ENV,
        agent_args=AGENT_ARGS,
    ) as local:
        for release in (built.v1, built.v2):
            local.push(built.store, release.release_id)
        deploy_ok(local, built.v1)
        deploy_ok(local, built.v2)
        local.wait_state("CONVERGED", timeout=SETTLE_S)
        yield local


def history(fleet: LocalFleet, item: str) -> dict[str, Any]:
    """``knightwatch history ITEM --json``, which must succeed."""
    done = kw(fleet, "history", item, "--json")
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def states(fleet: LocalFleet, item: str) -> list[str]:
    """The states ``item`` went through, oldest first."""
    return [event["state"] for event in history(fleet, item)["events"]]


def node_row(fleet: LocalFleet, name: str) -> dict[str, Any] | None:
    """Node ``name`` as the fleet status shows it (None once it is retired)."""
    return next((n for n in fleet.status()["nodes"] if n["name"] == name), None)


class TestReleaseHistory:
    def test_superseded_release_shows_its_whole_life(self, fleet: LocalFleet, built: Built) -> None:
        """v1 was built, pushed, deployed on both nodes, active, then superseded by v2."""
        data = history(fleet, built.v1.release_id)
        assert (data["kind"], data["key"]) == ("release", built.v1.release_id)
        events = data["events"]
        assert [e["state"] for e in events] == [
            "built",
            "pushed",
            "deployed",
            "active",
            "superseded",
        ]
        assert events[0]["at"].startswith("2012-08-01T13:00:00")  # SOURCE_DATE_EPOCH
        assert "node1" in events[2]["detail"] and "node2" in events[2]["detail"]
        assert built.v2.release_id in events[4]["detail"]
        assert [e["at"] for e in events] == sorted(e["at"] for e in events)

    def test_current_release_is_active(self, fleet: LocalFleet, built: Built) -> None:
        """v2, found by name@version, is active; the table shows each state."""
        assert states(fleet, "smars@2012.8.1") == ["built", "pushed", "deployed", "active"]
        table = kw(fleet, "history", built.v2.release_id)
        assert table.returncode == 0, table.stderr
        for word in ("built", "pushed", "deployed", "active", "node1", "node2"):
            assert word in table.stdout, table.stdout

    def test_components_added_changed_retired(self, fleet: LocalFleet) -> None:
        """Components follow the fleet's releases: dropped retire, changed change, new add."""
        assert states(fleet, "smars/powerpeg") == ["added", "retired"]
        assert states(fleet, "smars/config") == ["added", "changed"]
        assert states(fleet, "component:cli") == ["added"]
        assert states(fleet, "smars/core") == ["added"]
        assert states(fleet, "smars/docs") == ["added"]

    def test_unknown_item_is_one_line_with_a_hint_and_exit_2(self, fleet: LocalFleet) -> None:
        """``history`` of something that does not exist exits 2 with an error and a hint."""
        done = kw(fleet, "history", "no-such-thing")
        assert done.returncode == 2, (done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert lines[0].startswith("error:") and "no-such-thing" in lines[0]
        assert lines[1].startswith("hint:")


class TestNodeLifecycle:
    def test_node_history_shows_enrolled_then_active(self, fleet: LocalFleet) -> None:
        """node1 enrolled, then became active with its first release (once)."""
        events = history(fleet, "node1")["events"]
        assert [e["state"] for e in events] == ["enrolled", "active"]
        assert events[0]["actor"] == "node1"

    @pytest.mark.parametrize(
        "body",
        [{}, {"reason": ""}, {"reason": "x" * 1001}, {"reason": "x", "extra": 1}, {"reason": " "}],
        ids=["missing", "empty", "too-long", "extra-key", "blank"],
    )
    def test_bad_request_body_is_refused(self, fleet: LocalFleet, body: dict[str, Any]) -> None:
        """A drain without a 1-1000 character reason, or with unknown keys, changes nothing."""
        with pytest.raises(InvalidInputError):
            fleet.client.post("/nodes/node1/drain", body)
        assert states(fleet, "node:node1") == ["enrolled", "active"]

    def test_drain_resume_retire_through_the_cli(self, fleet: LocalFleet) -> None:
        """node2 is drained, resumed and retired by the CLI; its agent can no longer connect."""
        erin = add_user(fleet, "erin", "operator")
        drained = kw(fleet, "node", "drain", "node2", "--reason", "disk swap", token=erin)
        assert drained.returncode == 0, drained.stderr
        assert "drained" in drained.stdout
        row = node_row(fleet, "node2")
        assert row is not None and row["status"] == "drained" and row["connected"]

        again = kw(fleet, "node", "drain", "node2", "--reason", "twice")
        assert again.returncode == 2 and "only an enrolled node" in again.stderr

        resumed = kw(fleet, "node", "resume", "node2", "--reason", "disk ok", "--json")
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["status"] == "enrolled"

        credential = json.loads((fleet.root("node2") / "agent" / "credential.json").read_text())[
            "credential"
        ]
        retired = kw(fleet, "node", "retire", "node2", "--reason", "decommissioned")
        assert retired.returncode == 0, retired.stderr

        events = history(fleet, "node:node2")["events"]
        assert [(e["state"], e["reason"]) for e in events] == [
            ("enrolled", "join token redeemed"),
            ("active", "deployment 1 (deploy)"),
            ("drained", "disk swap"),
            ("active", "disk ok"),
            ("retired", "decommissioned"),
        ]
        assert events[2]["actor"] == "erin"
        assert node_row(fleet, "node2") is None  # retired nodes leave the fleet status

        def agent_refused() -> bool:  # its live connection was closed; reconnects are refused
            return "agent connection refused: node 'node2'" in log_tail(fleet, "server", 400)

        wait_until(agent_refused, timeout=SETTLE_S, what="node2's agent to be refused")
        headers = {"X-Knightwatch-Node": "node2", "Authorization": f"Bearer {credential}"}
        with pytest.raises(InvalidStatus) as refused:
            connect(
                fleet.url.replace("http", "ws", 1) + "/api/agent/v1/connect",
                additional_headers=headers,
                open_timeout=30,
                proxy=None,
                ssl=fleet.ssl_context,
            ).close()
        assert refused.value.response.status_code in (401, 403)
        blob = httpx.get(
            f"{fleet.url}/api/agent/v1/blobs/{'0' * 64}",
            headers=headers,
            trust_env=False,
            verify=fleet.verify,
        )
        assert blob.status_code == 401
