"""Runtime guards: the release's CEL rules over its service's metrics, evaluated on the node.

Every ``[[guard]]`` rule is compiled once and evaluated on every scrape
(:mod:`knightwatch.agent.metrics`) with these variables:

* each metric by its sample name, e.g. ``smars_orders_total`` (its value,
  summed over label sets; a double);
* ``value``, ``delta`` and ``rate``: maps from every sample name to its value,
  its change since the last scrape, and that change per second, e.g.
  ``rate.smars_orders_total > 1000`` or ``value["job:errors:sum"] > 0``.

A rule that becomes true *fires* (a rising edge): an :class:`AlertEvent`
``guard:<name>`` with the rule's severity and action, sent once per rising
edge, so a flapping rule is one alert on the control plane whose count goes
up. A ``halt_node`` rule halts the node's service first, at once and
locally, then reports. A rule that becomes false again sends a resolved
event, but guard alerts are never resolved automatically: an operator
resolves them. A rule that cannot be evaluated (a metric missing, a type
error, a result that is not true or false) is never read as "fine": it
raises ``guard:<name>`` saying so. Rules using ``delta`` or ``rate`` wait for
the second scrape.

:class:`RuntimeGuards` runs the scraper, these rules and the log watch
(:mod:`knightwatch.agent.logwatch`) for whatever service the agent runs,
and restarts them when the active release changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from knightwatch.agent.events import event, logger
from knightwatch.agent.logwatch import LogWatch
from knightwatch.agent.metrics import SCRAPE_RULE, Scraper, Snapshot
from knightwatch.agent.runenv import ServiceLaunch
from knightwatch.bundle.spec import GuardSpec, LogPattern
from knightwatch.clock import Clock
from knightwatch.errors import KnightwatchError
from knightwatch.protocol.safety import MAX_METRICS_IN_REPORT, AlertEvent, HaltSource

__all__ = ["GUARD_PREFIX", "GuardEvaluator", "HaltNode", "RuntimeGuards", "rule_variables"]

GUARD_PREFIX = "guard:"
HaltNode = Callable[[HaltSource, str], Awaitable[object]]
"""Halts the node's service at once: called with the source (``"guard"``) and a reason."""
SendAlerts = Callable[[list[AlertEvent]], None]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CEL_RESERVED = frozenset(
    "true false null in as break const continue else for function if import let loop "  # noqa: SIM905 - words, not 21 lines
    "package namespace return var void while".split()
)
_FOLLOW_S = 5.0
"""Re-read what the supervisor runs at least this often; :meth:`RuntimeGuards.follow` wakes it."""


def rule_variables(snapshot: Snapshot) -> dict[str, Any]:
    """The CEL variables of a scrape: each metric by name, and the maps value, delta and rate."""
    variables: dict[str, Any] = {
        name: value
        for name, value in snapshot.values.items()
        if _IDENTIFIER.match(name) and name not in _CEL_RESERVED
    }
    variables.update(
        value=dict(snapshot.values), delta=dict(snapshot.delta), rate=dict(snapshot.rate)
    )
    return variables


@dataclass
class _Rule:
    spec: GuardSpec
    program: Any
    names: list[str]
    state: Literal["unknown", "clear", "firing", "error"] = "unknown"
    firings: int = 0

    @property
    def uses_change(self) -> bool:
        return "delta" in self.names or "rate" in self.names


class GuardEvaluator:
    """Evaluates a release's guard rules on each snapshot and turns edges into alerts."""

    def __init__(self, guards: Sequence[GuardSpec], *, halt: HaltNode, clock: Clock) -> None:
        # Imported here: the cel package pulls in a REPL toolkit at import.
        import cel  # noqa: PLC0415

        self._rules = []
        for spec in guards:
            program = cel.compile(spec.rule)
            self._rules.append(_Rule(spec, program, list(program.variables())))
        self._halt = halt
        self._clock = clock

    def reset(self) -> None:
        """Forget every rule's state: the next true result is a rising edge again."""
        for rule in self._rules:
            rule.state = "unknown"

    async def evaluate(self, snapshot: Snapshot) -> list[AlertEvent]:
        """Evaluate every rule on ``snapshot``; halt if a halt_node rule fires; return alerts."""
        variables = rule_variables(snapshot)
        alerts: list[AlertEvent] = []
        for rule in self._rules:
            if snapshot.first and rule.uses_change:
                continue
            outcome = _outcome(rule, variables)
            alert = await self._transition(rule, outcome, snapshot)
            if alert is not None:
                alerts.append(alert)
        return alerts

    async def _transition(
        self, rule: _Rule, outcome: bool | str, snapshot: Snapshot
    ) -> AlertEvent | None:
        spec, now = rule.spec, self._clock.now()
        if outcome is True and rule.state != "firing":
            rule.state = "firing"
            rule.firings += 1
            return await self._fire(rule, snapshot, now)
        if outcome is False and rule.state in ("firing", "error"):
            was = rule.state
            rule.state = "clear"
            event("guard-cleared", guard=spec.name, was=was)
            summary = (
                f"guard {spec.name} no longer holds"
                if was == "firing"
                else f"guard {spec.name} can be evaluated again"
            )
            return _alert(spec, summary, "", now, resolved=True)
        if isinstance(outcome, str) and rule.state != "error":
            rule.state = "error"
            event("guard-unevaluable", guard=spec.name, reason=outcome)
            summary = f"guard {spec.name} cannot be evaluated: {outcome}"
            detail = f"rule: {spec.rule} (action {spec.action}); missing data is never fine"
            return _alert(spec, summary, detail, now)
        if outcome is False:
            rule.state = "clear"
        return None

    async def _fire(self, rule: _Rule, snapshot: Snapshot, now: datetime) -> AlertEvent:
        spec = rule.spec
        summary = f"guard {spec.name} tripped: {spec.rule}"
        detail = _values_of(rule, snapshot)
        if spec.action == "halt_node":
            try:
                await self._halt(HaltSource.GUARD, summary)
                detail = f"the node's service was halted; {detail}"
            except Exception as exc:  # the alert must still go out
                logger.exception("guard-halt-failed")
                detail = f"halting the node FAILED ({type(exc).__name__}: {exc}); {detail}"
        event("guard-fired", guard=spec.name, action=spec.action, firings=rule.firings)
        return _alert(spec, summary, detail, now, action=spec.action)


def _outcome(rule: _Rule, variables: Mapping[str, Any]) -> bool | str:
    """True or False, or why the rule cannot be evaluated."""
    try:
        result = rule.program.execute(variables)
    except Exception as exc:  # the CEL runtime raises several kinds for missing data
        return str(exc).split(". ")[0][:500] or type(exc).__name__
    if not isinstance(result, bool):
        return f"the rule gives {type(result).__name__} {result!r}, not true or false"[:500]
    return result


def _values_of(rule: _Rule, snapshot: Snapshot) -> str:
    shown = [f"{name}={snapshot.values[name]:g}" for name in rule.names if name in snapshot.values]
    return "values: " + (", ".join(shown) if shown else "(see the rule)")


def _alert(
    spec: GuardSpec,
    summary: str,
    detail: str,
    now: datetime,
    *,
    resolved: bool = False,
    action: Literal["alert", "halt_node", "halt_fleet"] = "alert",
) -> AlertEvent:
    return AlertEvent(
        rule=GUARD_PREFIX + spec.name,
        severity=spec.severity,
        summary=summary[:4096],
        detail=detail[:4096],
        first_at=now,
        last_at=now,
        resolved=resolved,
        action=action,
    )


@dataclass
class _Run:
    """The guards of one service launch: its evaluator and its latest metrics."""

    launch: ServiceLaunch
    latest: dict[str, float] = field(default_factory=dict)
    was_running: bool = False


class RuntimeGuards:
    """Scrapes, evaluates the guards and watches the log of the service the agent runs."""

    def __init__(
        self,
        *,
        launch: Callable[[], ServiceLaunch | None],
        running: Callable[[], bool],
        guards: Callable[[str], Sequence[GuardSpec]],
        log_path: Path,
        halt: HaltNode,
        send: SendAlerts,
        clock: Clock,
    ) -> None:
        """``guards(digest)`` returns a release's ``[[guard]]`` rules (from its manifest)."""
        self._launch = launch
        self._running = running
        self._guards = guards
        self._halt = halt
        self._send = send
        self._clock = clock
        self._run: _Run | None = None
        self._task: asyncio.Task[None] | None = None
        self._moved = asyncio.Event()
        self.logs = LogWatch(log_path, self._patterns, send, clock=clock)

    def metrics(self) -> dict[str, float]:
        """The service's metrics at the last good scrape (finite values only), for reports."""
        if self._run is None:
            return {}
        return dict(sorted(self._run.latest.items())[:MAX_METRICS_IN_REPORT])

    def follow(self) -> None:
        """The service (or what the supervisor runs) changed: look again now."""
        self._moved.set()

    async def run(self) -> None:
        """Follow the service the agent runs, until cancelled."""
        logs = asyncio.create_task(self.logs.run())
        try:
            while True:
                self._moved.clear()
                launch = self._launch()
                if launch != (self._run.launch if self._run else None):
                    await self._switch(launch)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._moved.wait(), _FOLLOW_S)
        finally:
            await self._switch(None)
            await _cancel(logs)

    def _patterns(self) -> Sequence[LogPattern]:
        launch = self._launch()
        return launch.spec.log_pattern if launch is not None else ()

    async def _switch(self, launch: ServiceLaunch | None) -> None:
        if self._task is not None:
            await _cancel(self._task)
        self._run, self._task = None, None
        if launch is not None:
            self._run = _Run(launch)
            self._task = asyncio.create_task(self._scrape(self._run))

    async def _scrape(self, run: _Run) -> None:
        launch = run.launch
        if launch.spec.metrics is None:
            return
        try:
            endpoint = launch.expand(launch.spec.metrics.endpoint)
            guards = list(self._guards(launch.digest))
            evaluator = GuardEvaluator(guards, halt=self._halt, clock=self._clock)
        except (KnightwatchError, ValueError) as exc:
            reason = exc.message if isinstance(exc, KnightwatchError) else str(exc)
            event("guards-unusable", release=launch.release_id, reason=reason)
            self._send([_unusable(launch, reason, self._clock.now())])
            return
        scraper = Scraper(endpoint, launch.spec.metrics.scrape_interval_s, clock=self._clock)
        event("guards-start", release=launch.release_id, endpoint=endpoint, rules=len(guards))

        def active() -> bool:
            running = self._running()
            if run.was_running and not running:  # stopped, halted or restarting
                run.latest = {}
                evaluator.reset()
            run.was_running = running
            return running

        async def on_snapshot(snapshot: Snapshot) -> None:
            run.latest = {k: v for k, v in snapshot.values.items() if math.isfinite(v)}
            alerts = await evaluator.evaluate(snapshot)
            if alerts:
                self._send(alerts)

        def on_alert(alert: AlertEvent) -> None:
            if not alert.resolved:
                run.latest = {}
            self._send([alert])

        await scraper.run(on_snapshot, on_alert, active=active)


def _unusable(launch: ServiceLaunch, reason: str, now: datetime) -> AlertEvent:
    return AlertEvent(
        rule=SCRAPE_RULE,
        severity="warning",
        summary=f"the metrics of {launch.release_id} cannot be scraped: {reason}"[:4096],
        detail="guards over the service's metrics cannot be evaluated",
        first_at=now,
        last_at=now,
    )


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
