"""Halting a service of 50 workers, some double-forked: its cgroup against the /proc fallback.

Two figures, each with cgroups and with the /proc fallback side by side:

1. **Halt to every process gone.** A service forks 35 workers and 15
   daemons (double fork + ``setsid``: their parent is init, not the
   service). The agent's halt path runs in-process on a real Supervisor —
   ``stop(halted=True)``, then, for the fallback, the /proc stray sweep the
   kill switch runs after a halt (``stop_strays``, here without its
   ``STRAY_SWEEP_DELAY_S`` wait, which in the agent comes on top). The
   clock starts at the call and stops when no process of the service is
   alive (checked on /proc by pid and start time). The fallback's figure for
   the supervisor stop alone says how many daemons it left to the sweep.
2. **Agent idle CPU.** A real one-node fleet (server + agent, the idle
   ``sleep`` release of bench/killswitch.py, a process check every second)
   sits idle for ``--idle-s`` seconds; the agent's utime + stime over that
   window, as a share of one core. The fallback agent is pointed at a
   ``--cgroup-mount`` where no cgroup can be created.

Figures only; nothing passes or fails on time.

    python bench/cgroup_halt.py                 # 20 halts each way, 30 s idle each way
    python bench/cgroup_halt.py --reps 5 --idle-s 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.killswitch import build  # noqa: E402
from knightwatch.agent.cgroup import CgroupHost, probe_cgroups  # noqa: E402
from knightwatch.agent.errors import CgroupUnavailableError  # noqa: E402
from knightwatch.agent.procaudit import runs_a_release  # noqa: E402
from knightwatch.agent.process import read_stat  # noqa: E402
from knightwatch.agent.runenv import ServiceLaunch  # noqa: E402
from knightwatch.agent.servicelog import ServiceLog  # noqa: E402
from knightwatch.agent.supervisor import Supervisor  # noqa: E402
from knightwatch.agent.termination import stop_strays  # noqa: E402
from knightwatch.bundle.spec import ServiceSpec  # noqa: E402
from knightwatch.localfleet import LocalFleet  # noqa: E402
from knightwatch.testing import wait_until  # noqa: E402

DIGEST = "b" * 64
WORKERS, DAEMONS = 35, 15
SERVICE = f"""\
import os, time

def work():
    while True:
        time.sleep(0.2)

for _ in range({WORKERS}):
    if os.fork() == 0:
        work()
for _ in range({DAEMONS}):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            work()
        os._exit(0)
print("ready", flush=True)
work()
"""


def _service_pids(release: Path) -> dict[int, int]:
    """Every live process working in ``release`` (pid: start ticks)."""
    found: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        stat = read_stat(int(name))
        if cwd == str(release) and stat is not None and not stat.dead:
            found[int(name)] = stat.start_ticks
    return found


def _alive(family: dict[int, int]) -> int:
    count = 0
    for pid, ticks in family.items():
        stat = read_stat(pid)
        count += stat is not None and not stat.dead and stat.start_ticks == ticks
    return count


async def one_halt(work: Path, host: CgroupHost | None) -> dict[str, float]:
    """Start the 50-worker service, halt it; return the timings in ms."""
    shutil.rmtree(work, ignore_errors=True)
    root = work / "root"
    release = root / "releases" / DIGEST
    release.mkdir(parents=True)
    (release / "svc.py").write_text(SERVICE)
    spec = ServiceSpec.model_validate({"command": [sys.executable, "svc.py"]})
    launch = ServiceLaunch(DIGEST, "bench@1", release, spec, {})
    log = work / "service.log"
    sup = Supervisor(ServiceLog(log), cgroups=host, node="bench")
    await sup.start(launch)
    deadline = time.monotonic() + 60
    family: dict[int, int] = {}
    while len(family) < WORKERS + DAEMONS + 1:  # the leader, its workers, their daemons
        if time.monotonic() > deadline:
            raise SystemExit(f"the bench service started only {len(family)} processes")
        await asyncio.sleep(0.02)
        family = _service_pids(release) if log.exists() else {}
    await asyncio.sleep(0.1)  # a daemon's intermediate parent exits
    family = _service_pids(release)
    started = time.perf_counter()
    await sup.stop(halted=True)
    stopped = time.perf_counter()
    left = _alive(family)
    if host is None:
        await stop_strays(root, DIGEST, only=runs_a_release)
    while _alive(family):
        await asyncio.sleep(0.001)
    gone = time.perf_counter()
    return {
        "processes": float(len(family)),
        "stop_ms": (stopped - started) * 1000,
        "left_after_stop": float(left),
        "gone_ms": (gone - started) * 1000,
    }


def bench_halts(work: Path, reps: int, host: CgroupHost | None) -> dict[str, Any]:
    """``reps`` halts; medians and maxima."""
    runs = [asyncio.run(one_halt(work / "halt", host)) for _ in range(reps)]
    return {
        key: {"median": statistics.median(r[key] for r in runs), "max": max(r[key] for r in runs)}
        for key in runs[0]
    }


def _cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(work: Path, idle_s: float, release: tuple[Path, Path, str], cgroups: bool) -> float:
    """The agent's CPU share of one core while idle with its service running."""
    store, public_key, release_id = release
    args = ["--health-timeout", "30", "--process-check-interval", "1"]
    if not cgroups:
        (work / "no-cgroups").mkdir(parents=True, exist_ok=True)
        args += ["--cgroup-mount", str(work / "no-cgroups")]
    fleet = LocalFleet(
        work / ("fleet-cg" if cgroups else "fleet-proc"),
        nodes=1,
        trust=[public_key],
        agent_args=args,
    )
    with fleet:
        fleet.push(store, release_id)
        done = fleet.deploy(release_id, timeout=300)
        if done["state"] != "SUCCEEDED":
            raise SystemExit(f"deploy ended {done['state']}: {done['reason']}")
        node = fleet.status()["nodes"][0]
        wanted = "exact" if cgroups else "best effort"
        wait_until(
            lambda: wanted in str(fleet.status()["nodes"][0].get("processes")),
            timeout=60,
            what=f"{wanted} accounting",
            interval=0.5,
        )
        time.sleep(3)  # past start-up work
        pid = fleet.agent_pid(node["name"])
        before, started = _cpu_s(pid), time.monotonic()
        time.sleep(idle_s)
        return (_cpu_s(pid) - before) / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    """Run both figures both ways and print them side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="halts each way")
    parser.add_argument("--idle-s", type=float, default=30.0, help="idle window each way")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        host: CgroupHost | None = probe_cgroups()
    except (CgroupUnavailableError, OSError) as exc:  # the bench needs both ways
        raise SystemExit(f"cgroups unavailable here: {exc}") from None
    work = Path(tempfile.mkdtemp(prefix="kw-cgroup-bench-"))
    try:
        results: dict[str, Any] = {"kernel": os.uname().release, "layout": host.version}
        results["halt_cgroup"] = bench_halts(work, args.reps, host)
        results["halt_proc"] = bench_halts(work, args.reps, None)
        store, key, idle, _guarded = build(work / "build")
        release = (store, key, idle)
        results["idle_cpu_cgroup"] = idle_cpu(work, args.idle_s, release, True)
        results["idle_cpu_proc"] = idle_cpu(work, args.idle_s, release, False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"kernel {results['kernel']}, cgroup layout {results['layout']}, {args.reps} halts each")
    print(f"{'':32}{'cgroup':>18}{'/proc fallback':>18}")
    cg, proc = results["halt_cgroup"], results["halt_proc"]
    for key, label in (
        ("processes", "processes in the service"),
        ("stop_ms", "supervisor stop, ms"),
        ("left_after_stop", "alive after the stop"),
        ("gone_ms", "halt -> every process gone, ms"),
    ):
        print(
            f"{label:32}{cg[key]['median']:>9.1f} (max {cg[key]['max']:>5.1f})"
            f"{proc[key]['median']:>9.1f} (max {proc[key]['max']:>5.1f})"
        )
    print(
        f"{'agent idle CPU, % of a core':32}{results['idle_cpu_cgroup'] * 100:>18.2f}"
        f"{results['idle_cpu_proc'] * 100:>18.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
