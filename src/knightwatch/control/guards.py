"""Guards on the control plane: the nodes' alert events, and fleet rules (P5, P6).

**Node events.** Agents evaluate their release's guards and log patterns
themselves (:mod:`knightwatch.agent.guards`) and report each firing as an
``AlertEvent``; :func:`ingest_alerts` turns them into alerts deduplicated by
rule and node, so a flapping guard is one alert whose count goes up. The
count grows by each event's own count (a batch of 5 matching log lines
counts 5). Guard (``guard:*``) and log (``log:*``) alerts are resolved by an
operator, never by the rule turning false again: a runaway that paused is
not over. The ``scrape`` alert resolves itself when the node's scrapes work
again. Nothing else is stored.

**Fleet rules.** ``[[guard]]`` tables in ``DATA/server.toml`` (same keys and
validation as a release's ``[[guard]]``) are CEL rules over the *sum* of
every connected node's latest metrics (each node's report carries them).
They see each metric by name and the map ``value``; ``delta`` and ``rate``
are per node (use a release guard for those). A rule that becomes true
raises ``fleet-guard:<name>`` (no node); ``halt_fleet`` also asks for a
fleet-wide halt. A rule that cannot be evaluated while nodes report metrics
raises the same alert saying so.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.bundle.spec import GuardSpec
from knightwatch.clock import Clock
from knightwatch.control.alerts import fingerprint, fire, resolve
from knightwatch.control.killswitch import MAX_REASON
from knightwatch.errors import InvalidInputError
from knightwatch.protocol.safety import AlertEvent
from knightwatch.store import Database, Node
from knightwatch.vocabulary import NodeStatus

__all__ = [
    "AUTO_RESOLVED_RULES",
    "FLEET_PREFIX",
    "FleetGuards",
    "FleetHalt",
    "fleet_metrics",
    "ingest_alerts",
    "parse_fleet_guards",
]

FLEET_PREFIX = "fleet-guard:"
AUTO_RESOLVED_RULES = frozenset({"scrape"})
"""Rules whose alert resolves when the node says the condition cleared."""
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PER_NODE = ("delta", "rate")
log = logging.getLogger("knightwatch.guards")


@dataclass(frozen=True)
class FleetHalt:
    """A guard asked for a fleet-wide halt: which rule, on which node (None: a fleet rule)."""

    rule: str
    node: str | None
    reason: str

    @property
    def requested_by(self) -> str:
        """Who asks for the halt, as the kill switch records it: ``RULE@NODE`` (or ``@fleet``)."""
        return f"{self.rule}@{self.node or 'fleet'}"[:255]


def ingest_alerts(
    session: Session, node: str, events: Sequence[AlertEvent], now: datetime
) -> list[FleetHalt]:
    """Record the alert events a node reported; return the fleet halts they ask for."""
    halts: list[FleetHalt] = []
    for alert_event in events:
        if alert_event.resolved:
            if alert_event.rule in AUTO_RESOLVED_RULES:
                resolve(session, fingerprint(alert_event.rule, node), by=f"node:{node}", now=now)
            continue
        alert = fire(
            session,
            rule=alert_event.rule,
            node=node,
            severity=alert_event.severity,
            summary=alert_event.summary,
            detail=alert_event.detail,
            now=now,
        )
        alert.count += alert_event.count - 1  # a batch of N matches is N firings
        if alert_event.action == "halt_fleet":
            reason = f"{node}: {alert_event.summary}"[:MAX_REASON]
            halts.append(FleetHalt(alert_event.rule, node, reason))
    return halts


def parse_fleet_guards(value: Any) -> tuple[GuardSpec, ...]:
    """Validate fleet rules (``[[guard]]`` tables, or a JSON list of them).

    Raise InvalidInputError naming the entry and key, with the position of a
    CEL error.
    """
    items = json.loads(value) if isinstance(value, str) else value
    if not isinstance(items, list):
        raise InvalidInputError(
            "guard: expected a list of [[guard]] tables",
            hint="write each fleet rule as a [[guard]] table in server.toml",
        )
    guards: list[GuardSpec] = []
    for index, item in enumerate(items):
        try:
            guard = GuardSpec.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(part) for part in first["loc"]) or "(table)"
            message = str(first["msg"]).removeprefix("Value error, ")
            raise InvalidInputError(
                f"server.toml guard[{index}].{key}: {message}",
                hint="a fleet rule has name, rule (CEL), severity and action",
            ) from None
        used = _per_node_maps(guard.rule)
        if used:
            raise InvalidInputError(
                f"server.toml guard[{index}].rule: fleet rules see summed values; "
                f"{' and '.join(used)} are per node",
                hint="put rules over delta or rate in the release's [[guard]] entries",
            )
        if guard.name in {g.name for g in guards}:
            raise InvalidInputError(f"server.toml guard[{index}].name: duplicate {guard.name!r}")
        guards.append(guard)
    return tuple(guards)


def fleet_metrics(session: Session) -> tuple[dict[str, float], int]:
    """Every connected node's latest metrics summed by name, and how many nodes had any."""
    statement = select(Node.last_report).where(Node.connected, Node.status != NodeStatus.RETIRED)
    total: dict[str, float] = {}
    reporting = 0
    for text in session.scalars(statement):
        metrics = _metrics_of(text)
        if metrics:
            reporting += 1
        for name, value in metrics.items():
            total[name] = total.get(name, 0.0) + value
    return total, reporting


@dataclass
class _FleetRule:
    spec: GuardSpec
    program: Any
    names: list[str]
    state: Literal["unknown", "clear", "firing", "error"] = "unknown"


class FleetGuards:
    """The control plane's fleet rules, evaluated over the sum of the nodes' metrics."""

    def __init__(self, guards: Sequence[GuardSpec], *, period_s: float = 1.0) -> None:
        """``period_s``: how often :meth:`tick` evaluates (nodes report once a heartbeat)."""
        # Imported here: the cel package pulls in a REPL toolkit at import.
        import cel  # noqa: PLC0415

        self.rules = []
        for guard in guards:
            program = cel.compile(guard.rule)
            self.rules.append(_FleetRule(guard, program, list(program.variables())))
        self.period_s = period_s
        self._next = 0.0

    def tick(self, db: Database, clock: Clock) -> list[FleetHalt]:
        """Evaluate if a period has passed since the last evaluation; return fleet halts."""
        if not self.rules or clock.monotonic() < self._next:
            return []
        self._next = clock.monotonic() + self.period_s
        with db.session() as session:
            return self.evaluate(session, clock.now())

    def evaluate(self, session: Session, now: datetime) -> list[FleetHalt]:
        """Evaluate every rule once, raising alerts on edges; return the fleet halts asked for."""
        if not self.rules:
            return []
        total, reporting = fleet_metrics(session)
        if not reporting:
            return []  # no service reports metrics: nothing to guard yet
        variables = _variables(total)
        halts: list[FleetHalt] = []
        for rule in self.rules:
            halt = self._step(session, rule, _outcome(rule.program, variables), total, now)
            if halt is not None:
                halts.append(halt)
        return halts

    def _step(
        self,
        session: Session,
        rule: _FleetRule,
        outcome: bool | str,
        total: dict[str, float],
        now: datetime,
    ) -> FleetHalt | None:
        spec, name = rule.spec, FLEET_PREFIX + rule.spec.name
        if outcome is True and rule.state != "firing":
            rule.state = "firing"
            summary = f"fleet guard {spec.name} tripped: {spec.rule}"
            shown = ", ".join(f"{k}={total[k]:g}" for k in rule.names if k in total)
            detail = f"summed over the connected nodes: {shown or '(see the rule)'}"
            fire(
                session,
                rule=name,
                node=None,
                severity=spec.severity,
                summary=summary,
                detail=detail,
                now=now,
            )
            log.warning("%s", summary)
            if spec.action == "halt_fleet":
                return FleetHalt(name, None, summary[:MAX_REASON])
        elif isinstance(outcome, str) and rule.state != "error":
            rule.state = "error"
            summary = f"fleet guard {spec.name} cannot be evaluated: {outcome}"
            fire(
                session,
                rule=name,
                node=None,
                severity=spec.severity,
                summary=summary,
                detail=f"rule: {spec.rule}; missing data is never fine",
                now=now,
            )
            log.warning("%s", summary)
        elif outcome is False:
            if rule.state == "firing":
                log.info("fleet guard %s no longer holds (its alert stays open)", spec.name)
            rule.state = "clear"
        return None


def _per_node_maps(rule: str) -> list[str]:
    import cel  # noqa: PLC0415

    names = set(cel.compile(rule).variables())
    return [m for m in _PER_NODE if m in names]


def _metrics_of(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    try:
        metrics = json.loads(text)["state"]["metrics"]
    except (ValueError, KeyError, TypeError):
        return {}
    if not isinstance(metrics, dict):
        return {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}


def _variables(total: dict[str, float]) -> dict[str, Any]:
    variables: dict[str, Any] = {k: v for k, v in total.items() if _IDENTIFIER.match(k)}
    variables["value"] = dict(total)
    return variables


def _outcome(program: Any, variables: dict[str, Any]) -> bool | str:
    try:
        result = program.execute(variables)
    except Exception as exc:  # the CEL runtime raises several kinds for missing data
        return str(exc).split(". ")[0][:500] or type(exc).__name__
    if not isinstance(result, bool):
        return f"the rule gives {type(result).__name__} {result!r}, not true or false"[:500]
    return result
