"""Scenario A: 1 August 2012 as it happened — by hand, with none of knightwatch's protections.

A technician's script copies the new release into 7 of the 8 hosts (the
eighth is missed), the flag is switched on in every host's flags file with
no check of what each host runs, the routers' warnings go to log files
nobody reads, there is no kill switch, and the "fix" rolls the seven good
hosts back to the old release — whose dead code the reused flag now wakes
everywhere. The routers are plain processes started by the script, not
services of an agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import knightwatch
from knightwatch.agent.flagfile import declared_defaults
from knightwatch.bundle.spec import load_spec
from knightwatch.localfleet.processes import free_port
from knightwatch.polling import wait_until
from knightwatch.sim.drill.links import DrillError, ExchangeProcess, RouterLink, python_first_path
from knightwatch.sim.drill.outcome import ScenarioOutcome
from knightwatch.sim.drill.releases import DrillReleases
from knightwatch.sim.drill.settings import DAY_START, DrillSettings, clock_time
from knightwatch.sim.drill.trading import RunawayWatch, TradingDay
from knightwatch.sim.flow import ParentOrder

__all__ = ["ManualHost", "run_manual_day"]

REUSED_FLAG = "power_peg"
WARNING = "Power Peg disabled"


class ManualHost:
    """One host of the manual process: a copied tree, a hand-written flags file, a process."""

    def __init__(self, node: str, directory: Path, exchange_url: str) -> None:
        self.node = node
        self.directory = directory
        self.exchange_url = exchange_url
        self.release = directory / "smars"
        self.label = ""
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def log(self) -> Path:
        """Where the router's output goes: the file nobody reads."""
        return self.directory / "smars.log"

    def install(self, label: str, tree: Path) -> None:
        """Copy a release tree over whatever the host had (what the script did)."""
        shutil.rmtree(self.release, ignore_errors=True)
        shutil.copytree(tree, self.release, symlinks=True)
        self.label = label

    def switch_flag_on(self, name: str) -> None:
        """Write ``name`` on in the host's flags file, whatever its release makes of it."""
        defaults = declared_defaults(load_spec(self.release).flag)
        flags = {
            flag: {**declared, "value": flag == name or declared["default"], "source": "fleet"}
            for flag, declared in defaults.items()
        }
        document = {
            "format": 1,
            "node": self.node,
            "release": None,
            "version": 1,
            "written_at": DAY_START.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "flags": flags,
        }
        (self.directory / "flags.json").write_text(json.dumps(document))

    def start(self) -> RouterLink:
        """Start the router from the copied tree; return a link once it answers."""
        defaults = declared_defaults(load_spec(self.release).flag)
        env = {
            "PATH": python_first_path(),
            "PYTHONPATH": str(Path(knightwatch.__file__).resolve().parent.parent),
            "PYTHONDONTWRITEBYTECODE": "1",
            "SMARS_PORT": str(self.port),
            "SMARS_EXCHANGE": self.exchange_url,
            "KNIGHTWATCH_NODE": self.node,
            "KNIGHTWATCH_FLAGS_FILE": str(self.directory / "flags.json"),
            "KNIGHTWATCH_FLAG_DEFAULTS": json.dumps(defaults),
        }
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "bin/smars-router"],
                cwd=self.release,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        link = RouterLink(self.node, self.port)
        wait_until(self._answers, timeout=30, what=f"the router on {self.node} to start")
        return link

    def stop(self) -> None:
        """Kill the router (how the 45 minutes ended: someone stopped the processes)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def warnings(self) -> int:
        """How many warning lines the router wrote (nobody read them)."""
        if not self.log.exists():
            return 0
        return sum(WARNING in line for line in self.log.read_text(errors="replace").splitlines())

    def _answers(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-1500:]
            raise DrillError(f"the router on {self.node} exited at start:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
            return True
        return False


def run_manual_day(
    settings: DrillSettings,
    work: Path,
    exchange: ExchangeProcess,
    flow: list[ParentOrder],
    releases: DrillReleases,
) -> ScenarioOutcome:
    """Scenario A, start to end, measured."""
    out = ScenarioOutcome("A", "1 August 2012: by hand, no knightwatch", "by hand")
    exchange.reset(settings.seed)
    names = settings.node_names
    hosts = {n: ManualHost(n, work / "scenario-a" / n, exchange.url) for n in names}
    for host in hosts.values():
        host.install("2012.07", releases.tree("2012.07"))
    new = "2012.08-reuse"  # the build Knight shipped: RLP behind the old Power Peg flag
    for node in names[:-1]:
        hosts[node].install(new, releases.tree(new))
    split = {n: h.label for n, h in hosts.items()}
    out.facts["releases_after_manual_deploy"] = split
    out.facts["fleet_split"] = len(set(split.values())) > 1
    out.mark(
        0.0, "deploy", f"{len(names) - 1} of {len(names)} hosts copied by hand; {names[-1]} missed"
    )
    for host in hosts.values():
        host.switch_flag_on(REUSED_FLAG)
    out.mark(0.0, "flag", f"{REUSED_FLAG} switched on everywhere, unchecked")
    day = TradingDay(settings, exchange, {n: h.start() for n, h in hosts.items()}, flow, out)
    try:
        day.preopen()
        out.facts["warnings_before_open"] = sum(h.warnings() for h in hosts.values())
        out.mark(settings.open_s, "open", "the market opens")
        runaway = RunawayWatch(day, out)
        rollback_at = settings.open_s + settings.rollback_after_s

        def on_step(t: float) -> bool:
            runaway.watch(t)
            if t >= rollback_at and not out.facts.get("rolled_back"):
                _roll_back(day, hosts, names[:-1], releases, out, t)
            return True

        day.session(settings.end_s, on_step, speed=settings.speed)
    finally:
        for host in hosts.values():
            host.stop()
    end = day.now
    out.mark(end, "halt", "the operator stops every router by hand")
    out.facts["releases_at_end"] = {n: h.label for n, h in hosts.items()}
    out.warnings = sum(h.warnings() for h in hosts.values())
    started = out.facts.get("runaway_started_s")
    if started is not None:
        out.halted_after_s = end - started
        out.detected_after_s = rollback_at - started if rollback_at >= started else 0.0
    day.close_books()
    return out


def _roll_back(
    day: TradingDay,
    hosts: dict[str, ManualHost],
    nodes: list[str],
    releases: DrillReleases,
    out: ScenarioOutcome,
    t: float,
) -> None:
    """The "fix": the seven hosts with the new code get the old code back, flag still on."""
    for node in nodes:
        host = hosts[node]
        host.stop()
        host.install("2012.07", releases.tree("2012.07"))
        day.replace_router(node, host.start())
    out.facts["rolled_back"] = True
    out.mark(t, "rollback", f"{len(nodes)} hosts rolled back to 2012.07 at {clock_time(t)}")
