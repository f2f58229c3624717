"""The Knightmare drill, run the way a user runs it: ``knightwatch drill knightmare`` and
``knightwatch demo``, each a real process driving a real control plane, 8 real agents, the
exchange simulator and the SMARS routers. Assertions read the simulation's own outputs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from knightwatch.localfleet.processes import kill_strays, stop_fleet
from knightwatch.testing import wait_until

SEED = "4242"
KNIGHTWATCH = str(Path(sys.executable).with_name("knightwatch"))


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One fast drill, through the CLI, its JSON report parsed."""
    report = tmp_path_factory.mktemp("drill")
    done = subprocess.run(
        [KNIGHTWATCH, "drill", "knightmare", "--fast", "--seed", SEED, "--report", str(report)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data: dict[str, Any] = json.loads((report / "report.json").read_text())
    data["stdout"] = done.stdout
    return data


def scenario(drill: dict[str, Any], key: str) -> dict[str, Any]:
    found: dict[str, Any] = drill["scenarios"][key]
    return found


class TestScenarioA:
    def test_the_manual_day_loses_money_on_a_split_fleet(self, drill: dict[str, Any]) -> None:
        a = scenario(drill, "A")
        assert a["pnl_cents"] < 0 and a["loss_cents"] > 0
        split = a["facts"]["releases_after_manual_deploy"]
        assert sorted(set(split.values())) == ["2012.07", "2012.08-reuse"]
        assert split["node8"] == "2012.07"
        assert a["facts"]["fleet_split"] is True
        assert a["facts"]["rolled_back"] is True
        assert set(a["facts"]["releases_at_end"].values()) == {"2012.07"}

    def test_the_runaway_overfills_and_nobody_reads_the_warnings(
        self, drill: dict[str, Any]
    ) -> None:
        a = scenario(drill, "A")
        assert a["facts"]["runaway_node"] == "node8"
        assert a["warnings"] > 0 and a["facts"]["warnings_before_open"] > 0
        assert a["child_shares"] > a["shares_traded"] > 0
        assert a["halted_after_s"] >= 2700 - 60  # nothing stopped it before the operator did

    def test_rolling_back_the_seven_made_it_worse(self, drill: dict[str, Any]) -> None:
        a = scenario(drill, "A")
        rollback = next(m["t"] for m in a["marks"] if m["kind"] == "rollback")
        samples = a["samples"]
        before = [s for s in samples if s["t"] <= rollback]
        after = [s for s in samples if s["t"] > rollback]
        rate_before = before[-1]["child_orders"] / (rollback - 5400)
        rate_after = (after[-1]["child_orders"] - before[-1]["child_orders"]) / (
            after[-1]["t"] - rollback
        )
        assert rate_after > 2 * rate_before


class TestScenarioB:
    def test_the_reused_flag_is_refused_at_push(self, drill: dict[str, Any]) -> None:
        b = scenario(drill, "B")
        assert b["facts"]["reuse_refused"] is True
        assert "power_peg" in b["facts"]["reuse_refusal"]["message"]

    def test_a_node_that_cannot_stage_aborts_the_deploy_with_no_node_switched(
        self, drill: dict[str, Any]
    ) -> None:
        b = scenario(drill, "B")
        assert b["facts"]["first_deploy"]["state"] == "FAILED"
        assert "node8" in b["facts"]["first_deploy"]["reason"]
        assert b["facts"]["switched_by_failed_deploy"] == []
        assert b["facts"]["second_deploy"]["state"] == "SUCCEEDED"
        assert len(b["facts"]["nodes_on_2012.08"]) == 8

    def test_rlp_needs_a_second_person_and_every_node(self, drill: dict[str, Any]) -> None:
        b = scenario(drill, "B")
        assert "cannot approve" in b["facts"]["self_approval_refusal"]
        assert b["facts"]["rlp_acknowledged_by"] == 8
        assert b["facts"]["preopen_audit_ok"] is True

    def test_trading_is_normal(self, drill: dict[str, Any]) -> None:
        b = scenario(drill, "B")
        assert b["facts"]["overfilled"] is False
        assert b["parent_orders"] > 0 and b["shares_traded"] > 0
        assert b["loss_cents"] < scenario(drill, "A")["loss_cents"] / 10


class TestScenarioC:
    def test_drift_is_found_the_flag_refused_the_alert_escalated(
        self, drill: dict[str, Any]
    ) -> None:
        c = scenario(drill, "C")
        assert c["detected_after_s"] is not None
        assert c["facts"]["flag_refused"] is True
        reasons = c["facts"]["flag_refusal"]["reasons"]
        assert any("node8" in r["subjects"] for r in reasons), reasons
        assert c["facts"]["alert"]["node"] == "node8"
        assert c["facts"]["alert_escalation_level"] >= 1
        assert c["facts"]["audit_after_reconcile_ok"] is True
        assert c["facts"]["overfilled"] is False


class TestScenarioD:
    def test_the_guard_and_the_kill_switch_bound_the_loss(self, drill: dict[str, Any]) -> None:
        a, d = scenario(drill, "A"), scenario(drill, "D")
        assert d["facts"]["guard_halted_nodes"]
        assert d["facts"]["guard_alert"]["rule"].startswith("guard:")
        kill = d["facts"]["kill"]
        assert kill["acknowledged"] == kill["nodes"] == 8
        assert d["detected_after_s"] is not None and d["halted_after_s"] is not None
        assert d["halted_after_s"] <= 120
        assert d["loss_cents"] < a["loss_cents"] / 20


class TestReport:
    def test_the_report_has_a_table_a_plot_and_the_real_measurements(
        self, drill: dict[str, Any]
    ) -> None:
        assert [row[0][0] for row in drill["table"]] == ["A", "B", "C", "D"]
        assert len(drill["columns"]) == len(drill["table"][0])
        plot = Path(drill["files"]["plot"])
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert drill["measured"]["kill_max_time_to_halt_ms"] is not None
        assert "Knightmare drill" in drill["stdout"] or drill["stdout"] == ""


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    report = tmp_path / "demo"
    process = subprocess.Popen(
        [KNIGHTWATCH, "demo", "--fast", "--speed", "0", "--seed", SEED, "--report", str(report)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    try:
        yield process, report
    finally:
        if process.poll() is None:  # a failed test: Ctrl-C it, then make sure nothing is left
            process.send_signal(signal.SIGINT)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
        stop_fleet(report / "work" / "fleet", grace=5)
        kill_strays(report)
        if process.stdout is not None:
            process.stdout.close()


def test_the_demo_serves_until_ctrl_c_then_stops_everything_and_repeats_the_table(
    drill: dict[str, Any], demo: tuple[subprocess.Popen[str], Path]
) -> None:
    """Same seed, same table; Ctrl-C stops every process the demo started."""
    process, report = demo
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line)
        if "Press Ctrl-C" in line:
            break
    text = "".join(lines)
    assert "still running at https://127.0.0.1:" in text, text[-3000:]
    again = json.loads((report / "report.json").read_text())
    assert again["table"] == drill["table"]
    fleet = report / "work" / "fleet"
    pids = [int(p.read_text()) for p in (fleet / "pids").glob("*.pid")]
    assert len(pids) == 9
    process.send_signal(signal.SIGINT)
    assert process.wait(120) == 0

    def all_gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() for pid in pids)

    wait_until(all_gone, timeout=60, what="every process of the demo to stop")
