"""The kill switch's domain, decision by decision, on a real store and a virtual clock.

What the adapter would send is what the functions return; the agents'
answers (HaltAck, RearmAck, the HaltState in every report) are fed in as
they would arrive. (tests/integration/test_killswitch.py drives the same
code with real agents.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from knightwatch.clock import VirtualClock
from knightwatch.control.alerts import list_alerts
from knightwatch.control.halt_reports import (
    ingest_halt_state,
    messages_on_connect,
    record_halt_ack,
    record_rearm_ack,
    stale_latch_rearm,
)
from knightwatch.control.halt_views import halt_report, list_halts
from knightwatch.control.killswitch import HaltPlan, dead_man_seconds, issue_halt, lift_halts
from knightwatch.control.policy import Action, Proposal
from knightwatch.control.policy.checks import NodesNotHalted
from knightwatch.errors import InvalidInputError
from knightwatch.protocol import Halt as HaltMessage
from knightwatch.protocol import HaltAck, HaltState, Rearm, RearmAck
from knightwatch.store import Database, Halt, HaltNode, Node

NODES = {"n1": "enrolled", "n2": "enrolled", "n3": "drained", "p1": "pending", "r1": "retired"}


@pytest.fixture
def clock() -> VirtualClock:
    """A clock that moves only when the test says so."""
    return VirtualClock(datetime(2012, 8, 1, 9, 30, tzinfo=UTC))


@pytest.fixture
def db(db: Database, clock: VirtualClock) -> Database:
    """A store with n1, n2 (enrolled), n3 (drained, group east), p1 (pending), r1 (retired)."""
    with db.session() as session:
        for name, status in NODES.items():
            session.add(
                Node(
                    name=name,
                    group_name="east" if name == "n3" else "default",
                    status=status,
                    created_at=clock.now(),
                    connected=name in ("n1", "n3"),
                )
            )
    return db


def halted_nodes(db: Database) -> list[str]:
    """Names of the nodes marked halted."""
    with db.session() as session:
        return sorted(session.scalars(select(Node.name).where(Node.halted)))


def halt_count(db: Database) -> int:
    """How many halts are recorded."""
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Halt)) or 0)


def issue(
    db: Database, clock: VirtualClock, selector: str | None = None, reason: str = "stop"
) -> HaltPlan:
    """Issue a halt and return its plan."""
    with db.session() as session:
        return issue_halt(session, selector, reason, "alice", clock.now())


def ack(db: Database, clock: VirtualClock, node: str, halt_id: int, took_s: float) -> None:
    """Feed node ``node``'s acknowledgement: service gone ``took_s`` after the clock's now."""
    now = clock.now()
    answer = HaltAck(
        halt_id=halt_id,
        received_at=now,
        halted_at=now + timedelta(seconds=took_s),
        stopped_pids=[4242],
        detail="stopped 1 process(es): 4242",
    )
    with db.session() as session:
        record_halt_ack(session, node, answer, now)


def report(db: Database, halt_id: int) -> dict[str, object]:
    """The halt report as JSON data."""
    with db.session() as session:
        return halt_report(session, halt_id).to_json()


class TestIssue:
    def test_a_fleet_halt_records_every_enrolled_and_drained_node(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """Every enrolled or drained node gets a row and is marked halted; pending/retired not."""
        plan = issue(db, clock, reason="runaway child orders")
        assert plan.online == ["n1", "n3"] and plan.offline == ["n2"]
        assert plan.message == HaltMessage(
            halt_id=plan.halt_id, reason="runaway child orders", issued_at=clock.now()
        )
        assert halted_nodes(db) == ["n1", "n2", "n3"]
        with db.session() as session:
            node = session.get(Node, "n2")
            assert node is not None
            assert (node.halt_source, node.halt_reason) == ("kill", "runaway child orders")
            rows = session.scalars(select(HaltNode.node_name).order_by(HaltNode.node_name))
            assert list(rows) == ["n1", "n2", "n3"]

    def test_a_scoped_halt_selects_by_name_glob_or_group(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """``--nodes`` takes names, globs and group=NAME."""
        assert issue(db, clock, "group=east").online == ["n3"]
        assert halted_nodes(db) == ["n3"]
        plan = issue(db, clock, "n[12]")
        assert (plan.online, plan.offline) == (["n1"], ["n2"])

    @pytest.mark.parametrize(
        ("selector", "reason", "expected"),
        [
            (None, "", "a reason is required"),
            (None, " \t\n", "a reason is required"),
            (None, "x" * 1001, "at most 1000 are kept"),
            ("nosuch", "stop", "no enrolled node matches nosuch"),
            ("p1", "stop", "no enrolled node matches p1"),
            ("Bad Name!", "stop", "is not a node name"),
        ],
    )
    def test_bad_input_is_refused_and_changes_nothing(
        self, db: Database, clock: VirtualClock, selector: str | None, reason: str, expected: str
    ) -> None:
        """An empty or too long reason, or a selector matching nothing, changes nothing."""
        with pytest.raises(InvalidInputError, match=expected.replace("[", r"\[")):
            issue(db, clock, selector, reason)
        assert halt_count(db) == 0
        assert halted_nodes(db) == []


class TestAcknowledgements:
    def test_time_to_halt_is_halted_at_minus_issued_at(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """Each ack records its times; the report names the nodes still to chase."""
        plan = issue(db, clock)
        ack(db, clock, "n1", plan.halt_id, 0.042)
        data = report(db, plan.halt_id)
        assert data["complete"] is False
        assert data["unacknowledged"] == ["n2", "n3"]
        nodes = {n["node"]: n for n in data["nodes"]}  # type: ignore[attr-defined]
        assert nodes["n1"]["acknowledged"] and nodes["n1"]["stopped_pids"] == [4242]
        assert nodes["n1"]["time_to_halt_ms"] == pytest.approx(42.0)
        assert nodes["n2"]["connected"] is False and nodes["n2"]["time_to_halt_ms"] is None
        for name in ("n2", "n3"):
            ack(db, clock, name, plan.halt_id, 0.010)
        assert report(db, plan.halt_id)["complete"] is True

    def test_only_the_first_acknowledgement_counts(self, db: Database, clock: VirtualClock) -> None:
        """A re-sent halt acknowledged again does not rewrite the recorded times."""
        plan = issue(db, clock)
        ack(db, clock, "n1", plan.halt_id, 0.05)
        clock.advance(10)
        ack(db, clock, "n1", plan.halt_id, 0.5)
        nodes = report(db, plan.halt_id)["nodes"]
        assert nodes[0]["time_to_halt_ms"] == pytest.approx(50.0)  # type: ignore[index]

    def test_an_unknown_halt_is_a_clear_error(self, db: Database) -> None:
        """Asking for a halt that does not exist says so."""
        with db.session() as session, pytest.raises(InvalidInputError, match="no halt 99"):
            halt_report(session, 99)


class TestLatch:
    def test_an_unacknowledged_halt_is_sent_again_on_connect(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """A node that missed the halt gets it when it reconnects; an acked one does not."""
        plan = issue(db, clock)
        ack(db, clock, "n1", plan.halt_id, 0.01)
        with db.session() as session:
            n1, n2 = session.get(Node, "n1"), session.get(Node, "n2")
            assert n1 is not None and n2 is not None
            halted = HaltState(halted=True, source="kill", halt_id=plan.halt_id)
            assert messages_on_connect(session, n1, halted) == []
            assert messages_on_connect(session, n2, HaltState()) == [plan.message]

    def test_a_node_that_lost_its_latch_is_halted_again(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """An acknowledged node that reports itself running again gets the halt again."""
        plan = issue(db, clock)
        ack(db, clock, "n1", plan.halt_id, 0.01)
        with db.session() as session:
            n1 = session.get(Node, "n1")
            assert n1 is not None
            assert messages_on_connect(session, n1, HaltState()) == [plan.message]

    def test_a_node_still_halted_after_a_lift_gets_the_rearm(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """A node offline during the re-arm gets the Rearm when it reconnects."""
        plan = issue(db, clock)
        with db.session() as session:
            lift_halts(session, None, "fixed", "bob", clock.now())
        with db.session() as session:
            n2 = session.get(Node, "n2")
            assert n2 is not None
            halted = HaltState(halted=True, source="kill", halt_id=plan.halt_id)
            assert messages_on_connect(session, n2, halted) == [
                Rearm(halt_id=plan.halt_id, reason="fixed")
            ]

    def test_a_node_that_latched_a_halt_after_its_lift_is_rearmed_by_its_next_report(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """A halt re-sent on connect can cross its lift: any report of the stale latch re-arms.

        Seen at 1,000 hollow agents: nodes re-halted by a halt already lifted
        stayed halted until they reconnected, and every deployment was refused.
        """
        plan = issue(db, clock)
        with db.session() as session:
            lift_halts(session, None, "fixed", "bob", clock.now())
        with db.session() as session:
            n1 = session.get(Node, "n1")
            assert n1 is not None
            stale = HaltState(halted=True, source="kill", halt_id=plan.halt_id)
            assert stale_latch_rearm(session, n1, stale) == [
                Rearm(halt_id=plan.halt_id, reason="fixed")
            ]
            assert stale_latch_rearm(session, n1, HaltState()) == []
            own = HaltState(halted=True, source="guard", halt_id=None)
            assert stale_latch_rearm(session, n1, own) == []  # a guard's halt is not ours to lift

    def test_a_halt_still_held_is_not_rearmed_by_a_report(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """While the halt holds, a node reporting it latched gets nothing."""
        plan = issue(db, clock)
        with db.session() as session:
            n1 = session.get(Node, "n1")
            assert n1 is not None
            held = HaltState(halted=True, source="kill", halt_id=plan.halt_id)
            assert stale_latch_rearm(session, n1, held) == []


class TestRearm:
    def test_a_scoped_rearm_leaves_the_rest_halted(self, db: Database, clock: VirtualClock) -> None:
        """Re-arming n1 lifts its part only; the halt stays active for n2 and n3."""
        plan = issue(db, clock)
        with db.session() as session:
            rearm = lift_halts(session, "n1", "n1 checked", "bob", clock.now())
        assert rearm.messages == [("n1", Rearm(halt_id=plan.halt_id, reason="n1 checked"))]
        assert (rearm.online, rearm.offline) == (["n1"], [])
        with db.session() as session:
            assert [h["halt_id"] for h in list_halts(session, active=True)] == [plan.halt_id]
        with db.session() as session:
            n1 = session.get(Node, "n1")
            assert n1 is not None
            ingest_halt_state(session, n1, HaltState(), clock.now())
        assert halted_nodes(db) == ["n2", "n3"]

    def test_a_full_rearm_lifts_the_halt(self, db: Database, clock: VirtualClock) -> None:
        """Re-arming every node lifts the halt (who, when, why) and sends each a Rearm."""
        plan = issue(db, clock)
        clock.advance(60)
        with db.session() as session:
            rearm = lift_halts(session, None, "root cause fixed", "bob", clock.now())
        assert rearm.lifted == [plan.halt_id]
        assert [n for n, _ in rearm.messages] == ["n1", "n2", "n3"]
        with db.session() as session:
            halt = session.get(Halt, plan.halt_id)
            assert halt is not None
            assert (halt.lifted_by, halt.lift_reason) == ("bob", "root cause fixed")
            assert halt.lifted_at == clock.now()
            record_rearm_ack(
                session,
                "n1",
                RearmAck(halt_id=plan.halt_id, rearmed_at=clock.now(), started=True),
                clock.now(),
            )
        nodes = report(db, plan.halt_id)["nodes"]
        assert nodes[0]["rearm"]["started"] is True  # type: ignore[index]

    def test_nothing_halted_nothing_to_rearm(self, db: Database, clock: VirtualClock) -> None:
        """A re-arm with no halted node is refused, changing nothing."""
        with db.session() as session, pytest.raises(InvalidInputError, match="no halted node"):
            lift_halts(session, None, "just in case", "bob", clock.now())

    def test_a_deploy_to_a_halted_node_is_refused(self, db: Database, clock: VirtualClock) -> None:
        """The deploy gate names the halted nodes, the cause and how to lift it."""
        issue(db, clock, "n2", reason="runaway")
        with db.session() as session:
            nodes = tuple(session.scalars(select(Node).order_by(Node.name)))
            [refused] = NodesNotHalted().refusals(session, Proposal(Action.DEPLOY, nodes=nodes))
            assert refused.reason == "n2 halted by the kill switch (kill: runaway)"
            assert refused.subjects == ("n2",)
            assert refused.hint is not None and "knightwatch rearm --nodes n2" in refused.hint
            n1 = tuple(n for n in nodes if n.name == "n1")
            assert NodesNotHalted().refusals(session, Proposal(Action.DEPLOY, nodes=n1)) == []

    def test_each_halt_cause_is_a_refusal_naming_its_nodes(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """Nodes halted for different reasons give one refusal per reason, each naming its nodes."""
        issue(db, clock, "n1,n3", reason="runaway")
        issue(db, clock, "n2", reason="disk full")
        with db.session() as session:
            nodes = tuple(session.scalars(select(Node).order_by(Node.name)))
            refusals = NodesNotHalted().refusals(session, Proposal(Action.DEPLOY, nodes=nodes))
        assert [(r.subjects, r.reason) for r in refusals] == [
            (("n1", "n3"), "n1,n3 halted by the kill switch (kill: runaway)"),
            (("n2",), "n2 halted by the kill switch (kill: disk full)"),
        ]


class TestOwnHalts:
    def test_a_dead_man_halt_is_recorded_once_and_alerts(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """A node reporting a dead-man halt shows as halted; one halt and one alert result."""
        since = clock.now()
        state = HaltState(
            halted=True, source="dead-man", since=since, reason="lost the control plane for 5.1 s"
        )
        for _ in range(3):  # every report carries it
            clock.advance(1)
            with db.session() as session:
                n2 = session.get(Node, "n2")
                assert n2 is not None
                ingest_halt_state(session, n2, state, clock.now())
        with db.session() as session:
            n2 = session.get(Node, "n2")
            assert n2 is not None
            assert (n2.halted, n2.halt_source, n2.halted_since) == (True, "dead-man", since)
            halts = list_halts(session)
            assert [(h["requested_by"], h["nodes"]) for h in halts] == [("dead-man:n2", ["n2"])]
            alerts = [a for a in list_alerts(session) if a.rule == "dead-man"]
            assert [(a.node_name, a.severity, a.count) for a in alerts] == [("n2", "critical", 1)]
        with db.session() as session:
            rearm = lift_halts(session, "n2", "link repaired", "bob", clock.now())
        assert rearm.messages == [
            ("n2", Rearm(halt_id=halts[0]["halt_id"], reason="link repaired"))
        ]

    def test_a_pending_kill_keeps_the_node_halted(self, db: Database, clock: VirtualClock) -> None:
        """A heartbeat sent before the agent acted on the halt does not un-halt the node."""
        issue(db, clock, "n1")
        with db.session() as session:
            n1 = session.get(Node, "n1")
            assert n1 is not None
            ingest_halt_state(session, n1, HaltState(), clock.now())
        assert halted_nodes(db) == ["n1"]


def test_only_armed_groups_get_a_dead_man_period() -> None:
    """Nodes of an armed group get T; others get None (no dead man's switch)."""
    assert dead_man_seconds("east", ("east", "west"), 5.0) == 5.0
    assert dead_man_seconds("default", ("east",), 5.0) is None
