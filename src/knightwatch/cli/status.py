"""``knightwatch status``: the fleet's state and every node's, as the control plane sees them."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from knightwatch.cli.options import JsonOpt, connect
from knightwatch.cli.output import colour, out, paint, print_json, shown
from knightwatch.vocabulary import DriftState

__all__ = ["register", "status"]


def status(json_output: JsonOpt = False) -> None:
    """Fleet state (CONVERGED, DRIFTED, MIXED, UNKNOWN, DEPLOYING, DEGRADED) and every node.

    A node whose agent is gone is UNKNOWN: its release, service and pid are shown
    as "last known" with that report's age, never as current. The agent column is
    each node's knightwatch version and protocol (p1: 0.1.x); an agent the control
    plane refused at connect (no protocol in common) is listed under the table, why.
    """
    data = connect().get("/status")
    if json_output:
        print_json(data)
        return
    out.print(
        f"fleet [bold {colour(data['state'])}]{data['state']}[/]{_condition_age(data)}   "
        f"release {shown(data['desired_release'] or '-')}   previous "
        f"{shown(data['previous_release'] or '-')}"
    )
    for reason in data["reasons"]:
        out.print(f"  • {shown(reason)}")
    table = Table(
        "node",
        "state",
        "active release",
        "digest",
        "drift",
        "service",
        "pid",
        "version",
        "agent",
        "report age",
    )
    for node in data["nodes"]:
        table.add_row(*_node_row(node))
    out.print(table)
    if any(node.get("last_known") for node in data["nodes"]):
        out.print("  (last known): from the node's last report, as old as its report age")
    for node in data["nodes"]:
        if line := _processes_line(node):
            out.print(line)
        if adoption := (node.get("processes") or {}).get("adoption"):
            out.print(f"  {shown(node['name'])}: at agent start, {shown(adoption)}")
    for node in data["nodes"]:
        if node.get("refusal"):
            name, why = shown(node["name"]), shown(node["refusal"])
            age = node.get("refused_age_s")
            when = f" {age:.0f} s ago" if age is not None else ""
            out.print(f"  [red]{name}: agent refused at connect{when}:[/] {why}")


def _processes_line(node: dict[str, Any]) -> str:
    """How a node accounts for its service's processes, said only when not exact or in use."""
    processes = node.get("processes") or {}
    accounting = processes.get("accounting")
    if accounting is None:
        return ""
    group = processes.get("cgroup")
    if group is None:
        return f"  {shown(node['name'])}: process accounting {shown(accounting)}"
    memory = group.get("memory_bytes")
    used = f", {memory / 2**20:.1f} MiB" if memory is not None else ""
    return (
        f"  {shown(node['name'])}: process accounting {shown(accounting)}, "
        f"{group['members']} processes{used} in {shown(group['path'])}"
    )


def _condition_age(data: dict[str, Any]) -> str:
    """The age shown after the fleet state, counted from when the condition began."""
    key = {"MIXED": "mixed_for_s", "DRIFTED": "drifted_for_s", "HALTED": "halted_for_s"}
    age = data.get(key.get(data["state"], ""))
    if age is None:
        return " (since: not recorded yet)" if data["state"] == "MIXED" else ""
    return f" for {age:.0f} s"


def _node_row(node: dict[str, Any]) -> list[str]:
    """One table row: current facts, or last-known ones marked so for an UNKNOWN node."""
    age_s = node["last_report_age_s"]
    age = f"{age_s:.1f} s" if age_s is not None else "never"
    drift = paint(node["drift_state"]) + (
        f" ({node['drift_count']})" if node["drift_state"] == DriftState.DRIFTED else ""
    )
    known = node.get("last_known")
    if known is None:
        facts = [
            shown(node["active_release"] or "-"),
            shown((node["active_digest"] or "-")[:12]),
            paint(node["service_state"]),
            shown(node["service_pid"] or "-"),
            shown(node["service_version"] or "-"),
        ]
    else:
        possible = node.get("possible_releases") or []
        release = (
            "[red]one of " + ", ".join(shown(p) for p in possible) + "?[/]"
            if possible
            else f"{shown(known['active_release'] or '-')} (last known)"
        )
        facts = [
            release,
            shown((known["active_digest"] or "-")[:12]),
            f"{shown(known['service_state'])} (last known)",
            f"{shown(known['service_pid'] or '-')} (last known)",
            shown(known["service_version"] or "-"),
        ]
    if known is not None:
        drift += " (last known)"
    state = node.get("state", "CONNECTED")
    agent = _agent(node)
    return [shown(node["name"]), paint(state), facts[0], facts[1], drift, *facts[2:], agent, age]


def _agent(node: dict[str, Any]) -> str:
    """The node's agent version and its session's protocol (``0.1.x p1``), or ``-``."""
    version = node.get("agent_version")
    if version is None:
        return "-"
    protocol = node.get("agent_protocol")
    return shown(version) + (f" p{protocol}" if protocol is not None else "")


def register(app: typer.Typer) -> None:
    """Add ``status`` to the CLI."""
    app.command("status", epilog="Example: knightwatch status --json")(status)
