"""knightwatch beside a real Prometheus and a real Alertmanager (Debian's packages).

The fleet (two nodes on v1) routes its alerts to one receiver, ``am``: the
Alertmanager started here (its default ``resolve_timeout``, 5 minutes, so an
alert that leaves it within the test was ended by knightwatch). Prometheus
scrapes the fleet with the configuration and rules of ``examples/prometheus``
(intervals and ``for`` shortened to a second) and sends its alerts to the same
Alertmanager. ``promtool check metrics`` runs on ``/metrics`` in every fleet
state the tests reach. Without the binaries the tests skip, naming the
package; .ci/run installs them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from knightwatch.localfleet import LocalFleet
from knightwatch.testing import wait_until
from tests.helpers import REPO
from tests.integration.conftest import (
    SETTLE_S,
    Releases,
    converge_on,
    deploy_ok,
    kw,
    make_fleet,
)
from tests.integration.test_alerts import NODE, instant, reconcile, tamper, wait_state
from tests.prometheus_servers import Alertmanager, Prometheus, binary, promtool

EXAMPLES = REPO / "examples" / "prometheus"
FLEET_LABEL = "smars-test"
BEHIND = "node2"


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    """A real Alertmanager on a free port, no clustering."""
    server = Alertmanager(tmp_path_factory.mktemp("alertmanager"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, releases: Releases, alertmanager: Alertmanager
) -> Iterator[LocalFleet]:
    """Two nodes on v1, audited every second, alerts posted into the Alertmanager every 1 s."""
    routing = {
        "receivers": [
            {"name": "am", "alertmanager": alertmanager.url, "resend_s": 1, "timeout_s": 2}
        ],
        "fleet": FLEET_LABEL,
        "renotify_s": 3600,
    }
    with make_fleet(
        tmp_path_factory.mktemp("prometheus-fleet"),
        releases,
        nodes=2,
        server_env={"KNIGHTWATCH_ALERTS": json.dumps(routing)},
        agent_args=("--stat-interval", "1"),
    ) as fleet:
        fleet.push(releases.store, releases.v1.release_id)
        fleet.push(releases.store, releases.v2.release_id)
        converge_on(fleet, releases.v1)
        yield fleet


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, fleet: LocalFleet, alertmanager: Alertmanager
) -> Iterator[Prometheus]:
    """Prometheus with the example configuration and rules, every interval and ``for`` 1 s."""
    directory = tmp_path_factory.mktemp("prometheus")
    rules = (EXAMPLES / "knightwatch-rules.yml").read_text()
    (directory / "knightwatch-rules.yml").write_text(
        re.sub(r"^(\s+for: )\S+$", r"\g<1>1s", rules, flags=re.MULTILINE)
    )
    config = (EXAMPLES / "prometheus.yml").read_text()
    for example, here in (
        ("localhost:7400", fleet.url.split("://", 1)[1]),
        ("scheme: https", f"scheme: {fleet.url.split('://', 1)[0]}"),
        ("/etc/knightwatch/ca.pem", str(fleet.ca)),
        ("localhost:9093", alertmanager.url.removeprefix("http://")),
        ("interval: 15s", "interval: 1s"),
    ):
        assert example in config, f"examples/prometheus/prometheus.yml no longer has {example}"
        config = config.replace(example, here)
    server = Prometheus(directory, config)
    server.start()
    yield server
    server.stop()


# -- helpers --------------------------------------------------------------------------------


def check_metrics(fleet: LocalFleet) -> str:
    """``promtool check metrics`` finds no problem in /metrics now; return the fleet state."""
    state = str(fleet.status()["state"])
    text = httpx.get(f"{fleet.url}/metrics", timeout=30, trust_env=False, verify=fleet.verify).text
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0 and not checked.stdout.strip(), (state, checked)
    return state


def held(alertmanager: Alertmanager, alert: dict[str, Any]) -> dict[str, Any] | None:
    """The Alertmanager's copy of knightwatch's ``alert`` (None when it holds none)."""
    copies = alertmanager.alerts(alertname=alert["rule"], node=NODE, source="knightwatch")
    mine = [c for c in copies if c["annotations"].get("alert_id") == str(alert["id"])]
    assert len(mine) <= 1, mine
    return mine[0] if mine else None


def posted_again(alertmanager: Alertmanager, alert: dict[str, Any], *, times: int) -> None:
    """Wait until Alertmanager's copy of ``alert`` was updated ``times`` more times (re-posts)."""
    seen: list[str] = []

    def updated() -> bool:
        current = held(alertmanager, alert)
        assert current is not None, "Alertmanager dropped a firing alert"
        if not seen or seen[-1] != current["updatedAt"]:
            seen.append(current["updatedAt"])
        return len(seen) > times

    wait_until(updated, timeout=SETTLE_S, what=f"alert {alert['id']} posted again", interval=0.2)


def deliveries(fleet: LocalFleet, alert_id: int) -> list[dict[str, Any]]:
    """The alert's recorded deliveries."""
    found: list[dict[str, Any]] = fleet.client.get(f"/alerts/{alert_id}")["notifications"]
    return found


def wait_gone(fleet: LocalFleet, alertmanager: Alertmanager, alert: dict[str, Any]) -> None:
    """Reconcile the node; the alert resolves in knightwatch, then leaves the Alertmanager."""
    reconcile(fleet)
    resolved = wait_state(fleet, alert["id"], "resolved")
    wait_until(
        lambda: held(alertmanager, alert) is None,
        timeout=SETTLE_S,
        what=f"alert {alert['id']} resolved in Alertmanager",
        interval=0.1,
    )
    told = [n for n in deliveries(fleet, alert["id"]) if n["status"] == "resolved"]
    assert told and told[-1]["ok"] and told[-1]["receiver"] == "am", told
    assert instant(told[-1]["at"]) >= instant(resolved["resolved_at"])


# -- tests ----------------------------------------------------------------------------------


def test_the_example_rules_pass_promtool_check_and_their_unit_tests(tmp_path: Path) -> None:
    """promtool: the example config and rules are valid, and the rules' unit tests pass."""
    for files in (EXAMPLES / "prometheus.yml",), (EXAMPLES / "knightwatch-rules.yml",):
        kind = "config" if files[0].name == "prometheus.yml" else "rules"
        done = promtool("check", kind, *map(str, files))
        assert done.returncode == 0, done.stdout + done.stderr
    for name in ("knightwatch-rules.yml", "knightwatch-rules.test.yml"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    tested = promtool("test", "rules", str(tmp_path / "knightwatch-rules.test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_a_drifted_nodes_alert_is_held_by_alertmanager_until_the_node_is_reconciled(
    fleet: LocalFleet, alertmanager: Alertmanager, releases: Releases
) -> None:
    """Labels and annotations as documented; posted again while open; ended on reconcile."""
    assert check_metrics(fleet) == "CONVERGED"
    [running] = [n["active_release"] for n in fleet.status()["nodes"] if n["name"] == NODE]
    assert running in (releases.v1.release_id, releases.v2.release_id)
    alert = tamper(fleet, "into-alertmanager")
    seen = time.monotonic()
    copy = wait_until(
        lambda: held(alertmanager, alert), timeout=SETTLE_S, what="the alert in Alertmanager"
    )
    print(f"alert {alert['id']} in Alertmanager {time.monotonic() - seen:.2f} s after it fired")
    assert copy["labels"] == {
        "alertname": "node-drift",
        "severity": "critical",
        "node": NODE,
        "fleet": FLEET_LABEL,
        "release": running,
        "source": "knightwatch",
    }
    notes = copy["annotations"]
    assert notes["summary"] == alert["summary"] and notes["description"] == alert["detail"]
    assert notes["link"] == copy["generatorURL"] == f"{fleet.url}/api/v1/alerts/{alert['id']}"
    assert int(notes["count"]) >= 1
    starts = instant(copy["startsAt"]) - instant(alert["first_at"])
    assert abs(starts) < timedelta(milliseconds=1)  # Alertmanager keeps milliseconds
    assert copy["status"]["state"] == "active"
    [first] = deliveries(fleet, alert["id"])[:1]
    assert (first["receiver"], first["level"], first["status"], first["ok"]) == (
        "am",
        0,
        "firing",
        True,
    )
    assert check_metrics(fleet) == "DRIFTED"

    queried = subprocess.run(
        [
            binary("amtool", package="prometheus-alertmanager"),
            f"--alertmanager.url={alertmanager.url}",
            "alert",
            "query",
            "--output=json",
            f"node={NODE}",
            "source=knightwatch",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert [a["labels"]["alertname"] for a in json.loads(queried.stdout)] == ["node-drift"]

    posted_again(alertmanager, alert, times=2)

    silence = alertmanager.silence("on it", alertname="node-drift", node=NODE)
    try:
        wait_until(
            lambda: (
                (held(alertmanager, alert) or {}).get("status", {}).get("state") == "suppressed"
            ),
            timeout=SETTLE_S,
            what="the alert silenced in Alertmanager",
        )
        refused = kw(fleet, "deploy", releases.v2.release_id)
        assert refused.returncode == 2, refused.stderr
        assert "unacknowledged critical" in " ".join(refused.stderr.split())
        assert fleet.client.get(f"/alerts/{alert['id']}")["state"] == "firing"
    finally:
        httpx.delete(f"{alertmanager.url}/api/v2/silence/{silence}", timeout=30, trust_env=False)
    wait_gone(fleet, alertmanager, alert)


def test_an_alertmanager_that_was_down_gets_the_still_firing_alert_when_back(
    fleet: LocalFleet, alertmanager: Alertmanager
) -> None:
    """Alertmanager down: the failure is recorded; once it is back it holds the alert."""
    alertmanager.stop()
    try:
        alert = tamper(fleet, "while-alertmanager-is-down")
        failed = wait_until(
            lambda: [n for n in deliveries(fleet, alert["id"]) if not n["ok"]],
            timeout=SETTLE_S,
            what="a failed delivery recorded",
        )
        port = alertmanager.url.removeprefix("http://")
        assert failed[0]["receiver"] == "am" and port in failed[0]["detail"], failed
        assert fleet.client.get("/status")["state"] == "DRIFTED"  # the control plane goes on
    finally:
        alertmanager.start()
    copy = wait_until(
        lambda: held(alertmanager, alert), timeout=SETTLE_S, what="the alert in Alertmanager"
    )
    assert copy["labels"]["node"] == NODE
    recovered = [n for n in deliveries(fleet, alert["id"]) if n["ok"] and n["status"] == "firing"]
    assert recovered, deliveries(fleet, alert["id"])
    wait_gone(fleet, alertmanager, alert)


def test_prometheus_scrapes_the_fleet_and_a_rule_fires_for_a_node_left_behind(
    fleet: LocalFleet,
    releases: Releases,
    alertmanager: Alertmanager,
    prometheus: Prometheus,
) -> None:
    """A node offline during a deploy: KnightwatchNodeLeftBehind fires, reaches Alertmanager."""
    converge_on(fleet, releases.v1)
    wait_until(prometheus.targets_up, timeout=SETTLE_S, what="Prometheus scraping the fleet")
    states = {check_metrics(fleet)}
    fleet.stop_agent(BEHIND)
    try:
        wait_until(
            lambda: fleet.status()["state"] == "UNKNOWN",
            timeout=SETTLE_S,
            what=f"{BEHIND} disconnected",
        )
        states.add(check_metrics(fleet))
        deploy_ok(fleet, releases.v2)
        fleet.wait_state("MIXED", timeout=SETTLE_S)
        states.add(check_metrics(fleet))
        firing = wait_until(
            lambda: [
                a
                for a in prometheus.alerts("firing")
                if a["labels"]["alertname"] == "KnightwatchNodeLeftBehind"
            ],
            timeout=SETTLE_S,
            what="KnightwatchNodeLeftBehind firing in Prometheus",
        )
        assert float(firing[0]["value"]) == 1 and firing[0]["labels"]["severity"] == "warning"
        wait_until(
            lambda: alertmanager.alerts(alertname="KnightwatchNodeLeftBehind"),
            timeout=SETTLE_S,
            what="Prometheus's alert in Alertmanager",
        )
        query = f'knightwatch_node_connected{{node="{BEHIND}"}} == 0'
        assert prometheus.get("/api/v1/query", query=query)["data"]["result"]
        ages = prometheus.get(
            "/api/v1/query", query=f'knightwatch_node_last_report_age_seconds{{node="{BEHIND}"}}'
        )["data"]["result"]
        assert ages and float(ages[0]["value"][1]) > 0
        mixed = prometheus.get("/api/v1/query", query="knightwatch_fleet_mixed_seconds > 0")
        assert mixed["data"]["result"]
    finally:
        fleet.start_agent(BEHIND)
    fleet.wait_state("CONVERGED", timeout=SETTLE_S)  # caught up
    states.add(check_metrics(fleet))
    wait_until(
        lambda: (
            not [
                a
                for a in prometheus.alerts()
                if a["labels"]["alertname"] == "KnightwatchNodeLeftBehind"
            ]
        ),
        timeout=SETTLE_S,
        what="KnightwatchNodeLeftBehind to end",
    )
    assert states >= {"CONVERGED", "UNKNOWN", "MIXED"}, states
