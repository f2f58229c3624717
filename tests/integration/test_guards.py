"""Runtime guards and log patterns on a real fleet (P5: halt on a guard; P6: nothing silent).

Three nodes run a SMARS variant whose router is a stand-in the tests steer
over HTTP: POST /set changes the gauges it exports, POST /malformed makes
its /metrics answer garbage, POST /say prints lines to its output. The
release declares a ``halt_node`` guard and a flapping ``alert`` guard
beside the example's own guard and ``power-peg`` log pattern; the control
plane has one fleet rule over the sum of the nodes. Each test steers its
own node(s): node1 (scrapes, flapping, log), node2 (the halt), node1+node3
(the fleet rule).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from knightwatch.bundle import BuildResult, SigningKey, build_release
from knightwatch.canonical import canonical_json
from knightwatch.errors import KnightwatchError
from knightwatch.localfleet import LocalFleet
from knightwatch.testing import free_port, wait_until
from tests.integration.conftest import (
    BUILD_ENV,
    SETTLE_S,
    Releases,
    deploy_ok,
    make_fleet,
    pid_alive,
    smars_variant,
    wait_explained,
)

ROUTER = '''\
#!/usr/bin/env python3
"""A SMARS router stand-in whose metrics and output the guard tests steer over HTTP."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNTERS = {"smars_parent_shares_total": 0.0, "smars_child_shares_sent_total": 0.0}
GAUGES = {"kw_test_level": 0.0, "kw_test_flap": 0.0, "kw_test_fleet": 0.0}
MALFORMED = [False]


def metrics():
    if MALFORMED[0]:
        return "<html>this is { not prometheus text\\n"
    lines = []
    for kind, values in (("counter", COUNTERS), ("gauge", GAUGES)):
        for name, value in values.items():
            lines += [f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\\n".join(lines) + "\\n"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        routes = {
            "/health": "ok\\n",
            "/version": os.environ.get("KNIGHTWATCH_RELEASE_ID", "unknown") + "\\n",
            "/metrics": metrics(),
        }
        body = routes.get(self.path)
        self.reply(200 if body is not None else 404, body or "not found\\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/set":
            for name, value in body.items():
                (COUNTERS if name in COUNTERS else GAUGES)[name] = float(value)
        elif self.path == "/malformed":
            MALFORMED[0] = bool(body["on"])
        elif self.path == "/say":
            for i in range(body["times"]):
                print(body["text"].format(i=i + 1), flush=True)
        else:
            self.reply(404, "not found\\n")
            return
        self.reply(200, "ok\\n")

    def reply(self, status, text):
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        return


ThreadingHTTPServer(("127.0.0.1", int(os.environ["SMARS_PORT"])), Handler).serve_forever()
'''

GUARDS = """
[[guard]]
name = "level-too-high"
rule = "kw_test_level > 100.0"
severity = "critical"
action = "halt_node"

[[guard]]
name = "flapper"
rule = "kw_test_flap > 0.0"
severity = "warning"
action = "alert"
"""

FLEET_RULES = [
    {"name": "fleet-total", "rule": "kw_test_fleet > 150.0", "severity": "warning"},
    {
        "name": "fleet-runaway",
        "rule": "kw_test_fleet > 1000.0",
        "severity": "critical",
        "action": "halt_fleet",
    },
]


@pytest.fixture(scope="module")
def guarded(
    releases: Releases, signing_key: SigningKey, tmp_path_factory: pytest.TempPathFactory
) -> BuildResult:
    """smars 2012.8.60: the steerable router, a halt_node guard and a flapping guard."""
    source = smars_variant(tmp_path_factory.mktemp("guarded") / "src", "2012.8.60", launcher=ROUTER)
    spec = source / "knightwatch.toml"
    spec.write_text(spec.read_text() + GUARDS)
    return build_release(source, releases.store, signing_key, environ=BUILD_ENV)


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, releases: Releases, guarded: BuildResult
) -> Iterator[LocalFleet]:
    """Three nodes on the guarded release; the control plane has one fleet rule."""
    directory = tmp_path_factory.mktemp("guards-fleet")
    server_env = {"KNIGHTWATCH_GUARD": json.dumps(FLEET_RULES)}
    with make_fleet(directory, releases, nodes=3, server_env=server_env) as fleet:
        fleet.push(releases.store, guarded.release_id)
        deploy_ok(fleet, guarded)
        yield fleet


# -- helpers --------------------------------------------------------------------------------


def steer(fleet: LocalFleet, node: str, path: str, body: dict[str, Any]) -> None:
    """POST ``body`` to the stand-in router of ``node``."""
    url = f"http://127.0.0.1:{fleet.service_port(node)}{path}"
    httpx.post(url, json=body, timeout=10.0, trust_env=False).raise_for_status()


def alerts_for(fleet: LocalFleet, rule: str, node: str | None) -> list[dict[str, Any]]:
    """Every alert (any state) of ``rule`` on ``node``."""
    everything: list[dict[str, Any]] = fleet.client.get("/alerts?limit=1000")
    return [a for a in everything if a["rule"] == rule and a["node"] == node]


def wait_alert(
    fleet: LocalFleet, rule: str, node: str | None, *, logs: tuple[str, ...], **expect: Any
) -> dict[str, Any]:
    """Wait until the newest alert of ``rule`` on ``node`` has the ``expect``ed fields."""
    found: list[dict[str, Any]] = []

    def check() -> bool:
        found[:] = alerts_for(fleet, rule, node)[:1]
        return bool(found) and all(found[0][k] == v for k, v in expect.items())

    wait_explained(fleet, check, f"alert {rule}@{node} with {expect}", logs=logs)
    return found[0]


def node_status(fleet: LocalFleet, name: str) -> dict[str, Any]:
    """One node as GET /status shows it."""
    return next(n for n in fleet.status()["nodes"] if n["name"] == name)


def agent_events(fleet: LocalFleet, node: str, name: str) -> int:
    """How many ``event=NAME`` lines node's agent has logged."""
    text = (fleet.directory / "logs" / f"{node}.log").read_text(errors="replace")
    return len(re.findall(rf"\bevent={re.escape(name)}\b", text))


# -- the guards -----------------------------------------------------------------------------


def test_a_guard_trips_the_node_is_halted_and_an_alert_raised(fleet: LocalFleet) -> None:
    """A halt_node guard that becomes true stops that node's service and raises its alert."""
    pid = node_status(fleet, "node2")["service_pid"]
    assert pid is not None and pid_alive(pid)
    steer(fleet, "node2", "/set", {"kw_test_level": 500})
    alert = wait_alert(
        fleet, "guard:level-too-high", "node2", logs=("node2", "server"), state="firing"
    )
    assert alert["severity"] == "critical"
    assert "kw_test_level > 100.0" in alert["summary"]
    assert "halted" in alert["detail"]
    wait_until(lambda: not pid_alive(pid), timeout=SETTLE_S, what="node2's service gone")
    wait_until(
        lambda: node_status(fleet, "node2")["service_state"] == "halted",
        timeout=SETTLE_S,
        what="node2 reported halted",
    )
    assert node_status(fleet, "node2")["halt_source"] == "guard"
    others = [node_status(fleet, n) for n in ("node1", "node3")]
    assert all(n["service_state"] == "running" for n in others)  # halt_node: this node only


def test_malformed_metrics_raise_a_scrape_alert_and_the_agent_keeps_running(
    fleet: LocalFleet,
) -> None:
    """Garbage on /metrics is a scrape alert; the agent stays up and reporting; it resolves."""
    before = agent_events(fleet, "node1", "scrape-failing")
    steer(fleet, "node1", "/malformed", {"on": True})
    alert = wait_alert(fleet, "scrape", "node1", logs=("node1",), state="firing")
    assert alert["severity"] == "warning"
    assert "not Prometheus text" in alert["summary"]
    assert pid_alive(fleet.agent_pid("node1"))
    wait_until(
        lambda: node_status(fleet, "node1")["last_report_age_s"] < 1.0,
        timeout=SETTLE_S,
        what="a fresh report from node1",
    )
    status = node_status(fleet, "node1")
    assert status["connected"] and status["service_state"] == "running"
    assert agent_events(fleet, "node1", "scrape-failing") - before <= 1  # not once per scrape
    assert alerts_for(fleet, "scrape", "node1")[0]["count"] == 1
    steer(fleet, "node1", "/malformed", {"on": False})
    resolved = wait_alert(fleet, "scrape", "node1", logs=("node1",), state="resolved")
    assert resolved["id"] == alert["id"]
    assert resolved["resolved_by"] == "node:node1"


def test_a_flapping_rule_is_one_alert_with_a_count(fleet: LocalFleet) -> None:
    """true/false three times over is one alert on the control plane, counted three times."""
    for round_ in range(1, 4):
        steer(fleet, "node1", "/set", {"kw_test_flap": 1})
        wait_alert(fleet, "guard:flapper", "node1", logs=("node1",), count=round_)
        steer(fleet, "node1", "/set", {"kw_test_flap": 0})
        wait_until(
            lambda n=round_: agent_events(fleet, "node1", "guard-cleared") >= n,
            timeout=SETTLE_S,
            what=f"node1 saw flapper clear ({round_})",
        )
    [alert] = alerts_for(fleet, "guard:flapper", "node1")
    assert alert["count"] == 3
    assert alert["state"] == "firing"  # a rule turning false does not close its alert
    assert alert["fingerprint"] == "guard:flapper@node1"


def test_a_log_pattern_is_one_alert_with_count_and_first_and_last_line(
    fleet: LocalFleet,
) -> None:
    """Five 'Power Peg disabled' lines are one critical alert: count 5, first and last line."""
    steer(fleet, "node1", "/say", {"text": "Power Peg disabled (order {i})", "times": 5})
    alert = wait_alert(fleet, "log:power-peg", "node1", logs=("node1",), count=5)
    assert alert["severity"] == "critical"
    first, last = alert["detail"].splitlines()
    assert first.startswith("first matching line") and first.endswith("(order 1)")
    assert last.startswith("last matching line") and last.endswith("(order 5)")
    assert len(alerts_for(fleet, "log:power-peg", "node1")) == 1


def test_alerts_raised_while_the_control_plane_is_away_arrive_when_it_returns(
    fleet: LocalFleet,
) -> None:
    """A match while the agent is disconnected is queued and reported on reconnect."""
    fleet.stop_server()
    try:
        steer(fleet, "node3", "/say", {"text": "Power Peg disabled (late {i})", "times": 2})
        wait_until(
            lambda: agent_events(fleet, "node3", "log-pattern-matched") >= 1,
            timeout=SETTLE_S,
            what="node3 matched the lines",
        )
    finally:
        fleet.start_server()
    alert = wait_alert(fleet, "log:power-peg", "node3", logs=("node3", "server"), count=2)
    assert alert["detail"].splitlines()[0].endswith("(late 1)")


def test_a_fleet_rule_sees_the_sum_of_the_nodes(fleet: LocalFleet) -> None:
    """Two nodes at 100 each trip a fleet rule at 150 that neither trips alone."""
    steer(fleet, "node1", "/set", {"kw_test_fleet": 100})
    steer(fleet, "node3", "/set", {"kw_test_fleet": 100})
    alert = wait_alert(fleet, "fleet-guard:fleet-total", None, logs=("server",), state="firing")
    assert "kw_test_fleet=200" in alert["detail"]
    assert alert["severity"] == "warning"


# -- refusing invalid rules -----------------------------------------------------------------


def test_a_release_with_invalid_cel_is_refused_at_push_with_the_position(
    fleet: LocalFleet, releases: Releases
) -> None:
    """A hand-made manifest whose guard is not CEL is refused on upload, naming the position."""
    directory = releases.store / "releases" / releases.v1.digest
    manifest = json.loads((directory / "manifest.json").read_bytes())
    manifest["spec"]["guard"][0]["rule"] = "smars_child_shares_sent_total >"
    documents = {
        "manifest": canonical_json(manifest),
        "sbom": (directory / "sbom.cdx.json").read_bytes(),
        "envelope": (directory / "release.dsse.json").read_bytes(),
    }
    body = {k: base64.b64encode(v).decode("ascii") for k, v in documents.items()}
    with pytest.raises(KnightwatchError) as refused:
        fleet.client.post("/uploads", body)
    message = refused.value.message
    assert "guard" in message and "rule" in message
    assert "not a valid CEL expression" in message
    assert "line:col 1:32" in message


def test_a_fleet_rule_with_invalid_cel_stops_the_server_at_start(tmp_path: Path) -> None:
    """An invalid [[guard]] in server.toml is refused at start (exit 2) with the position."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "server.toml").write_text(
        '[[guard]]\nname = "broken"\nrule = "kw_orders_total >> 5"\naction = "halt_fleet"\n'
    )
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("knightwatch")),
            "server",
            "--data",
            str(data),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "250"},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "guard[0].rule" in output
    assert "line:col 1:" in output


def test_fleet_rules_over_delta_or_rate_are_refused(tmp_path: Path) -> None:
    """Fleet rules see summed values; a rule over delta or rate is refused with why."""
    data = tmp_path / "data"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("knightwatch")), "server", "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **os.environ,
            "KNIGHTWATCH_PORT": str(free_port()),
            "KNIGHTWATCH_GUARD": json.dumps([{"name": "r", "rule": "rate.orders_total > 5"}]),
        },
    )
    assert done.returncode == 2, done.stderr
    assert "per node" in done.stdout + done.stderr


# -- fleet halts (last: they stop every node) ----------------------------------------------


def test_a_node_guard_asking_for_a_fleet_halt_halts_every_node(fleet: LocalFleet) -> None:
    """The release's halt_fleet guard firing on one node halts the services of all of them."""
    rearm_all(fleet)
    pids = {n: node_status(fleet, n)["service_pid"] for n in fleet.names}
    steer(fleet, "node1", "/set", {"smars_child_shares_sent_total": 10})
    alert = wait_alert(
        fleet, "guard:child-shares-runaway", "node1", logs=("node1", "server"), state="firing"
    )
    assert alert["severity"] == "critical"
    wait_fleet_halted(fleet, pids)
    halts = fleet.client.get("/halts?active=true")
    assert any(h["requested_by"] == "guard:child-shares-runaway@node1" for h in halts), halts
    wait_halted_by_guard(fleet)


def test_a_fleet_rule_asking_for_a_fleet_halt_halts_every_node(fleet: LocalFleet) -> None:
    """A halt_fleet fleet rule over the sum of the nodes halts the services of all of them."""
    rearm_all(fleet)
    pids = {n: node_status(fleet, n)["service_pid"] for n in fleet.names}
    steer(fleet, "node1", "/set", {"kw_test_fleet": 600})
    steer(fleet, "node3", "/set", {"kw_test_fleet": 600})
    wait_alert(fleet, "fleet-guard:fleet-runaway", None, logs=("server",), state="firing")
    wait_fleet_halted(fleet, pids)
    halts = fleet.client.get("/halts?active=true")
    assert any(h["requested_by"] == "fleet-guard:fleet-runaway@fleet" for h in halts), halts
    wait_halted_by_guard(fleet)


def wait_halted_by_guard(fleet: LocalFleet) -> None:
    """Wait until every node is recorded as halted with source ``guard`` (not ``kill``)."""
    wait_until(
        lambda: all(node_status(fleet, n)["halt_source"] == "guard" for n in fleet.names),
        timeout=SETTLE_S,
        what="every node halted with source guard",
    )


def rearm_all(fleet: LocalFleet) -> None:
    """Lift every halt (if any) and wait until every node's service runs again."""
    if any(node_status(fleet, n)["halted"] for n in fleet.names):
        fleet.client.post("/rearm", {"reason": "next test"})
    wait_until(
        lambda: all(
            not (s := node_status(fleet, n))["halted"] and s["service_state"] == "running"
            for n in fleet.names
        ),
        timeout=SETTLE_S,
        what="every node re-armed and running",
    )


def wait_fleet_halted(fleet: LocalFleet, pids: dict[str, int]) -> None:
    """Wait until every node's service process is gone and every node reports halted."""
    wait_until(
        lambda: all(not pid_alive(pid) for pid in pids.values()),
        timeout=SETTLE_S,
        what="every service gone",
    )
    wait_until(
        lambda: all(node_status(fleet, n)["service_state"] == "halted" for n in fleet.names),
        timeout=SETTLE_S,
        what="every node reported halted",
    )
