"""Runtime guards on the node: CEL rules over the metrics, edges into alerts, halts.

The halt is the one fake here (an injected async callable that records its
calls); the rules are compiled and run by the real CEL implementation, and
:class:`RuntimeGuards` scrapes a real HTTP endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from knightwatch.agent.guards import GuardEvaluator, RuntimeGuards, rule_variables
from knightwatch.agent.metrics import Snapshot
from knightwatch.agent.runenv import ServiceLaunch
from knightwatch.bundle.spec import GuardSpec, ServiceSpec
from knightwatch.clock import SystemClock, VirtualClock
from knightwatch.protocol.safety import AlertEvent, HaltSource
from tests.agent.conftest import run
from tests.agent.test_metrics import MetricsServer

START = datetime(2012, 8, 1, 13, 30, tzinfo=UTC)


class FakeHalt:
    """Records every halt the guards ask for (the kill switch is not under test here)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[tuple[HaltSource, str]] = []
        self.fail = fail

    async def __call__(self, source: HaltSource, reason: str) -> None:
        self.calls.append((source, reason))
        if self.fail:
            raise RuntimeError("the service would not die")


def guard(rule: str, action: str = "alert", severity: str = "critical") -> GuardSpec:
    """A guard named ``g`` with ``rule``."""
    return GuardSpec(name="g", rule=rule, severity=severity, action=action)  # type: ignore[arg-type]


def snap(values: dict[str, float], **change: dict[str, float]) -> Snapshot:
    """A snapshot; with ``delta``/``rate`` given it is not the first."""
    return Snapshot(
        values=values,
        delta=change.get("delta", {}),
        rate=change.get("rate", {}),
        first=not change,
    )


def evaluate(evaluator: GuardEvaluator, snapshot: Snapshot) -> list[AlertEvent]:
    """Evaluate one snapshot."""
    return run(evaluator.evaluate(snapshot))


class TestVariables:
    def test_each_metric_by_name_and_the_three_maps(self) -> None:
        """Rules see each metric by name, and the maps value, delta and rate."""
        variables = rule_variables(
            snap({"orders_total": 5.0, "job:errors:sum": 1.0}, delta={"orders_total": 2.0})
        )
        assert variables["orders_total"] == 5.0
        assert "job:errors:sum" not in variables  # not a CEL identifier
        assert variables["value"] == {"orders_total": 5.0, "job:errors:sum": 1.0}
        assert variables["delta"] == {"orders_total": 2.0}
        assert variables["rate"] == {}

    @pytest.mark.parametrize(
        ("rule", "expected"),
        [
            ("child_total > parent_total", True),
            ("rate.child_total > 1000", True),
            ("delta.child_total == 600.0", True),
            ('value["job:errors:sum"] >= 1.0', True),
            ("child_total - parent_total > 100.0", True),
        ],
    )
    def test_documented_rule_forms(self, rule: str, expected: bool) -> None:
        """The rule forms the README documents evaluate as written."""
        evaluator = GuardEvaluator([guard(rule)], halt=FakeHalt(), clock=VirtualClock(START))
        snapshot = snap(
            {"child_total": 900.0, "parent_total": 500.0, "job:errors:sum": 1.0},
            delta={"child_total": 600.0},
            rate={"child_total": 1200.0},
        )
        alerts = evaluate(evaluator, snapshot)
        assert bool(alerts) is expected


class TestEdges:
    def test_a_rule_that_turns_true_fires_once(self) -> None:
        """A rising edge is one alert with the rule's severity and action; staying true: none."""
        evaluator = GuardEvaluator(
            [guard("a > b", severity="warning")], halt=FakeHalt(), clock=VirtualClock(START)
        )
        assert evaluate(evaluator, snap({"a": 1.0, "b": 2.0})) == []
        [alert] = evaluate(evaluator, snap({"a": 3.0, "b": 2.0}))
        assert (alert.rule, alert.severity, alert.action, alert.resolved) == (
            "guard:g",
            "warning",
            "alert",
            False,
        )
        assert "a=3" in alert.detail and "b=2" in alert.detail
        assert evaluate(evaluator, snap({"a": 4.0, "b": 2.0})) == []

    def test_a_rule_that_turns_false_sends_a_resolved_event(self) -> None:
        """A falling edge is reported as resolved (the control plane keeps the alert open)."""
        evaluator = GuardEvaluator([guard("a > 1")], halt=FakeHalt(), clock=VirtualClock(START))
        evaluate(evaluator, snap({"a": 2.0}))
        [cleared] = evaluate(evaluator, snap({"a": 0.0}))
        assert cleared.resolved and cleared.rule == "guard:g"

    def test_a_flapping_rule_fires_on_every_rising_edge(self) -> None:
        """true/false/true/false/true gives three firing events for the control plane to count."""
        evaluator = GuardEvaluator([guard("a > 1")], halt=FakeHalt(), clock=VirtualClock(START))
        events = [e for v in (2, 0, 2, 0, 2) for e in evaluate(evaluator, snap({"a": float(v)}))]
        assert [e.resolved for e in events] == [False, True, False, True, False]

    def test_reset_makes_a_true_rule_fire_again(self) -> None:
        """After the service restarts, a rule still true is a new rising edge."""
        halt = FakeHalt()
        evaluator = GuardEvaluator([guard("a > 1", "halt_node")], halt=halt, clock=VirtualClock())
        evaluate(evaluator, snap({"a": 2.0}))
        evaluator.reset()
        assert len(evaluate(evaluator, snap({"a": 2.0}))) == 1
        assert len(halt.calls) == 2


class TestHalt:
    def test_halt_node_halts_at_once_then_reports(self) -> None:
        """A halt_node guard calls the halt (source guard) before its alert is returned."""
        halt = FakeHalt()
        evaluator = GuardEvaluator(
            [guard("child > parent", "halt_node")], halt=halt, clock=VirtualClock(START)
        )
        [alert] = evaluate(evaluator, snap({"child": 2.0, "parent": 1.0}))
        assert halt.calls == [("guard", "guard g tripped: child > parent")]
        assert alert.action == "halt_node"
        assert "halted" in alert.detail

    def test_a_failed_halt_is_still_reported(self) -> None:
        """If the halt fails, the alert goes out anyway and says so."""
        evaluator = GuardEvaluator(
            [guard("a > 1", "halt_node")], halt=FakeHalt(fail=True), clock=VirtualClock()
        )
        [alert] = evaluate(evaluator, snap({"a": 2.0}))
        assert "FAILED" in alert.detail and "would not die" in alert.detail

    def test_halt_fleet_is_left_to_the_control_plane(self) -> None:
        """A halt_fleet guard does not halt the node itself; its alert carries the action."""
        halt = FakeHalt()
        evaluator = GuardEvaluator([guard("a > 1", "halt_fleet")], halt=halt, clock=VirtualClock())
        [alert] = evaluate(evaluator, snap({"a": 2.0}))
        assert alert.action == "halt_fleet"
        assert halt.calls == []


class TestMissingData:
    @pytest.mark.parametrize("action", ["halt_node", "halt_fleet", "alert"])
    def test_a_missing_metric_is_never_fine(self, action: str) -> None:
        """A rule over a metric the service does not export is an alert, not 'false'."""
        halt = FakeHalt()
        evaluator = GuardEvaluator(
            [guard("gone_total > 5", action)], halt=halt, clock=VirtualClock()
        )
        [alert] = evaluate(evaluator, snap({"other": 1.0}))
        assert "cannot be evaluated" in alert.summary
        assert alert.action == "alert"  # nothing was halted for want of data
        assert halt.calls == []
        assert evaluate(evaluator, snap({"other": 1.0})) == []  # said once, not every scrape

    @pytest.mark.parametrize(
        "rule", ["rate.gone > 1.0", "a + 1", "a > 'x'"], ids=["no-key", "not-bool", "type"]
    )
    def test_evaluation_errors_are_reported(self, rule: str) -> None:
        """A missing map key, a non-boolean result or a type error is reported as such."""
        evaluator = GuardEvaluator(
            [guard(rule, "halt_node")], halt=FakeHalt(), clock=VirtualClock()
        )
        [alert] = evaluate(evaluator, snap({"a": 1.0}, rate={"a": 0.0}))
        assert "cannot be evaluated" in alert.summary

    def test_rules_over_change_wait_for_the_second_scrape(self) -> None:
        """delta and rate do not exist on the first scrape: such rules are not evaluated yet."""
        evaluator = GuardEvaluator(
            [guard("rate.a > 10.0", "halt_node")], halt=FakeHalt(), clock=VirtualClock()
        )
        assert evaluate(evaluator, snap({"a": 1.0})) == []
        [alert] = evaluate(evaluator, snap({"a": 100.0}, rate={"a": 99.0}))
        assert alert.action == "halt_node"


class TestRuntimeGuards:
    def test_scrapes_trips_halts_and_reports(self, tmp_path: Path) -> None:
        """Against a real endpoint: metrics are kept for reports, a tripped guard halts."""
        halt = FakeHalt()
        sent: list[AlertEvent] = []
        with MetricsServer() as server:
            server.body = "# TYPE level gauge\nlevel 5\n"
            guards = RuntimeGuards(
                launch=lambda: _launch(tmp_path, server.url),
                running=lambda: True,
                guards=lambda _digest: [guard("level > 100.0", "halt_node")],
                log_path=tmp_path / "service.log",
                halt=halt,
                send=sent.extend,
                clock=SystemClock(),
            )

            async def scenario() -> None:
                async with _following(guards):
                    await _until(lambda: guards.metrics() == {"level": 5.0})
                    assert halt.calls == []
                    server.body = "# TYPE level gauge\nlevel 500\n"
                    await _until(lambda: bool(sent))

            run(scenario())
        assert [a.rule for a in sent] == ["guard:g"]
        assert [source for source, _ in halt.calls] == ["guard"]

    def test_a_new_service_is_followed_when_the_supervisor_says_so(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No polling: the supervisor's change notice starts the scrapes of a new launch."""
        monkeypatch.setattr("knightwatch.agent.guards._FOLLOW_S", 3600.0)
        current: list[ServiceLaunch] = []
        with MetricsServer() as server:
            server.body = "# TYPE level gauge\nlevel 7\n"
            guards = _quiet_guards(tmp_path, lambda: current[0] if current else None, lambda: True)

            async def scenario() -> None:
                async with _following(guards):
                    await asyncio.sleep(0.3)
                    assert guards.metrics() == {}
                    current.append(_launch(tmp_path, server.url))
                    guards.follow()
                    await _until(lambda: guards.metrics() == {"level": 7.0})

            run(scenario())

    def test_metrics_are_dropped_while_the_service_is_not_running(self, tmp_path: Path) -> None:
        """A stopped or halted service reports no (stale) metrics."""
        running = True
        with MetricsServer() as server:
            guards = _quiet_guards(tmp_path, lambda: _launch(tmp_path, server.url), lambda: running)

            async def scenario() -> None:
                nonlocal running
                async with _following(guards):
                    await _until(lambda: bool(guards.metrics()))
                    running = False
                    await _until(lambda: not guards.metrics())

            run(scenario())


def _launch(tmp_path: Path, url: str) -> ServiceLaunch:
    spec = ServiceSpec.model_validate(
        {"command": ["true"], "metrics": {"endpoint": url, "scrape_interval_s": 0.02}}
    )
    return ServiceLaunch("d" * 64, "svc@1+dddddddddddd", tmp_path, spec, {})


def _quiet_guards(
    tmp_path: Path, launch: Callable[[], ServiceLaunch | None], running: Callable[[], bool]
) -> RuntimeGuards:
    """Runtime guards with no rules: only the scraping and the following are exercised."""
    return RuntimeGuards(
        launch=launch,
        running=running,
        guards=lambda _digest: [],
        log_path=tmp_path / "service.log",
        halt=FakeHalt(),
        send=lambda _alerts: None,
        clock=SystemClock(),
    )


@contextlib.asynccontextmanager
async def _following(guards: RuntimeGuards) -> AsyncIterator[None]:
    """Run ``guards`` in the background for the block."""
    task = asyncio.create_task(guards.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(check: object) -> None:
    assert callable(check)
    async with asyncio.timeout(60):
        while not check():
            await asyncio.sleep(0.01)
