"""Alerts on a real store and a virtual clock: dedup, transitions, routing, escalation, the gate.

Deliveries here are the domain's half only — :func:`claim_due` says what is
due, the test plays the receiver's answer into :func:`record_delivery` — so
every timing rule is checked to the second without waiting. (The integration
tests deliver to real HTTP receivers and commands.)
"""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from knightwatch.api.metrics import FleetCollector
from knightwatch.clock import VirtualClock
from knightwatch.control import alerts
from knightwatch.control.alerts import (
    AlertNotFoundError,
    acknowledge,
    fire,
    resolve_alert,
)
from knightwatch.control.deploy import Orchestrator
from knightwatch.control.deploy_requests import DeployRequest, DeployTimeouts
from knightwatch.control.policy import Action, Proposal
from knightwatch.control.policy.checks import NoUnacknowledgedCritical
from knightwatch.control.routing import RETRY_S, AlertRouting, Delivery, claim_due, record_delivery
from knightwatch.control.statistics import fleet_statistics
from knightwatch.errors import GateRefusedError, InvalidInputError, PolicyRefusedError, Refusal
from knightwatch.server.settings import ServerSettings
from knightwatch.store import (
    Alert,
    AlertNotification,
    Database,
    Deployment,
    Halt,
    HaltNode,
    Node,
    Release,
)
from knightwatch.store.queries import get_fleet
from tests.helpers import REPO

ROUTE = {
    "receivers": [
        {"name": "first", "webhook": "http://127.0.0.1:9/first?token=s3cret"},
        {"name": "second", "command": ["/bin/true"]},
        {"name": "third", "webhook": "https://pager.example/hook"},
    ],
    "escalate_after_s": 300,
    "renotify_s": 600,
}
DIGEST = "a" * 64


@pytest.fixture
def clock() -> VirtualClock:
    """A clock that moves only when the test says so."""
    return VirtualClock(datetime(2012, 8, 1, 9, 30, tzinfo=UTC))


@pytest.fixture
def db(db: Database) -> Database:
    """A store (each engine) with two enrolled, connected nodes running one release."""
    now = datetime(2012, 8, 1, 9, 0, tzinfo=UTC)
    with db.session() as session:
        session.add(
            Release(
                digest=DIGEST,
                release_id=f"smars@1+{DIGEST[:12]}",
                name="smars",
                version="1",
                manifest=b"{}",
                sbom=b"{}",
                envelope=b"{}",
                signed_by="k",
                pushed_at=now,
                pushed_by="t",
            )
        )
        for name in ("node1", "node2"):
            session.add(
                Node(
                    name=name,
                    status="enrolled",
                    created_at=now,
                    connected=True,
                    active_digest=DIGEST,
                    desired_digest=DIGEST,
                    service_state="running",
                )
            )
        get_fleet(session, now=now).desired_digest = DIGEST
    return db


@pytest.fixture
def routing() -> AlertRouting:
    """Three receivers in a route: first, second, third."""
    return AlertRouting.parse(ROUTE)


def raise_alert(
    db: Database, clock: VirtualClock, *, node: str | None = "node1", severity: str = "critical"
) -> int:
    """Fire one alert now; return its ID."""
    with db.session() as session:
        return fire(
            session,
            rule="guard:runaway",
            node=node,
            severity=severity,  # type: ignore[arg-type]
            summary="child shares exceed parent shares",
            detail="smars_child_shares_sent_total 9000 > smars_parent_shares_total 100",
            now=clock.now(),
        ).id


def deliver(
    db: Database, routing: AlertRouting, clock: VirtualClock, *, ok: bool = True
) -> list[tuple[str, str, int]]:
    """Claim what is due now and answer every delivery with ``ok``; (receiver, status, level)."""
    with db.session() as session:
        due = claim_due(session, routing, clock.now())
    with db.session() as session:
        for delivery in due:
            record_delivery(session, delivery, ok=ok, detail="HTTP 200", routing=routing)
    return [(d.receiver.name, d.status, d.level) for d in due]


def row(db: Database, alert_id: int) -> Alert:
    """The alert as stored now."""
    with db.session() as session:
        alert = session.get(Alert, alert_id)
        assert alert is not None
        return alert


class TestDeduplication:
    def test_a_flapping_rule_is_one_alert_with_a_count(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """The same rule on the same node firing again and again is one alert counting them."""
        first = raise_alert(db, clock)
        for _ in range(49):
            clock.advance(0.1)
            assert raise_alert(db, clock) == first
        with db.session() as session:
            [alert] = session.query(Alert).all()
            assert (alert.count, alert.state) == (50, "firing")
            assert alert.last_at - alert.first_at == timedelta(seconds=4.9)

    def test_firing_again_while_acknowledged_counts_and_stays_acknowledged(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """Someone is on it: more firings count, they do not reopen it or escalate again."""
        alert_id = raise_alert(db, clock)
        with db.session() as session:
            acknowledge(session, alert_id, by="alice", now=clock.now())
        assert raise_alert(db, clock) == alert_id
        stored = row(db, alert_id)
        assert (stored.count, stored.state, stored.next_notify_at) == (2, "acknowledged", None)

    def test_after_resolution_a_new_firing_is_a_new_alert(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """A resolved alert stays resolved; the condition coming back is a new alert."""
        first = raise_alert(db, clock)
        with db.session() as session:
            alerts.resolve(
                session, alerts.fingerprint("guard:runaway", "node1"), by="x", now=clock.now()
            )
        second = raise_alert(db, clock)
        assert second != first
        assert (row(db, first).state, row(db, second).state) == ("resolved", "firing")

    def test_fingerprint_is_rule_and_node(self, db: Database, clock: VirtualClock) -> None:
        """Another node, or the fleet as a whole, is another alert."""
        ids = {raise_alert(db, clock, node=n) for n in ("node1", "node2", None, "node1")}
        assert len(ids) == 3
        assert alerts.fingerprint("guard:runaway", None) == "guard:runaway@fleet"

    def test_severity_only_rises(self, db: Database, clock: VirtualClock) -> None:
        """A later, milder firing does not lower the alert's severity."""
        alert_id = raise_alert(db, clock, severity="critical")
        raise_alert(db, clock, severity="info")
        assert row(db, alert_id).severity == "critical"


class TestTransitions:
    def test_acknowledge_records_who_and_why(self, db: Database, clock: VirtualClock) -> None:
        """firing → acknowledged, with who, their comment and when; escalation stops."""
        alert_id = raise_alert(db, clock)
        clock.advance(42)
        with db.session() as session:
            acknowledge(session, alert_id, by="alice", now=clock.now(), comment="on node1 now")
        stored = row(db, alert_id)
        assert stored.state == "acknowledged"
        assert stored.acknowledged_by == "alice (on node1 now)"
        assert stored.acknowledged_at == clock.now()
        assert stored.next_notify_at is None

    def test_acknowledging_twice_keeps_the_first(self, db: Database, clock: VirtualClock) -> None:
        """A second acknowledgement changes nothing: the first person stays on record."""
        alert_id = raise_alert(db, clock)
        with db.session() as session:
            acknowledge(session, alert_id, by="alice", now=clock.now())
        clock.advance(5)
        with db.session() as session:
            acknowledge(session, alert_id, by="bob", now=clock.now())
        assert row(db, alert_id).acknowledged_by == "alice"

    @pytest.mark.parametrize("acknowledged_first", [False, True])
    def test_resolve(self, db: Database, clock: VirtualClock, acknowledged_first: bool) -> None:
        """firing or acknowledged → resolved, with who and why."""
        alert_id = raise_alert(db, clock)
        if acknowledged_first:
            with db.session() as session:
                acknowledge(session, alert_id, by="alice", now=clock.now())
        with db.session() as session:
            resolve_alert(session, alert_id, by="bob", now=clock.now(), comment="fixed")
        stored = row(db, alert_id)
        assert (stored.state, stored.resolved_by) == ("resolved", "bob (fixed)")

    def test_unknown_alert_is_refused(self, db: Database, clock: VirtualClock) -> None:
        """An ID no alert has is refused with the ID, and nothing is created."""
        for action in (acknowledge, resolve_alert):
            with db.session() as session, pytest.raises(AlertNotFoundError, match="no alert 99"):
                action(session, 99, by="alice", now=clock.now())
        with db.session() as session:
            assert session.query(Alert).count() == 0

    @pytest.mark.parametrize("action", [acknowledge, resolve_alert])
    def test_a_resolved_alert_is_refused_and_unchanged(
        self, db: Database, clock: VirtualClock, action: object
    ) -> None:
        """Acknowledging or resolving a resolved alert is refused; the record stays as it was."""
        alert_id = raise_alert(db, clock)
        with db.session() as session:
            resolve_alert(session, alert_id, by="bob", now=clock.now())
        before = alerts.alert_json(row(db, alert_id))
        clock.advance(10)
        with db.session() as session, pytest.raises(InvalidInputError, match="resolved by bob"):
            action(session, alert_id, by="carol", now=clock.now())  # type: ignore[operator]
        assert alerts.alert_json(row(db, alert_id)) == before


class TestRoutingSettings:
    def test_route_defaults_to_every_receiver_in_order(self, routing: AlertRouting) -> None:
        """Without ``route`` the receivers are escalated through in the order declared."""
        assert [r.name for r in routing.chain] == ["first", "second", "third"]
        assert (routing.escalate_after_s, routing.renotify_s) == (300, 600)

    def test_webhook_urls_stay_out_of_reprs(self, routing: AlertRouting) -> None:
        """A webhook URL may carry a token: no repr shows it."""
        assert "s3cret" not in repr(routing)
        assert "s3cret" not in repr(ServerSettings(alerts=routing))

    @pytest.mark.parametrize(
        ("config", "message"),
        [
            ({**ROUTE, "route": ["first", "nobody"]}, "route names 'nobody', not a receiver"),
            ({**ROUTE, "route": ["first", "first"]}, "route names 'first' twice"),
            (
                {"receivers": [{"name": "x"}]},
                "give exactly one of webhook, command or alertmanager",
            ),
            (
                {"receivers": [{"name": "x", "webhook": "http://h/", "command": ["a"]}]},
                "give exactly one of webhook, command or alertmanager",
            ),
            (
                {"receivers": [{"name": "x", "webhook": "http://h/", "alertmanager": "http://a"}]},
                "receiver 'x': give exactly one of webhook, command or alertmanager",
            ),
            ({"receivers": [{"name": "x", "alertmanager": []}]}, "receivers.0.alertmanager"),
            (
                {"receivers": [{"name": "x", "alertmanager": "am:9093"}]},
                "receivers.0.alertmanager.0",
            ),
            ({"receivers": [{"name": "x", "alertmanager": 9093}]}, "receivers.0.alertmanager"),
            ({**ROUTE, "fleet": "two words"}, "fleet"),
            (
                {"receivers": [{"name": "x", "webhook": "http://h/", "resend_s": 5}]},
                "receiver 'x': resend_s is for an alertmanager receiver",
            ),
            ({"receivers": [{"name": "x", "webhook": "ftp://h/"}]}, "receivers.0.webhook"),
            ({"receivers": [{"name": "x", "command": []}]}, "receivers.0.command"),
            ({"receivers": ROUTE["receivers"] * 2}, "'first' is declared twice"),
            ({**ROUTE, "escalate_after_s": 0}, "escalate_after_s"),
            ({**ROUTE, "min_severity": "loud"}, "min_severity"),
            ({**ROUTE, "recievers": []}, "recievers"),
            ("{not json", "not JSON"),
        ],
    )
    def test_invalid_routing_is_refused_in_one_line(self, config: object, message: str) -> None:
        """Every mistake is refused with where it is and what is wrong, on one line."""
        with pytest.raises(InvalidInputError, match=message) as refused:
            AlertRouting.parse(config)
        assert "\n" not in refused.value.message
        assert "s3cret" not in refused.value.message
        assert "KNIGHTWATCH_ALERTS" in (refused.value.hint or "")

    def test_server_toml_and_environment(self, tmp_path: Path) -> None:
        """``[alerts]`` in server.toml is read; KNIGHTWATCH_ALERTS (JSON) overrides it."""
        (tmp_path / "server.toml").write_text(
            "[alerts]\n"
            'route = ["pager"]\n'
            "escalate_after_s = 60\n"
            "[[alerts.receivers]]\n"
            'name = "pager"\n'
            'command = ["/usr/local/bin/page", "--team", "trading"]\n'
        )
        settings = ServerSettings.load({"data_dir": tmp_path}, environ={})
        assert [r.name for r in settings.alerts.chain] == ["pager"]
        assert settings.alerts.chain[0].command == ("/usr/local/bin/page", "--team", "trading")
        environ = {"KNIGHTWATCH_ALERTS": json.dumps(ROUTE)}
        overridden = ServerSettings.load({"data_dir": tmp_path}, environ=environ)
        assert len(overridden.alerts.chain) == 3
        with pytest.raises(InvalidInputError, match="route names 'x'"):
            ServerSettings.load(
                {"data_dir": tmp_path}, environ={"KNIGHTWATCH_ALERTS": '{"route": ["x"]}'}
            )

    def test_alertmanager_receivers_from_server_toml(self, tmp_path: Path) -> None:
        """``alertmanager`` takes one URL or a list (an HA pair); credentials stay out of reprs."""
        (tmp_path / "server.toml").write_text(
            "[alerts]\n"
            'fleet = "smars-prod"\n'
            "[[alerts.receivers]]\n"
            'name = "am"\n'
            'alertmanager = "http://am.example:9093"\n'
            "[[alerts.receivers]]\n"
            'name = "am-ha"\n'
            'alertmanager = ["http://kw:s3cret@am1:9093", "http://kw:s3cret@am2:9093"]\n'
            "resend_s = 30\n"
        )
        alerts = ServerSettings.load({"data_dir": tmp_path}, environ={}).alerts
        single, pair = alerts.chain
        assert (single.kind, single.alertmanager, single.resend_s) == (
            "alertmanager",
            ("http://am.example:9093",),
            60,
        )
        assert pair.alertmanager is not None and len(pair.alertmanager) == 2
        assert pair.resend_s == 30 and alerts.fleet == "smars-prod"
        assert "s3cret" not in repr(alerts)

    def test_the_readme_alertmanager_example_is_valid(self) -> None:
        """The README's "Using an existing Alertmanager" configuration parses as shown."""
        readme = (REPO / "README.md").read_text()
        section = readme.split("### Using an existing Alertmanager and Prometheus", 1)[1]
        block = section.split("```toml\n", 1)[1].split("```", 1)[0]
        alerts = AlertRouting.parse(tomllib.loads(block)["alerts"])
        assert [r.kind for r in alerts.chain] == ["alertmanager", "command"]
        assert alerts.receivers[0].alertmanager == ("http://am1:9093", "http://am2:9093")


class TestEscalation:
    def test_a_new_alert_goes_to_the_first_receiver_once(
        self, db: Database, routing: AlertRouting, clock: VirtualClock
    ) -> None:
        """A new firing alert is sent to level 0, then nothing until its time is up."""
        raise_alert(db, clock)
        assert deliver(db, routing, clock) == [("first", "firing", 0)]
        assert deliver(db, routing, clock) == []
        raise_alert(db, clock)  # the rule fires again: counted, not sent again
        clock.advance(299)
        assert deliver(db, routing, clock) == []

    def test_unacknowledged_alert_escalates_level_by_level(
        self, db: Database, routing: AlertRouting, clock: VirtualClock
    ) -> None:
        """Nobody acknowledges: after escalate_after_s each next receiver is told."""
        alert_id = raise_alert(db, clock)
        assert deliver(db, routing, clock) == [("first", "firing", 0)]
        clock.advance(300)
        assert deliver(db, routing, clock) == [("second", "firing", 1)]
        clock.advance(300)
        assert deliver(db, routing, clock) == [("third", "firing", 2)]
        assert row(db, alert_id).escalation_level == 2

    def test_the_last_receiver_is_told_again_until_acknowledged(
        self, db: Database, routing: AlertRouting, clock: VirtualClock
    ) -> None:
        """At the end of the route the last receiver is re-notified every renotify_s."""
        alert_id = raise_alert(db, clock)
        for _ in range(3):
            deliver(db, routing, clock)
            clock.advance(300)
        assert deliver(db, routing, clock) == []  # 300 s after "third": not yet
        clock.advance(300)
        assert deliver(db, routing, clock) == [("third", "firing", 2)]
        with db.session() as session:
            acknowledge(session, alert_id, by="alice", now=clock.now())
        clock.advance(3600)
        assert deliver(db, routing, clock) == []

    def test_acknowledged_in_time_never_reaches_the_second_receiver(
        self, db: Database, routing: AlertRouting, clock: VirtualClock
    ) -> None:
        """Acknowledged before escalate_after_s: nobody else is ever paged."""
        alert_id = raise_alert(db, clock)
        deliver(db, routing, clock)
        clock.advance(120)
        with db.session() as session:
            acknowledge(session, alert_id, by="alice", now=clock.now())
        clock.advance(7200)
        assert deliver(db, routing, clock) == []
        with db.session() as session:
            sent = session.query(AlertNotification).all()
            assert [n.receiver for n in sent] == ["first"]

    def test_renotify_sooner_than_escalation_repeats_the_current_level(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """renotify_s shorter than escalate_after_s re-tells the current receiver first."""
        routing = AlertRouting.parse({**ROUTE, "escalate_after_s": 300, "renotify_s": 120})
        raise_alert(db, clock)
        told = []
        for _ in range(5):  # t = 0, 60, 120, 180, 240
            told += deliver(db, routing, clock)
            clock.advance(60)
        assert told == [("first", "firing", 0), ("first", "firing", 0), ("first", "firing", 0)]
        assert deliver(db, routing, clock) == [("second", "firing", 1)]

    def test_a_failed_delivery_is_retried_and_escalation_goes_on(
        self, db: Database, routing: AlertRouting, clock: VirtualClock
    ) -> None:
        """A receiver that does not answer is tried again; the next level is still told on time."""
        raise_alert(db, clock)
        assert deliver(db, routing, clock, ok=False) == [("first", "firing", 0)]
        clock.advance(RETRY_S)
        assert deliver(db, routing, clock, ok=False) == [("first", "firing", 0)]
        clock.advance(300 - RETRY_S)
        assert deliver(db, routing, clock) == [("second", "firing", 1)]

    def test_resolution_is_announced_once_to_whoever_was_told(
        self, db: Database, routing: AlertRouting, clock: VirtualClock
    ) -> None:
        """Resolved: every receiver that heard it fire hears it resolved, once."""
        alert_id = raise_alert(db, clock)
        deliver(db, routing, clock)
        clock.advance(300)
        deliver(db, routing, clock)
        with db.session() as session:
            resolve_alert(session, alert_id, by="bob", now=clock.now())
        assert sorted(deliver(db, routing, clock)) == [
            ("first", "resolved", 0),
            ("second", "resolved", 1),
        ]
        clock.advance(3600)
        assert deliver(db, routing, clock) == []

    def test_resolved_before_anyone_was_told_is_never_sent(
        self, db: Database, routing: AlertRouting, clock: VirtualClock
    ) -> None:
        """A condition that cleared before the first delivery bothers nobody."""
        alert_id = raise_alert(db, clock)
        with db.session() as session:
            resolve_alert(session, alert_id, by="agent", now=clock.now())
        assert deliver(db, routing, clock) == []

    def test_resolved_while_the_first_notice_was_on_its_way(
        self, db: Database, routing: AlertRouting, clock: VirtualClock
    ) -> None:
        """Resolved between claim and delivery: the receiver still hears the resolution."""
        alert_id = raise_alert(db, clock)
        with db.session() as session:
            [delivery] = claim_due(session, routing, clock.now())
        with db.session() as session:
            resolve_alert(session, alert_id, by="agent", now=clock.now())
        with db.session() as session:
            record_delivery(session, delivery, ok=True, detail="HTTP 200", routing=routing)
        assert deliver(db, routing, clock) == [("first", "resolved", 0)]

    def test_below_min_severity_is_stored_but_not_sent(
        self, db: Database, routing: AlertRouting, clock: VirtualClock
    ) -> None:
        """An info alert is not routed (default min_severity warning) until it turns worse."""
        raise_alert(db, clock, severity="info")
        assert deliver(db, routing, clock) == []
        raise_alert(db, clock, severity="warning")
        assert deliver(db, routing, clock) == [("first", "firing", 0)]

    def test_a_claimed_delivery_is_not_claimed_twice(
        self, db: Database, routing: AlertRouting, clock: VirtualClock
    ) -> None:
        """While one notifier delivers, another (a replica) finds nothing due for that alert."""
        raise_alert(db, clock)
        with db.session() as session:
            claimed = claim_due(session, routing, clock.now())
        with db.session() as session:
            assert claim_due(session, routing, clock.now()) == []
        assert [d.receiver.name for d in claimed] == ["first"]
        assert isinstance(claimed[0], Delivery)

    def test_no_route_leaves_alerts_waiting(self, db: Database, clock: VirtualClock) -> None:
        """With no receivers nothing is claimed, so a route configured later still gets them."""
        alert_id = raise_alert(db, clock)
        assert deliver(db, AlertRouting(), clock) == []
        assert row(db, alert_id).next_notify_at == clock.now()


def gate(db: Database, targets: list[str]) -> list[Refusal]:
    """What the alert check refuses for a deploy to ``targets`` (none: the whole fleet)."""
    with db.session() as session:
        nodes = tuple(session.get_one(Node, name) for name in targets)
        return NoUnacknowledgedCritical().refusals(session, Proposal(Action.DEPLOY, nodes=nodes))


class TestGate:
    def test_critical_alert_on_a_target_blocks_naming_it(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """A firing critical alert on a target node refuses the action and says how to ack it."""
        alert_id = raise_alert(db, clock, node="node1")
        [refusal] = gate(db, ["node1", "node2"])
        assert refusal.check == "no-unacknowledged-critical"
        assert f"#{alert_id} guard:runaway on node1" in refusal.reason
        assert refusal.subjects == (f"alert #{alert_id}", "node1")
        assert refusal.hint is not None
        assert f"knightwatch alerts ack {alert_id}" in refusal.hint

    def test_every_alert_is_a_refusal_of_its_own(self, db: Database, clock: VirtualClock) -> None:
        """Two blocking alerts are two refusals, each naming its node, not just the first."""
        first = raise_alert(db, clock, node="node1")
        second = raise_alert(db, clock, node="node2")
        refusals = gate(db, ["node1", "node2"])
        assert [r.subjects for r in refusals] == [
            (f"alert #{first}", "node1"),
            (f"alert #{second}", "node2"),
        ]

    def test_scope(self, db: Database, clock: VirtualClock) -> None:
        """A node outside the targets does not block; a fleet-wide alert blocks everything."""
        raise_alert(db, clock, node="node2")
        assert gate(db, ["node1"]) == []
        raise_alert(db, clock, node=None)
        [refusal] = gate(db, ["node1"])
        assert "on the fleet" in refusal.reason and "fleet" in refusal.subjects

    def test_acknowledged_or_not_critical_does_not_block(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """Once acknowledged the alert no longer blocks; warnings never do."""
        alert_id = raise_alert(db, clock)
        raise_alert(db, clock, node="node2", severity="warning")
        with db.session() as session:
            acknowledge(session, alert_id, by="alice", now=clock.now())
        assert gate(db, []) == []

    def test_orchestrator_refuses_deploy_but_not_reconcile(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """A deploy is refused with nothing recorded; a reconcile (the repair) still runs."""
        orchestrator = Orchestrator(db, _NullSink(), clock, DeployTimeouts())
        alert_id = raise_alert(db, clock)
        with pytest.raises(GateRefusedError, match=f"deploy refused.*#{alert_id}") as refused:
            orchestrator.start(DeployRequest(release=DIGEST))
        assert isinstance(refused.value, PolicyRefusedError)
        assert refused.value.exit_code == 2
        assert [r.check for r in refused.value.refusals] == ["no-unacknowledged-critical"]
        with db.session() as session:
            assert session.query(Deployment).count() == 0
        orchestrator.start_reconcile("node1")
        with db.session() as session:
            assert session.query(Deployment).one().kind == "reconcile"


class TestMetrics:
    def test_statistics_and_exposition(self, db: Database, clock: VirtualClock) -> None:
        """Counts per state, time to halt per node, all parsed back by prometheus-client."""
        issued = clock.now()
        with db.session() as session:
            session.add(Halt(id=1, reason="runaway", requested_by="alice", issued_at=issued))
            for name, delay in (("node1", 0.03), ("node2", 0.4)):
                session.add(
                    HaltNode(
                        halt_id=1,
                        node_name=name,
                        received_at=issued,
                        halted_at=issued + timedelta(seconds=delay),
                    )
                )
        acknowledged = raise_alert(db, clock)
        raise_alert(db, clock, node="node2", severity="warning")
        with db.session() as session:
            acknowledge(session, acknowledged, by="alice", now=clock.now())
            stats = fleet_statistics(session, clock.now())
        assert stats.halts_active == 1
        assert sorted(stats.times_to_halt_s) == pytest.approx([0.03, 0.4])
        assert stats.alerts == {("acknowledged", "critical"): 1, ("firing", "warning"): 1}
        # connected but not reported yet: whether they are halted is not known
        assert stats.nodes == {("unknown", True, None): 2}

        registry = CollectorRegistry(auto_describe=False)
        registry.register(FleetCollector(db, clock))
        families = {
            f.name: f
            for f in text_string_to_metric_families(generate_latest(registry).decode("utf-8"))
        }
        histogram = {
            s.labels.get("le", s.name): s.value
            for s in families["knightwatch_time_to_halt_seconds"].samples
        }
        assert (histogram["0.025"], histogram["0.05"], histogram["0.5"]) == (0, 1, 2)
        assert histogram["+Inf"] == histogram["knightwatch_time_to_halt_seconds_count"] == 2
        assert histogram["knightwatch_time_to_halt_seconds_sum"] == pytest.approx(0.43)
        firing = {
            (s.labels["state"], s.labels["severity"]): s.value
            for s in families["knightwatch_alerts"].samples
        }
        assert firing[("firing", "warning")] == 1 and firing[("firing", "critical")] == 0
        assert families["knightwatch_halts_active"].samples[0].value == 1


class _NullSink:
    """Accepts every command (this test looks only at what is recorded)."""

    def send(self, node: str, message: object) -> bool:
        """Pretend the command went out."""
        return True
