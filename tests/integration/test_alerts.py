"""Alerts end to end: a real control plane and agent, real HTTP receivers, a real command (P6).

The fleet has one node running a release. Tampering with a file on it makes
the agent report drift, which fires a critical ``node-drift`` alert; the
route is ``first`` (an HTTP receiver started by the test), ``second``
(another one) and ``hook`` (a command that appends its stdin to a file),
escalating every ``ESCALATE_S`` seconds. Every message must be the JSON
body Alertmanager's webhook sends, so existing receivers work unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from knightwatch.localfleet import LocalFleet
from knightwatch.testing import free_port, wait_until
from tests.integration.conftest import (
    SETTLE_S,
    Releases,
    converge_on,
    current_digest,
    kw,
    make_fleet,
)

NODE = "node1"
ESCALATE_S = 2.0
Message = dict[str, Any]

HOOK = """\
import json, os, sys
body = json.load(sys.stdin)
seen = {"body": body, "env": sorted(os.environ), "status": os.environ["KNIGHTWATCH_ALERT_STATUS"]}
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(seen) + "\\n")
"""
ALERT_KEYS = {
    "status",
    "labels",
    "annotations",
    "startsAt",
    "endsAt",
    "generatorURL",
    "fingerprint",
}
MESSAGE_KEYS = {
    "version",
    "groupKey",
    "truncatedAlerts",
    "status",
    "receiver",
    "groupLabels",
    "commonLabels",
    "commonAnnotations",
    "externalURL",
    "alerts",
}


class Receiver:
    """A real HTTP server on a free port that records every JSON body POSTed to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages: list[tuple[str, Message]] = []
        lock = threading.Lock()
        messages = self.messages

        class Handler(BaseHTTPRequestHandler):
            """Answers 200 to a POST and keeps (content type, body)."""

            protocol_version = "HTTP/1.1"
            served: ClassVar[int] = 0

            def do_POST(self) -> None:
                """Record the body."""
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with lock:
                    messages.append((self.headers.get("Content-Type", ""), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                """Keep the test output quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{name}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def about(self, alert_id: int, status: str | None = None) -> list[Message]:
        """The messages received about alert ``alert_id`` (with ``status``, if given)."""
        return [
            body
            for _, body in list(self.messages)
            if body["alerts"][0]["generatorURL"].endswith(f"/alerts/{alert_id}")
            and status in (None, body["status"])
        ]

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


class Hook:
    """The command receiver's output: one line per notification it was run for."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def about(self, alert_id: int, status: str | None = None) -> list[Message]:
        """What the command saw (body, environment names, status) for alert ``alert_id``."""
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        seen = [json.loads(line) for line in lines]
        return [
            s
            for s in seen
            if s["body"]["alerts"][0]["generatorURL"].endswith(f"/alerts/{alert_id}")
            and status in (None, s["status"])
        ]


@pytest.fixture(scope="module")
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    """Two real HTTP receivers: ``first`` and ``second``."""
    first, second = Receiver("first"), Receiver("second")
    yield first, second
    first.close()
    second.close()


@pytest.fixture(scope="module")
def hook(tmp_path_factory: pytest.TempPathFactory) -> Hook:
    """Where the command receiver writes what it got on stdin."""
    directory = tmp_path_factory.mktemp("hook")
    (directory / "hook.py").write_text(HOOK)
    return Hook(directory / "received.jsonl")


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    releases: Releases,
    receivers: tuple[Receiver, Receiver],
    hook: Hook,
) -> Iterator[LocalFleet]:
    """One node on v1, audited every second, alerts routed first → second → hook."""
    first, second = receivers
    routing = {
        "receivers": [
            {"name": "first", "webhook": first.url},
            {"name": "second", "webhook": second.url},
            {
                "name": "hook",
                "command": [sys.executable, str(hook.path.parent / "hook.py"), str(hook.path)],
            },
        ],
        "route": ["first", "second", "hook"],
        "escalate_after_s": ESCALATE_S,
        "renotify_s": 3600,
    }
    directory = tmp_path_factory.mktemp("alerts-fleet")
    with make_fleet(
        directory,
        releases,
        nodes=1,
        server_env={"KNIGHTWATCH_ALERTS": json.dumps(routing)},
        agent_args=("--stat-interval", "1"),
    ) as fleet:
        fleet.push(releases.store, releases.v1.release_id)
        fleet.push(releases.store, releases.v2.release_id)
        converge_on(fleet, releases.v1)
        yield fleet


# -- helpers --------------------------------------------------------------------------------


def tamper(fleet: LocalFleet, name: str) -> dict[str, Any]:
    """Drop an extra .py into the node's live release (critical drift); return the alert."""
    tree = fleet.root(NODE) / "releases" / str(current_digest(fleet, NODE))
    (tree / "smars").chmod(0o755)
    (tree / "smars" / f"{name}.py").write_text("print('not from the release')\n")

    def fired() -> dict[str, Any] | None:
        firing = fleet.client.get("/alerts?state=firing")
        return next((a for a in firing if name in a["summary"]), None)

    alert: dict[str, Any] = wait_until(
        fired, timeout=SETTLE_S, what=f"an alert naming {name}.py", interval=0.1
    )
    assert (alert["rule"], alert["node"], alert["severity"]) == ("node-drift", NODE, "critical")
    return alert


def reconcile(fleet: LocalFleet) -> None:
    """Restore the node's exact release through a recorded reconcile deployment."""
    started = fleet.client.post(f"/nodes/{NODE}/reconcile", {"reason": "test"})
    assert fleet.wait_deployment(started["id"], timeout=180)["state"] == "SUCCEEDED"


def wait_state(fleet: LocalFleet, alert_id: int, state: str) -> dict[str, Any]:
    """Wait until the alert is in ``state``; return it with its notifications."""

    def reached() -> dict[str, Any] | None:
        alert: dict[str, Any] = fleet.client.get(f"/alerts/{alert_id}")
        return alert if alert["state"] == state else None

    return wait_until(reached, timeout=SETTLE_S, what=f"alert {alert_id} {state}", interval=0.1)


def wait_messages(source: Receiver | Hook, alert_id: int, status: str) -> list[Message]:
    """Wait until ``source`` has received a ``status`` message about the alert."""
    return wait_until(
        lambda: source.about(alert_id, status),
        timeout=SETTLE_S,
        what=f"{status} alert {alert_id} at {getattr(source, 'name', 'the hook')}",
        interval=0.1,
    )


def recorded(fleet: LocalFleet, alert_id: int, count: int) -> list[dict[str, Any]]:
    """Wait until ``count`` deliveries of the alert are recorded; return them."""

    def enough() -> list[dict[str, Any]] | None:
        sent: list[dict[str, Any]] = fleet.client.get(f"/alerts/{alert_id}")["notifications"]
        return sent if len(sent) >= count else None

    return wait_until(enough, timeout=SETTLE_S, what=f"{count} deliveries recorded", interval=0.1)


def instant(text: str) -> datetime:
    """Parse an RFC 3339 time as Alertmanager writes it (and the API returns it)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def check_alertmanager_message(
    fleet: LocalFleet, message: Message, alert: dict[str, Any], receiver: str, status: str
) -> None:
    """``message`` is an Alertmanager v4 webhook body announcing ``alert``."""
    assert set(message) == MESSAGE_KEYS
    assert (message["version"], message["status"], message["receiver"]) == ("4", status, receiver)
    assert message["truncatedAlerts"] == 0 and isinstance(message["groupKey"], str)
    assert message["externalURL"] == fleet.url
    [entry] = message["alerts"]
    assert set(entry) == ALERT_KEYS
    assert entry["status"] == status
    assert entry["labels"]["alertname"] == "node-drift"
    assert (entry["labels"]["node"], entry["labels"]["severity"]) == (NODE, "critical")
    assert message["commonLabels"] == entry["labels"]
    assert message["groupLabels"] == {"alertname": "node-drift", "node": NODE}
    assert entry["annotations"]["summary"] == alert["summary"]
    assert instant(entry["startsAt"]) == instant(alert["first_at"])
    if status == "firing":
        assert entry["endsAt"] == "0001-01-01T00:00:00Z"
    else:
        assert instant(entry["endsAt"]) == instant(alert["resolved_at"])
    assert len(entry["fingerprint"]) == 16 and int(entry["fingerprint"], 16) >= 0
    linked = httpx.get(
        entry["generatorURL"],
        headers={"Authorization": f"Bearer {fleet.token}"},
        timeout=30,
        trust_env=False,
        verify=fleet.verify,
    )
    assert linked.json()["id"] == alert["id"]


# -- tests ----------------------------------------------------------------------------------


def test_unacknowledged_alert_escalates_to_the_second_receiver(
    fleet: LocalFleet, receivers: tuple[Receiver, Receiver], hook: Hook
) -> None:
    """Nobody acknowledges: first, then second, then the hook are told; resolved once to each."""
    first, second = receivers
    alert = tamper(fleet, "escalation")
    [to_first] = wait_messages(first, alert["id"], "firing")
    check_alertmanager_message(fleet, to_first, alert, "first", "firing")
    assert all(kind == "application/json" for kind, _ in first.messages)
    [to_second] = wait_messages(second, alert["id"], "firing")
    check_alertmanager_message(fleet, to_second, alert, "second", "firing")
    [seen] = wait_messages(hook, alert["id"], "firing")
    assert seen["body"]["receiver"] == "hook"
    assert seen["body"]["alerts"][0]["labels"]["alertname"] == "node-drift"
    assert "KNIGHTWATCH_CANARY_SOAK_S" not in seen["env"]  # no server settings leak out

    sent = recorded(fleet, alert["id"], 3)
    levels = {n["receiver"]: (n["level"], instant(n["at"])) for n in sent}
    assert [levels[r][0] for r in ("first", "second", "hook")] == [0, 1, 2]
    assert (levels["second"][1] - levels["first"][1]).total_seconds() >= ESCALATE_S
    assert (levels["hook"][1] - levels["second"][1]).total_seconds() >= ESCALATE_S
    assert all(n["ok"] and n["status"] == "firing" for n in sent)

    reconcile(fleet)  # the drift clears, so the agent's report resolves the alert
    resolved = wait_state(fleet, alert["id"], "resolved")
    for source in (first, second):
        [message] = wait_messages(source, alert["id"], "resolved")
        check_alertmanager_message(fleet, message, resolved, source.name, "resolved")
    wait_messages(hook, alert["id"], "resolved")
    time.sleep(1.0)  # a resolution is announced once, not again
    assert [len(s.about(alert["id"], "resolved")) for s in (first, second, hook)] == [1, 1, 1]


def test_acknowledging_stops_escalation(
    fleet: LocalFleet, receivers: tuple[Receiver, Receiver]
) -> None:
    """Acknowledged (CLI, --json): nobody else is notified after that moment."""
    first, _ = receivers
    alert = tamper(fleet, "acknowledged")
    wait_messages(first, alert["id"], "firing")
    done = kw(fleet, "alerts", "ack", str(alert["id"]), "--comment", "looking", "--json")
    assert done.returncode == 0, done.stderr
    acked = json.loads(done.stdout)
    assert acked["state"] == "acknowledged" and acked["acknowledged_by"] == "admin (looking)"
    assert acked["next_notify_at"] is None
    time.sleep(2 * ESCALATE_S)  # long enough for two more escalations, had there been any
    sent = fleet.client.get(f"/alerts/{alert['id']}")["notifications"]
    acked_at = instant(acked["acknowledged_at"])
    assert sent and all(instant(n["at"]) <= acked_at for n in sent)
    reconcile(fleet)
    wait_state(fleet, alert["id"], "resolved")


def test_unacknowledged_critical_alert_blocks_deploy_until_acknowledged(
    fleet: LocalFleet, releases: Releases
) -> None:
    """deploy exits 2 naming the alert and how to ack it; once acked only the drift gate is left."""
    alert = tamper(fleet, "blocker")
    refused = kw(fleet, "deploy", releases.v2.release_id)
    assert refused.returncode == 2, refused.stderr
    message = " ".join(refused.stderr.split())
    assert f"#{alert['id']} node-drift on {NODE}" in message
    assert f"knightwatch alerts ack {alert['id']}" in message

    listed = kw(fleet, "alerts", "list", "--state", "firing", "--json")
    assert alert["id"] in [a["id"] for a in json.loads(listed.stdout)]
    assert kw(fleet, "alerts", "ack", str(alert["id"])).returncode == 0
    still = kw(fleet, "deploy", releases.v2.release_id)
    assert still.returncode == 2  # the node still drifts: acknowledged is not repaired
    assert "unacknowledged" not in still.stderr and "reconcile" in still.stderr

    reconcile(fleet)
    wait_state(fleet, alert["id"], "resolved")
    deployed = kw(fleet, "deploy", releases.v2.release_id, "--wait")
    assert deployed.returncode == 0, deployed.stderr
    converge_on(fleet, releases.v2)


def test_alerts_list_ack_resolve_from_the_cli(fleet: LocalFleet) -> None:
    """list / show / ack / resolve with --json; refusals change nothing and exit 2."""
    alert = tamper(fleet, "by-hand")
    table = kw(fleet, "alerts", "list")
    assert table.returncode == 0 and "node-drift" in table.stdout
    done = kw(fleet, "alerts", "resolve", str(alert["id"]), "--comment", "seen", "--json")
    assert done.returncode == 0, done.stderr
    closed = json.loads(done.stdout)
    assert closed["state"] == "resolved" and closed["resolved_by"] == "admin (seen)"

    again = kw(fleet, "alerts", "resolve", str(alert["id"]))
    assert again.returncode == 2 and "already resolved by admin (seen)" in again.stderr
    late_ack = kw(fleet, "alerts", "ack", str(alert["id"]))
    assert late_ack.returncode == 2 and "nothing to acknowledge" in late_ack.stderr
    unknown = kw(fleet, "alerts", "ack", "999999")
    assert unknown.returncode == 2 and "no alert 999999" in unknown.stderr
    bad_state = kw(fleet, "alerts", "list", "--state", "open")
    assert bad_state.returncode == 2

    shown = json.loads(kw(fleet, "alerts", "show", str(alert["id"]), "--json").stdout)
    assert [shown[k] for k in ("state", "resolved_by", "resolved_at")] == [
        closed[k] for k in ("state", "resolved_by", "resolved_at")
    ]
    statuses = {(n["receiver"], n["status"]) for n in shown["notifications"]}
    assert ("first", "firing") in statuses
    wait_until(
        lambda: (
            ("first", "resolved")
            in {
                (n["receiver"], n["status"])
                for n in fleet.client.get(f"/alerts/{alert['id']}")["notifications"]
            }
        ),
        timeout=SETTLE_S,
        what="the resolution announced to first",
    )
    reconcile(fleet)


def test_metrics_parse_with_prometheus_client(fleet: LocalFleet) -> None:
    """/metrics (no token) parses with prometheus-client's parser and adds up with the status."""
    state = fleet.status()["state"]
    response = httpx.get(f"{fleet.url}/metrics", timeout=30, trust_env=False, verify=fleet.verify)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}

    fleet_state = {s.labels["state"]: s.value for s in families["knightwatch_fleet_state"].samples}
    assert fleet_state[state] == 1 and sum(fleet_state.values()) == 1
    nodes = families["knightwatch_nodes"].samples
    assert sum(s.value for s in nodes) == 1
    assert all(s.labels["connected"] == "true" for s in nodes if s.value)

    deployments = families["knightwatch_deployments"]
    assert deployments.type == "counter"
    ended = Counter(
        (d["kind"], d["state"])
        for d in fleet.client.get("/deployments?limit=1000")
        if d["state"] in ("SUCCEEDED", "FAILED", "ROLLED_BACK", "ROLLBACK_FAILED")
    )
    assert ended[("deploy", "SUCCEEDED")] >= 1
    totals = {
        (s.labels["kind"], s.labels["state"]): s.value
        for s in deployments.samples
        if s.name == "knightwatch_deployments_total"
    }
    assert {k: v for k, v in totals.items() if v} == ended
    assert len(totals) == 16  # every kind and final state, zeros included (rules use increase)
    assert families["knightwatch_halts_active"].samples[0].value == 0

    halts = families["knightwatch_time_to_halt_seconds"]
    assert halts.type == "histogram"
    buckets = [s for s in halts.samples if s.name.endswith("_bucket")]
    assert buckets[-1].labels["le"] == "+Inf" and len(buckets) >= 5
    count = next(s.value for s in halts.samples if s.name.endswith("_count"))
    assert buckets[-1].value == count

    alerts = {
        (s.labels["state"], s.labels["severity"]): s.value
        for s in families["knightwatch_alerts"].samples
    }
    stored = Counter((a["state"], a["severity"]) for a in fleet.client.get("/alerts?limit=1000"))
    assert {k: v for k, v in alerts.items() if v} == stored
    assert len(alerts) == 9  # every state and severity, zeros included


def test_invalid_routing_refuses_to_start(tmp_path: Path) -> None:
    """A route naming an unknown receiver: the server exits 2 with one error line and a hint."""
    env = {
        **os.environ,
        "KNIGHTWATCH_ALERTS": json.dumps(
            {"receivers": [{"name": "pager", "webhook": "http://x/"}], "route": ["pagr"]}
        ),
    }
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("knightwatch")),
            "server",
            "--data",
            str(tmp_path / "data"),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "route names 'pagr', not a receiver (declared: pager)" in errors[0]
    assert "hint:" in done.stderr and "KNIGHTWATCH_ALERTS" in done.stderr
