"""Kill-switch benchmark: from the ``kill`` command to every service process gone.

For fleets of 8, 64 and 256 local agents, each supervising a trivial service
(``sleep``, which exits on SIGTERM), every repetition:

1. notes the client's clock, then POSTs a fleet-wide halt (what ``knightwatch
   kill`` does);
2. waits until every node acknowledged; each acknowledgement carries the
   time that node's agent saw its service gone (waitpid reaped it and /proc
   shows nothing left of its process group);
3. records the slowest node: max(halted_at) − the client's send time — one
   clock, this machine's;
4. re-arms the fleet and waits until every service runs again.

Figures only (median, p99, max per fleet size), printed beside the issue's
goals; it never passes or fails on time. Agents run with their periodic
audits slowed down (an hour apart) so that 256 of them fit on a small
machine; the kill path itself is the production one.

    python bench/killswitch.py                    # 8, 64, 256 agents, 50 repetitions
    python bench/killswitch.py --sizes 8,64 --reps 20
    python bench/killswitch.py --quick            # 8 agents, 10 repetitions
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.deploy import machine  # noqa: E402
from knightwatch.bundle import build_release, generate_keypair, load_signing_key  # noqa: E402
from knightwatch.testing import LocalFleet, wait_until  # noqa: E402

EPOCH = {"SOURCE_DATE_EPOCH": "1343826000"}
GOALS_MS = {8: 100.0, 256: 1000.0}
SPEC = """\
[release]
name = "idle"
version = "1.0.0"

[[component]]
name = "all"
version = "1.0.0"
paths = ["**"]

[service]
command = ["sleep", "2147483647"]
halt = { signal = "SIGTERM", grace_s = 5.0 }
"""
QUIET_AGENT = (
    "--health-timeout",
    "120",
    "--audit-interval",
    "3600",
    "--stat-interval",
    "3600",
    "--process-check-interval",
    "3600",
    "--functional-check-interval",
    "3600",
)
SERVER_ENV = {"KNIGHTWATCH_HEARTBEAT_S": "5", "KNIGHTWATCH_COMMIT_TIMEOUT_S": "600"}


def build(work: Path) -> tuple[Path, Path, str]:
    """Build the trivial release; return (store, public key, release ID)."""
    source = work / "idle"
    source.mkdir(parents=True)
    (source / "knightwatch.toml").write_text(SPEC)
    (source / "README").write_text("a service that sleeps until it is told to stop\n")
    keys = work / "keys"
    generate_keypair(keys)
    store = work / "store"
    built = build_release(source, store, load_signing_key(keys / "release.key"), environ=EPOCH)
    return store, keys / "release.pub", built.release_id


def fleet_memory(fleet: LocalFleet) -> dict[str, float]:
    """Resident memory (MiB) of the server, the agents and the services, and what is left."""
    totals = {"server": 0.0, "agents": 0.0, "services": 0.0}
    for pid_file in (fleet.directory / "pids").glob("*.pid"):
        kind = "server" if pid_file.stem == "server" else "agents"
        totals[kind] += _rss_mib(int(pid_file.read_text()))
    for node in fleet.names:
        status = json.loads((fleet.root(node) / "state.json").read_text())
        service = status.get("service") or {}
        if service.get("pid"):
            totals["services"] += _rss_mib(int(service["pid"]))
    totals["available"] = _meminfo("MemAvailable") / 1024
    return totals


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _meminfo(key: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return 0.0


def one_kill(fleet: LocalFleet, rep: int, timeout: float) -> dict[str, float]:
    """Halt the fleet, wait for every ack, re-arm, wait until every service runs."""
    client = fleet.client
    sent = time.time()
    report = client.post("/halts", {"reason": f"bench repetition {rep}"})
    path = f"/halts/{report['halt_id']}"
    deadline = time.monotonic() + timeout
    while not report["complete"]:
        if time.monotonic() > deadline:
            raise SystemExit(f"repetition {rep}: no ack from {report['unacknowledged']}")
        time.sleep(0.01)
        report = client.get(path)
    acked = time.time()
    halted = [datetime.fromisoformat(n["halted_at"]).timestamp() for n in report["nodes"]]
    figures = {
        "kill_to_gone_ms": (max(halted) - sent) * 1000,
        "server_time_to_halt_ms": float(report["max_time_to_halt_ms"]),
        "kill_to_all_acked_ms": (acked - sent) * 1000,
    }
    client.post("/rearm", {"reason": f"bench repetition {rep} done"})
    wait_until(lambda: _all_running(fleet), timeout=timeout, what="every service", interval=0.1)
    return figures


def _all_running(fleet: LocalFleet) -> bool:
    nodes = fleet.status()["nodes"]
    return all(not n["halted"] and n["service_state"] == "running" for n in nodes)


def start_fleet(fleet: LocalFleet, batch: int = 16) -> None:
    """Start the server, then the agents a batch at a time (a thundering herd of
    enrolments times out on a small machine), each batch connected before the next."""
    for sub in ("logs", "pids", "nodes"):
        (fleet.directory / sub).mkdir(parents=True, exist_ok=True)
    fleet.start_server(timeout=120)
    for first in range(0, len(fleet.names), batch):
        names = fleet.names[first : first + batch]
        for name in names:
            fleet.start_agent(name, join=fleet.enroll(name))
        fleet.wait_connected(names, timeout=600)
        print(f"… {first + len(names)} agents connected", file=sys.stderr)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def bench_size(work: Path, size: int, reps: int, release: tuple[Path, Path, str]) -> dict[str, Any]:
    """Run ``reps`` kill/re-arm cycles on a fleet of ``size`` agents."""
    store, public_key, release_id = release
    print(f"… {size} agents: starting the fleet", file=sys.stderr)
    started = time.perf_counter()
    fleet = LocalFleet(
        work / f"fleet-{size}",
        nodes=size,
        trust=[public_key],
        server_env=SERVER_ENV,
        agent_args=QUIET_AGENT,
    )
    result: dict[str, Any] = {"agents": size}
    try:
        start_fleet(fleet)
        result["fleet_up_s"] = time.perf_counter() - started
        fleet.push(store, release_id)
        deployed = time.perf_counter()
        done = fleet.deploy(release_id, timeout=600 + 4 * size)
        if done["state"] != "SUCCEEDED":
            raise SystemExit(f"deploy to {size} agents ended {done['state']}: {done['reason']}")
        wait_until(lambda: _all_running(fleet), timeout=300, what="every service", interval=0.2)
        result["deploy_s"] = time.perf_counter() - deployed
        result["memory_mib"] = fleet_memory(fleet)
        print(
            f"… {size} agents: up in {result['fleet_up_s']:.0f} s, deployed in "
            f"{result['deploy_s']:.0f} s; {reps} kills",
            file=sys.stderr,
        )
        runs = [one_kill(fleet, rep, timeout=120 + size) for rep in range(1, reps + 1)]
    finally:
        fleet.down()
        shutil.rmtree(work / f"fleet-{size}", ignore_errors=True)
    for key in runs[0]:
        values = [r[key] for r in runs]
        result[key] = {
            "median": statistics.median(values),
            "p99": percentile(values, 0.99),
            "max": max(values),
        }
    result["repetitions"] = reps
    gone = result["kill_to_gone_ms"]
    print(
        f"… {size} agents: kill → every service gone, median {gone['median']:.1f} ms, "
        f"p99 {gone['p99']:.1f} ms, max {gone['max']:.1f} ms",
        file=sys.stderr,
    )
    return result


def report(results: dict[str, Any]) -> None:
    """Print the figures beside the goals."""
    info = results["machine"]
    print(
        f"\nkill-switch benchmark · {info['cpus']} CPUs {info['cpu']} · "
        f"Python {info['python']} · kernel {info['kernel']}"
    )
    print("time from the kill command to every service process gone (ms, one clock)\n")
    header = f"{'agents':>6}  {'reps':>4}  {'median':>8}  {'p99':>8}  {'max':>8}  goal (p99)"
    print(header)
    for size in results["sizes"]:
        figures = results["runs"].get(str(size))
        if figures is None:
            print(f"{size:>6}  (not run: {results['skipped'].get(str(size), 'unknown')})")
            continue
        gone = figures["kill_to_gone_ms"]
        goal = GOALS_MS.get(size)
        print(
            f"{size:>6}  {figures['repetitions']:>4}  {gone['median']:8.1f}  "
            f"{gone['p99']:8.1f}  {gone['max']:8.1f}  " + (f"≤ {goal:.0f} ms" if goal else "-")
        )
    print("\nother figures (median / p99 / max, ms) and the fleet's memory:")
    for size, figures in results["runs"].items():
        server, acked = figures["server_time_to_halt_ms"], figures["kill_to_all_acked_ms"]
        memory = figures["memory_mib"]
        print(
            f"  {size:>3} agents: server-side time to halt {server['median']:.1f} / "
            f"{server['p99']:.1f} / {server['max']:.1f}; kill → every ack recorded "
            f"{acked['median']:.1f} / {acked['p99']:.1f} / {acked['max']:.1f}"
        )
        print(
            f"      fleet up {figures['fleet_up_s']:.0f} s, deploy {figures['deploy_s']:.0f} s; "
            f"RSS server {memory['server']:.0f} MiB, agents {memory['agents']:.0f} MiB "
            f"({memory['agents'] / int(size):.0f} per agent), services "
            f"{memory['services']:.0f} MiB; {memory['available']:.0f} MiB still available"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,64,256", help="fleet sizes, comma-separated")
    parser.add_argument("--reps", type=int, default=50, help="kills per fleet size")
    parser.add_argument("--quick", action="store_true", help="8 agents, 10 repetitions")
    parser.add_argument("--dir", type=Path, default=REPO / ".bench" / "killswitch")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = [8] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    reps = 10 if args.quick else args.reps
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    release = build(args.dir)
    results: dict[str, Any] = {"machine": machine(), "sizes": sizes, "runs": {}, "skipped": {}}
    for size in sizes:
        try:
            results["runs"][str(size)] = bench_size(args.dir, size, reps, release)
        except (SystemExit, Exception) as exc:  # report what happened, go on with the rest
            results["skipped"][str(size)] = f"{type(exc).__name__}: {exc}"
            print(f"… {size} agents failed: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)
    shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
