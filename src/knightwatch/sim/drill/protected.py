"""Scenarios B, C and D: the same day on a real fleet — 8 agents and a control plane.

The control plane runs the standard approval policy (a second person
approves every change), routes alerts through two receivers and escalates
after two seconds without acknowledgement. Each router is the service of an
agent, reads its flags through the SDK, and is guarded by the rules its
release declares.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knightwatch.errors import KnightwatchError
from knightwatch.localfleet import LocalFleet
from knightwatch.polling import wait_until
from knightwatch.sim.drill.desk import APPROVERS, Desk, flag_body
from knightwatch.sim.drill.links import (
    DrillError,
    ExchangeProcess,
    RouterLink,
    python_first_path,
)
from knightwatch.sim.drill.outcome import ScenarioOutcome
from knightwatch.sim.drill.releases import DrillReleases
from knightwatch.sim.drill.settings import DrillSettings
from knightwatch.sim.drill.trading import RunawayWatch, TradingDay
from knightwatch.sim.flow import ParentOrder

__all__ = [
    "FleetDrill",
    "drill_fleet",
    "restore_power_peg",
    "scenario_b",
    "scenario_c",
    "scenario_d",
]

ESCALATE_AFTER_S = 2.0
_RECEIVER = """import sys
with open(sys.argv[1], "a") as out:
    out.write(sys.stdin.read().replace("\\n", " ") + "\\n")
"""
Report = Callable[[str], None]


@dataclass
class FleetDrill:
    """What the three fleet scenarios share: the fleet, the people, the market, the flow."""

    settings: DrillSettings
    fleet: LocalFleet
    desk: Desk
    exchange: ExchangeProcess
    releases: DrillReleases
    flow: list[ParentOrder]
    say: Report

    @property
    def last_node(self) -> str:
        """The node the manual deploy missed on 1 August: node8."""
        return self.settings.node_names[-1]

    def new_day(self, outcome: ScenarioOutcome) -> TradingDay:
        """A fresh market and fresh routers for one scenario's trading day."""
        self.exchange.reset(self.settings.seed)
        routers = {n: RouterLink(n, self.fleet.service_port(n)) for n in self.settings.node_names}
        for router in routers.values():
            router.reset()
        return TradingDay(self.settings, self.exchange, routers, self.flow, outcome)

    def trade(self, day: TradingDay) -> None:
        """Pre-open checks, then the 45 minutes, then the books closed."""
        day.preopen()
        day.session(self.settings.end_s, speed=self.settings.speed)
        day.close_books()

    def nodes_on(self, label: str) -> list[str]:
        """The nodes whose active release is ``label`` (as the control plane reports it)."""
        wanted = self.releases.release_id(label)
        nodes = self.fleet.status()["nodes"]
        return sorted(n["name"] for n in nodes if n.get("active_release") == wanted)


@contextlib.contextmanager
def drill_fleet(
    settings: DrillSettings,
    work: Path,
    exchange: ExchangeProcess,
    releases: DrillReleases,
    flow: list[ParentOrder],
    say: Report,
) -> Iterator[FleetDrill]:
    """A fleet of ``settings.nodes`` agents on 2012.07, production as of 31 July 2012."""
    receiver = work / "receiver.py"
    receiver.write_text(_RECEIVER)
    pages = work / "pages"
    pages.mkdir(parents=True, exist_ok=True)
    routing = {
        "receivers": [
            {"name": name, "command": [sys.executable, str(receiver), str(pages / f"{name}.log")]}
            for name in ("on-call", "head-of-trading")
        ],
        "route": ["on-call", "head-of-trading"],
        "escalate_after_s": ESCALATE_AFTER_S,
        "renotify_s": 3600,
    }
    fleet = LocalFleet(
        work / "fleet",
        settings.nodes,
        trust=[releases.trust],
        server_env={"KNIGHTWATCH_APPROVALS": "standard", "KNIGHTWATCH_ALERTS": json.dumps(routing)},
        agent_args=("--health-timeout", "30", "--stat-interval", "1"),
        agent_env={"SMARS_EXCHANGE": exchange.url, "PATH": python_first_path()},
    )
    say(f"starting a control plane and {settings.nodes} agents")
    with fleet:
        desk = Desk(fleet)
        try:
            drill = FleetDrill(settings, fleet, desk, exchange, releases, flow, say)
            for label in ("2012.07", "2012.08"):
                fleet.push(releases.store, releases.release_id(label))
            say("31 July: every node on 2012.07 (deployed, approved, verified)")
            done = desk.deploy(releases.release_id("2012.07"), "production as of 31 July 2012")
            if done["state"] != "SUCCEEDED":
                raise DrillError(f"the fleet could not start on 2012.07: {done.get('reason')}")
            yield drill
        finally:
            desk.close()


@contextlib.contextmanager
def broken_download_area(root: Path) -> Iterator[None]:
    """A node that cannot stage: its blob download area is a file, not a directory."""
    partial = root / "blobs" / ".partial"
    aside = root / "blobs" / ".partial-aside"
    if partial.is_dir():
        partial.rename(aside)
    partial.write_text("this host was prepared by hand\n")
    try:
        yield
    finally:
        partial.unlink()
        if aside.exists():
            aside.rename(partial)
        else:
            partial.mkdir()


def scenario_b(drill: FleetDrill) -> ScenarioOutcome:
    """B: the same intent with knightwatch — refused, aborted, converged, approved, audited."""
    out = ScenarioOutcome("B", "knightwatch: the same intent, every step checked", "knightwatch")
    desk, fleet, releases = drill.desk, drill.fleet, drill.releases
    drill.say("B: push 2012.08-reuse (RLP behind the old power_peg flag)")
    try:
        fleet.push(releases.store, releases.release_id("2012.08-reuse"))
        out.facts["reuse_refused"] = False
    except KnightwatchError as exc:
        out.facts["reuse_refused"] = True
        out.facts["reuse_refusal"] = refusal_of(exc)
        out.mark(0.0, "refused", "2012.08-reuse refused at push: power_peg may not change meaning")
    new = releases.release_id("2012.08")
    drill.say(f"B: deploy 2012.08 while {drill.last_node} cannot stage")
    with broken_download_area(fleet.root(drill.last_node)):
        failed = desk.deploy(new, "RLP release; node8's disk is broken")
    out.facts["first_deploy"] = {"state": failed["state"], "reason": failed.get("reason")}
    out.facts["switched_by_failed_deploy"] = drill.nodes_on("2012.08")
    out.mark(0.0, "deploy", f"deploy of 2012.08 {failed['state']}: no node switched")
    drill.say("B: node fixed; deploy 2012.08 again")
    done = desk.deploy(new, "RLP release, node8 repaired")
    out.facts["second_deploy"] = {"state": done["state"]}
    out.facts["nodes_on_2012.08"] = drill.nodes_on("2012.08")
    out.mark(0.0, "deploy", f"deploy of 2012.08 {done['state']} on every node")
    drill.say("B: rlp on — proposed, refused to its author, approved by a second person")
    rlp_on = flag_body(True, "RLP goes live at the open")
    proposal = desk.propose("/flags/rlp/values", rlp_on, by=APPROVERS[0])
    if proposal.get("pending"):
        out.facts["self_approval_refusal"] = desk.self_approval(proposal)
    change = desk.acknowledged(proposal)
    out.facts["rlp_acknowledged_by"] = len(change["acknowledged"])
    out.mark(0.0, "flag", f"rlp on, acknowledged by {len(change['acknowledged'])} nodes")
    audit = desk.audit()
    out.facts["preopen_audit_ok"] = audit["ok"]
    out.mark(0.0, "audit", "pre-open audit " + ("clean" if audit["ok"] else "FOUND PROBLEMS"))
    drill.say("B: the trading day")
    day = drill.new_day(out)
    runaway = RunawayWatch(day, out)
    day.preopen()
    day.session(drill.settings.end_s, _watching(runaway), speed=drill.settings.speed)
    day.close_books()
    out.facts["overfilled"] = "runaway_started_s" in out.facts
    return out


def scenario_c(drill: FleetDrill) -> ScenarioOutcome:
    """C: node8's tree altered by hand — found before the open, the flag refused, escalated."""
    out = ScenarioOutcome("C", "defence in depth: node8 altered by hand", "node8 edited")
    desk, fleet, node = drill.desk, drill.fleet, drill.last_node
    desk.flag("rlp", False, "end of day: RLP off overnight")
    drill.say(f"C: someone copies the old Power Peg code into {node}'s live tree")
    changed = restore_power_peg(fleet.root(node), drill.releases.tree("2012.07"))
    started = time.monotonic()
    wait_until(lambda: _drifted(fleet, node), timeout=60, what=f"{node} to show drift")
    out.detected_after_s = time.monotonic() - started
    out.facts["drift_detected_real_s"] = out.detected_after_s
    out.facts["altered_file"] = changed
    out.mark(0.0, "alert", f"drift on {node} found before the open")
    drill.say("C: rlp on is proposed on the drifted fleet")
    out.facts["flag_refusal"] = _refusal(lambda: desk.flag("rlp", True, "RLP goes live"))
    out.facts["flag_refused"] = out.facts["flag_refusal"] is not None
    alert = wait_until(
        lambda: _escalated(desk, node), timeout=60, what=f"the drift alert on {node} to escalate"
    )
    out.facts["alert"] = {k: alert[k] for k in ("rule", "node", "severity", "summary")}
    out.facts["alert_escalation_level"] = alert["escalation_level"]
    desk.operator.post(f"/alerts/{alert['id']}/ack", {})
    out.mark(0.0, "alert", f"alert escalated to level {alert['escalation_level']}, acknowledged")
    drill.say(f"C: {node} reconciled (approved), audit, then rlp on")
    reconciled = desk.change(f"/nodes/{node}/reconcile", {"reason": "hand edit found by audit"})
    desk.wait_deployment(int(reconciled["id"]))
    audit = desk.audit()
    out.facts["audit_after_reconcile_ok"] = audit["ok"]
    desk.flag("rlp", True, "RLP, the fleet verified again")
    day = drill.new_day(out)
    runaway = RunawayWatch(day, out)
    day.preopen()
    day.session(drill.settings.end_s, _watching(runaway), speed=drill.settings.speed)
    day.close_books()
    out.facts["overfilled"] = "runaway_started_s" in out.facts
    return out


def scenario_d(drill: FleetDrill) -> ScenarioOutcome:
    """D: the fleet on 2012.07 with power_peg on — a guard halts, the kill switch stops all."""
    out = ScenarioOutcome("D", "a runaway anyway: guard and kill switch", "runaway")
    desk = drill.desk
    desk.flag("rlp", None, "RLP back to its default before going back to 2012.07")
    drill.say("D: every node back on 2012.07 (approved), power_peg on at the open")
    done = desk.deploy(drill.releases.release_id("2012.07"), "back to 2012.07 for the drill")
    out.facts["deploy"] = done["state"]
    day = drill.new_day(out)
    day.preopen()
    change = desk.flag("power_peg", True, "the drill: wake the dead code")
    out.facts["power_peg_acknowledged_by"] = len(change["acknowledged"])
    out.mark(day.now, "flag", "power_peg on at the open")
    day.barrier = True
    watch = _RunawayResponse(drill, day, out)
    day.session(drill.settings.end_s, watch.step, speed=drill.settings.speed)
    started = out.facts.get("runaway_started_s")
    if started is not None and watch.detected_at is not None:
        out.detected_after_s = watch.detected_at - started
    if started is not None and watch.halted_at is not None:
        out.halted_after_s = watch.halted_at - started
    day.close_books()
    return out


class _RunawayResponse:
    """What happens after each step of D: watch, see the guard's alert, press the kill switch."""

    def __init__(self, drill: FleetDrill, day: TradingDay, out: ScenarioOutcome) -> None:
        self._drill = drill
        self._day = day
        self._out = out
        self._runaway = RunawayWatch(day, out)
        self.detected_at: float | None = None
        self.halted_at: float | None = None

    def step(self, t: float) -> bool:
        """After the step at ``t``: False once the fleet is halted.

        The step's barrier let every agent scrape and act, so a router its guard
        halted is halted now; the operator then reads the alert and presses the
        kill switch before the next simulated step.
        """
        self._runaway.watch(t)
        halted = self._halted_routers()
        if not halted:
            return True
        self.detected_at = t
        self._out.facts["guard_halted_nodes"] = halted
        alerts = wait_until(self._guard_alerts, timeout=60, what="the guard's alert to arrive")
        first = min(alerts, key=lambda a: (a["first_at"], a["node"]))
        self._out.facts["guard_alert"] = {k: first[k] for k in ("rule", "node", "summary")}
        self._out.mark(t, "alert", f"guard {first['rule']} halted {', '.join(halted)}")
        self._kill(t)
        return False

    def _halted_routers(self) -> list[str]:
        """Routers halted by their hook, or gone already (the halt signal followed the hook)."""
        states = self._day.router_states()
        return sorted(n for n in self._day.routers if n not in states or states[n].get("halted"))

    def _guard_alerts(self) -> list[dict[str, Any]]:
        return [a for a in self._drill.desk.operator.get("/alerts") if _is_guard(a)]

    def _kill(self, t: float) -> None:
        desk = self._drill.desk
        self._drill.say("D: guard tripped — the operator presses the kill switch")
        halt = desk.operator.post("/halts", {"reason": "runaway child orders: guard tripped"})
        report = wait_until(
            lambda: _complete(desk, int(halt["halt_id"])), timeout=60, what="every node to halt"
        )
        self.halted_at = t
        self._out.facts["kill"] = {
            "nodes": len(report["nodes"]),
            "acknowledged": sum(1 for n in report["nodes"] if n["acknowledged"]),
            "max_time_to_halt_ms": report["max_time_to_halt_ms"],
            "time_to_halt_ms": {n["node"]: n["time_to_halt_ms"] for n in report["nodes"]},
        }
        self._out.mark(t, "halt", f"kill switch: {len(report['nodes'])} nodes halted")


def restore_power_peg(root: Path, old_tree: Path) -> str:
    """Copy 2012.07's Power Peg strategy over the live tree's (a hand edit); the file's path."""
    tree = (root / "current").resolve()
    relative = "smars/strategy.py"
    target = tree / relative
    target.parent.chmod(0o755)
    if target.exists():
        target.chmod(0o644)
    shutil.copyfile(old_tree / relative, target)
    return relative


def refusal_of(exc: KnightwatchError) -> dict[str, Any]:
    """A refusal as the report keeps it: the message and every reason of the policy."""
    reasons = [r.to_json() for r in getattr(exc, "refusals", [])]
    return {"message": exc.message, "reasons": reasons}


def _refusal(action: Callable[[], object]) -> dict[str, Any] | None:
    try:
        action()
    except KnightwatchError as exc:
        return refusal_of(exc)
    return None


def _drifted(fleet: LocalFleet, node: str) -> bool:
    status = fleet.status()
    return any(n["name"] == node and n.get("drift_state") == "drifted" for n in status["nodes"])


def _escalated(desk: Desk, node: str) -> dict[str, Any] | None:
    for alert in desk.operator.get("/alerts?state=firing"):
        if alert["node"] == node and alert["escalation_level"] >= 1:
            return dict(alert)
    return None


def _is_guard(alert: dict[str, Any]) -> bool:
    return str(alert["rule"]).startswith("guard:") and alert["severity"] == "critical"


def _complete(desk: Desk, halt_id: int) -> dict[str, Any] | None:
    report: dict[str, Any] = desk.operator.get(f"/halts/{halt_id}?wait_s=1")
    return report if report["complete"] else None


def _watching(runaway: RunawayWatch) -> Callable[[float], bool]:
    def step(t: float) -> bool:
        runaway.watch(t)
        return True

    return step
