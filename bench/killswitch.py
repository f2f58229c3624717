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

The second figure is the **guard reaction**: the time from a service crossing
a guard's limit to its halt. One agent (node1) supervises a tiny HTTP service
exporting one gauge, scraped every 100 ms, under the ``halt_node`` guard
``bench_orders_in_flight > 100.0``. Every repetition:

1. POSTs /cross to the service, which lifts the gauge past the limit and
   answers with the wall-clock time at which it did (the crossing);
2. waits for the agent's ``halted`` event of source ``guard``; the service was
   confirmed gone at the latch's ``halted_since`` (in the agent's state.json:
   when the guard fired and called the halt) plus that event's ``ms`` (how
   long stopping took, until waitpid reaped the service and its group was
   gone);
3. records reaction = gone − crossing (one clock, this machine's), split
   into detection (crossing → guard fired) and stopping (fired → gone);
4. re-arms, waits until the restarted service (gauge 0) runs and answers
   below the limit, then a few scrape intervals more, so every repetition
   starts from a clean scrape history.

Figures only (median, p99, max per fleet size), printed beside the issue's
goals; it never passes or fails on time. Agents run with their periodic
audits slowed down (an hour apart) so that 256 of them fit on a small
machine; the kill path and the guard path themselves are the production ones.

    python bench/killswitch.py                    # 8, 64, 256 agents × 50 kills; 50 guard halts
    python bench/killswitch.py --sizes 8,64 --reps 20 --guard-reps 20
    python bench/killswitch.py --quick            # 8 agents, 10 repetitions; 10 guard halts
    python bench/killswitch.py --no-guard         # the kill figures only
    python bench/killswitch.py --sizes "" --guard-reps 50   # the guard figure only
    python bench/killswitch.py --sizes 8 --reps 20 --no-guard --cli-launch

The halt of one service of 50 workers (some double-forked) with its cgroup
against the /proc fallback, and the agent's idle CPU with both, is measured
by ``bench/cgroup_halt.py``.

``--cli-launch`` also runs the real ``knightwatch kill --json`` as a
subprocess at every repetition (after the HTTP kill and its re-arm) and
records the time from launching the process to every service gone — what
an operator at the keyboard gets — beside, in the same repetition, the
launch-to-exit time of ``python -c pass`` and of ``knightwatch --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.deploy import machine  # noqa: E402
from knightwatch.bundle import build_release, generate_keypair, load_signing_key  # noqa: E402
from knightwatch.localfleet import LocalFleet  # noqa: E402
from knightwatch.testing import wait_until  # noqa: E402

EPOCH = {"SOURCE_DATE_EPOCH": "1343826000"}
GOALS_MS = {8: 100.0, 256: 1000.0}
KNIGHTWATCH = str(Path(sys.executable).with_name("knightwatch"))
CLI_GOALS_MS = {"cli_launch_to_gone_ms": 300.0, "help_ms": 150.0}


def release_spec(name: str) -> str:
    """The ``[release]`` and one all-files ``[[component]]`` of a benchmark release."""
    return (
        f'[release]\nname = "{name}"\nversion = "1.0.0"\n\n'
        '[[component]]\nname = "all"\nversion = "1.0.0"\npaths = ["**"]\n\n'
    )


SPEC = (
    release_spec("idle")
    + """\
[service]
command = ["sleep", "2147483647"]
halt = { signal = "SIGTERM", grace_s = 5.0 }
"""
)
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

GUARD_GOAL_MS = 300.0
GUARD_NODE = "node1"
GUARD_LIMIT = 100.0
GUARD_RULE = f"bench_orders_in_flight > {GUARD_LIMIT}"
SCRAPE_INTERVAL_S = 0.1
CLEAN_SCRAPES = 5
"""Scrape intervals waited after a re-arm, so the next crossing starts from clean scrapes."""
GUARDED_SPEC = (
    release_spec("guarded")
    + f"""\
[service]
command = ["python3", "service.py"]
health = {{ http = "http://127.0.0.1:${{KNIGHTWATCH_SERVICE_PORT}}/health", timeout_s = 2.0 }}
halt = {{ signal = "SIGTERM", grace_s = 5.0 }}
metrics = {{ endpoint = "http://127.0.0.1:${{KNIGHTWATCH_SERVICE_PORT}}/metrics", \
scrape_interval_s = {SCRAPE_INTERVAL_S} }}

[[guard]]
name = "orders-in-flight"
rule = "{GUARD_RULE}"
severity = "critical"
action = "halt_node"
"""
)
GUARDED_SERVICE = '''\
"""The guard benchmark's service: one gauge on /metrics; POST /cross lifts it past the limit."""

import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GAUGE = "bench_orders_in_flight"
LEVEL = [0.0]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/metrics":
            self.reply(200, f"# TYPE {GAUGE} gauge\\n{GAUGE} {LEVEL[0]}\\n")
        elif self.path == "/health":
            self.reply(200, "ok\\n")
        else:
            self.reply(404, "not found\\n")

    def do_POST(self):
        if self.path != "/cross":
            self.reply(404, "not found\\n")
            return
        crossed_at = time.time()  # taken before the change: a reaction is never understated
        LEVEL[0] = 1000.0
        self.reply(200, json.dumps({"crossed_at": crossed_at, GAUGE: LEVEL[0]}) + "\\n")

    def reply(self, status, text):
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        return


port = int(os.environ["KNIGHTWATCH_SERVICE_PORT"])
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''


def build(work: Path) -> tuple[Path, Path, str, str]:
    """Build the trivial and the guarded release; return (store, public key, their IDs)."""
    keys = work / "keys"
    generate_keypair(keys)
    store = work / "store"
    idle = _build_one(
        work / "idle",
        {"knightwatch.toml": SPEC, "README": "a service that sleeps until it is told to stop\n"},
        store,
        keys,
    )
    guarded = _build_one(
        work / "guarded",
        {"knightwatch.toml": GUARDED_SPEC, "service.py": GUARDED_SERVICE},
        store,
        keys,
    )
    return store, keys / "release.pub", idle, guarded


def _build_one(source: Path, files: dict[str, str], store: Path, keys: Path) -> str:
    """Write ``files`` into ``source``, build and sign them into ``store``; return the ID."""
    source.mkdir(parents=True)
    for name, text in files.items():
        (source / name).write_text(text)
    built = build_release(source, store, load_signing_key(keys / "release.key"), environ=EPOCH)
    return built.release_id


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
        left = deadline - time.monotonic()
        if left <= 0:
            raise SystemExit(f"repetition {rep}: no ack from {report['unacknowledged']}")
        report = client.get(f"{path}?wait_s={min(left, 30.0):.3f}")  # as `knightwatch kill` waits
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


def one_cli_kill(fleet: LocalFleet, rep: int, timeout: float) -> dict[str, float]:
    """Launch ``knightwatch kill``, time launch → every service gone; re-arm; time the CLI idle.

    Also times, in the same repetition, ``python -c pass`` and ``knightwatch --help``
    from launch to exit (what any Python program and the CLI's startup cost here).
    """
    env = {**os.environ, "KNIGHTWATCH_SERVER": fleet.url, "KNIGHTWATCH_TOKEN": fleet.token}
    if fleet.ca is not None:  # the fleet serves TLS: the CLI pins its CA, as an operator's does
        env["KNIGHTWATCH_CA"] = str(fleet.ca)
    argv = [KNIGHTWATCH, "kill", "--reason", f"bench CLI repetition {rep}", "--json"]
    launched = time.time()
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    exited = time.time()
    if done.returncode != 0:
        raise SystemExit(
            f"CLI repetition {rep}: knightwatch kill exited {done.returncode}: "
            f"{done.stderr.strip()[-500:]}"
        )
    report = json.loads(done.stdout)
    halted = [datetime.fromisoformat(n["halted_at"]).timestamp() for n in report["nodes"]]
    figures = {
        "cli_launch_to_gone_ms": (max(halted) - launched) * 1000,
        "cli_launch_to_exit_ms": (exited - launched) * 1000,
    }
    fleet.client.post("/rearm", {"reason": f"bench CLI repetition {rep} done"})
    wait_until(lambda: _all_running(fleet), timeout=timeout, what="every service", interval=0.1)
    figures["python_pass_ms"] = _launch_to_exit([sys.executable, "-c", "pass"], env)
    figures["help_ms"] = _launch_to_exit([KNIGHTWATCH, "--help"], env)
    return figures


def _launch_to_exit(argv: list[str], env: dict[str, str]) -> float:
    """Milliseconds from launching ``argv`` to its exit (output discarded)."""
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - started) * 1000


def _all_running(fleet: LocalFleet) -> bool:
    nodes = fleet.status()["nodes"]
    return all(not n["halted"] and n["service_state"] == "running" for n in nodes)


AGENT_NICE = 19


def yield_to_server(pid: int) -> None:
    """Run an agent (every thread, and the services it will start) at nice +19.

    In production the control plane has a host of its own. Here up to 256
    agents share two cores with it; their idle timers alone keep both cores
    busy, and an unprivileged server would answer pings and acks last.
    """
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), AGENT_NICE)


def start_fleet(fleet: LocalFleet, batch: int = 16) -> None:
    """Start the server, then the agents a batch at a time (a thundering herd of
    enrolments times out on a small machine), each batch connected before the next.
    The agents run at nice +19 (see :func:`yield_to_server`)."""
    for sub in ("logs", "pids", "nodes"):
        (fleet.directory / sub).mkdir(parents=True, exist_ok=True)
    fleet.start_server(timeout=120)
    for first in range(0, len(fleet.names), batch):
        names = fleet.names[first : first + batch]
        for name in names:
            fleet.start_agent(name, join=fleet.enroll(name))
            yield_to_server(fleet.agent_pid(name))
        fleet.wait_connected(names, timeout=600)
        print(f"… {first + len(names)} agents connected", file=sys.stderr)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarize(values: list[float]) -> dict[str, float]:
    """Median, p99 and max of ``values``."""
    return {
        "median": statistics.median(values),
        "p99": percentile(values, 0.99),
        "max": max(values),
    }


def summarize_runs(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Each figure of the repetitions summarized, and how many repetitions there were."""
    summary: dict[str, Any] = {key: summarize([r[key] for r in runs]) for key in runs[0]}
    summary["repetitions"] = len(runs)
    return summary


def bench_size(
    work: Path, size: int, reps: int, release: tuple[Path, Path, str], *, cli: bool = False
) -> dict[str, Any]:
    """Run ``reps`` kill/re-arm cycles on a fleet of ``size`` agents (``cli``: CLI kills too)."""
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
        runs = []
        for rep in range(1, reps + 1):
            figures = one_kill(fleet, rep, timeout=120 + size)
            if cli:
                figures |= one_cli_kill(fleet, rep, timeout=120 + size)
            runs.append(figures)
    finally:
        fleet.down()
        shutil.rmtree(work / f"fleet-{size}", ignore_errors=True)
    result.update(summarize_runs(runs))
    result["kill_to_gone_each_ms"] = [round(r["kill_to_gone_ms"], 1) for r in runs]
    goal = GOALS_MS.get(size)
    if goal is not None:
        result["within_goal"] = sum(1 for r in runs if r["kill_to_gone_ms"] <= goal)
    if cli:
        result["cli_launch_to_gone_each_ms"] = [round(r["cli_launch_to_gone_ms"], 1) for r in runs]
        result["cli_within_goal"] = {
            key: sum(1 for r in runs if r[key] <= goal) for key, goal in CLI_GOALS_MS.items()
        }
    gone = result["kill_to_gone_ms"]
    print(
        f"… {size} agents: kill → every service gone, median {gone['median']:.1f} ms, "
        f"p99 {gone['p99']:.1f} ms, max {gone['max']:.1f} ms",
        file=sys.stderr,
    )
    return result


def one_guard_halt(fleet: LocalFleet, rep: int, timeout: float) -> dict[str, float]:
    """Lift the gauge past the limit, wait for the guard's halt, re-arm, wait for clean scrapes."""
    log = fleet.directory / "logs" / f"{GUARD_NODE}.log"
    offset = log.stat().st_size
    answer = _to_service(fleet, "POST", "/cross")
    answer.raise_for_status()
    crossed = float(answer.json()["crossed_at"])
    line = wait_until(
        lambda: _guard_halted_line(log, offset),
        timeout=timeout,
        what=f"the guard to halt {GUARD_NODE}'s service",
        interval=0.01,
    )
    state = json.loads((fleet.root(GUARD_NODE) / "state.json").read_text())
    if not state["halted"] or state["halt_source"] != "guard":
        raise SystemExit(f"guard repetition {rep}: {GUARD_NODE} is not halted by its guard")
    fired = float(state["halted_since"])
    stop_ms = _field_ms(line)
    figures = {
        "reaction_ms": (fired + stop_ms / 1000 - crossed) * 1000,
        "detect_ms": (fired - crossed) * 1000,
        "stop_ms": stop_ms,
    }
    wait_until(  # the control plane must know of the halt for the re-arm to reach the node
        lambda: _guard_node(fleet)["halt_source"] == "guard",
        timeout=timeout,
        what=f"the control plane to see {GUARD_NODE} halted",
        interval=0.05,
    )
    fleet.client.post("/rearm", {"reason": f"bench guard repetition {rep} done"})
    wait_until(lambda: _guard_clean(fleet), timeout=timeout, what="a clean service", interval=0.1)
    time.sleep(CLEAN_SCRAPES * SCRAPE_INTERVAL_S)
    return figures


def _to_service(fleet: LocalFleet, method: str, path: str) -> httpx.Response:
    url = f"http://127.0.0.1:{fleet.service_port(GUARD_NODE)}{path}"
    return httpx.request(method, url, timeout=10.0, trust_env=False)


def _guard_halted_line(log: Path, offset: int) -> str | None:
    """The agent's first ``halted`` event of source ``guard`` written after ``offset``."""
    with log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode("utf-8", "replace")
    return next((line for line in text.splitlines() if "event=halted source=guard " in line), None)


def _field_ms(line: str) -> float:
    found = re.search(r"\bms=([0-9.eE+-]+)", line)
    if found is None:
        raise SystemExit(f"no ms= in the agent's halted event: {line}")
    return float(found[1])


def _guard_node(fleet: LocalFleet) -> dict[str, Any]:
    return next(n for n in fleet.status()["nodes"] if n["name"] == GUARD_NODE)


def _guard_clean(fleet: LocalFleet) -> bool:
    """The node is re-armed, its service runs and answers with its gauge below the limit."""
    node = _guard_node(fleet)
    if node["halted"] or node["service_state"] != "running":
        return False
    try:
        answer = _to_service(fleet, "GET", "/metrics")
    except httpx.HTTPError:
        return False
    if answer.status_code != 200:
        return False
    levels = [
        float(line.split()[1])
        for line in answer.text.splitlines()
        if line.startswith("bench_orders_in_flight ")
    ]
    return bool(levels) and levels[0] <= GUARD_LIMIT


def bench_guard(work: Path, reps: int, release: tuple[Path, Path, str]) -> dict[str, Any]:
    """Run ``reps`` guard halts on one agent whose service crosses the guard's limit."""
    store, public_key, release_id = release
    print(f"… guard: starting 1 agent ({GUARD_NODE})", file=sys.stderr)
    started = time.perf_counter()
    fleet = LocalFleet(
        work / "fleet-guard",
        nodes=1,
        trust=[public_key],
        server_env=SERVER_ENV,
        agent_args=QUIET_AGENT,
    )
    result: dict[str, Any] = {
        "agents": 1,
        "node": GUARD_NODE,
        "rule": GUARD_RULE,
        "scrape_interval_s": SCRAPE_INTERVAL_S,
    }
    try:
        start_fleet(fleet)
        result["fleet_up_s"] = time.perf_counter() - started
        fleet.push(store, release_id)
        done = fleet.deploy(release_id, timeout=600)
        if done["state"] != "SUCCEEDED":
            raise SystemExit(
                f"deploy of the guarded release ended {done['state']}: {done['reason']}"
            )
        wait_until(lambda: _guard_clean(fleet), timeout=300, what="a clean service", interval=0.1)
        time.sleep(CLEAN_SCRAPES * SCRAPE_INTERVAL_S)
        print(f"… guard: {reps} crossings", file=sys.stderr)
        runs = [one_guard_halt(fleet, rep, timeout=120) for rep in range(1, reps + 1)]
    finally:
        fleet.down()
        shutil.rmtree(work / "fleet-guard", ignore_errors=True)
    result.update(summarize_runs(runs))
    reaction = result["reaction_ms"]
    print(
        f"… guard: crossing → service halted, median {reaction['median']:.1f} ms, "
        f"p99 {reaction['p99']:.1f} ms, max {reaction['max']:.1f} ms",
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
    if results["sizes"]:
        report_kill(results)
    report_guard(results)


def report_kill(results: dict[str, Any]) -> None:
    """Print the kill figures per fleet size beside the goals."""
    print("time from the kill command to every service process gone (ms, one clock)\n")
    header = (
        f"{'agents':>6}  {'reps':>4}  {'median':>8}  {'p99':>8}  {'max':>8}  goal (p99)  within it"
    )
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
            f"{gone['p99']:8.1f}  {gone['max']:8.1f}  "
            + (
                f"≤ {goal:.0f} ms".ljust(12)
                + f"{figures['within_goal']} of {figures['repetitions']}"
                if goal
                else "-"
            )
        )
    report_cli(results)
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


def report_cli(results: dict[str, Any]) -> None:
    """Print the operator's figures (``--cli-launch``): from launching the command."""
    rows = [
        ("knightwatch kill: launch → every service gone", "cli_launch_to_gone_ms"),
        ("knightwatch kill: launch → exit (report printed)", "cli_launch_to_exit_ms"),
        ("HTTP kill (same repetitions): POST → every service gone", "kill_to_gone_ms"),
        ("knightwatch --help: launch → exit", "help_ms"),
        ("python -c pass: launch → exit", "python_pass_ms"),
    ]
    for size, figures in results["runs"].items():
        if "cli_launch_to_gone_ms" not in figures:
            continue
        print(f"\nfrom the operator's keyboard, {size} agents (ms; median / p99 / max; goal)")
        for label, key in rows:
            value = figures[key]
            goal = CLI_GOALS_MS.get(key)
            within = figures["cli_within_goal"].get(key)
            print(
                f"  {label:<58} {value['median']:7.1f} / {value['p99']:7.1f} / "
                f"{value['max']:7.1f}"
                + (f"   p99 ≤ {goal:.0f}: {within} of {figures['repetitions']}" if goal else "")
            )


def report_guard(results: dict[str, Any]) -> None:
    """Print the guard reaction beside its goal (if it was run)."""
    guard = results.get("guard")
    skipped = results["skipped"].get("guard")
    if guard is None and skipped is None:
        return
    print(
        f"\nguard reaction: time from the service crossing a limit to its halt "
        f"(ms, one clock; {int(SCRAPE_INTERVAL_S * 1000)} ms scrape interval)"
    )
    if guard is None:
        print(f"  (not run: {skipped})")
        return
    print(f"1 agent ({guard['node']}), halt_node guard {guard['rule']}\n")
    print(f"{'reps':>4}  {'median':>8}  {'p99':>8}  {'max':>8}  goal (p99)")
    reaction = guard["reaction_ms"]
    print(
        f"{guard['repetitions']:>4}  {reaction['median']:8.1f}  {reaction['p99']:8.1f}  "
        f"{reaction['max']:8.1f}  ≤ {GUARD_GOAL_MS:.0f} ms"
    )
    detect, stop = guard["detect_ms"], guard["stop_ms"]
    print(
        f"  of which (median / p99 / max, ms): crossing → guard fired {detect['median']:.1f} / "
        f"{detect['p99']:.1f} / {detect['max']:.1f}; fired → service gone "
        f"{stop['median']:.1f} / {stop['p99']:.1f} / {stop['max']:.1f}"
    )


INOTIFY_LIMIT = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_PER_AGENT = 2  # the audit watcher and the service log watcher


def allow_inotify(agents: int) -> None:
    """Raise the per-user inotify instance limit (default 128) for this many agents.

    Every agent of the fleet runs as this user; beyond the limit an agent's
    watchers are refused (it survives, auditing by stat sweeps, but that is
    not the production path). Needs root; otherwise say what to run.
    """
    need = INOTIFY_PER_AGENT * agents + 64
    current = int(INOTIFY_LIMIT.read_text())
    if current >= need:
        return
    try:
        INOTIFY_LIMIT.write_text(f"{need}\n")
        print(f"… fs.inotify.max_user_instances raised from {current} to {need}", file=sys.stderr)
    except OSError:
        print(
            f"… warning: fs.inotify.max_user_instances is {current}, {agents} agents need {need}:"
            f" run `sysctl fs.inotify.max_user_instances={need}` as root",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,64,256", help="fleet sizes, comma-separated")
    parser.add_argument("--reps", type=int, default=50, help="kills per fleet size")
    parser.add_argument("--guard-reps", type=int, default=50, help="guard halts (1 agent)")
    parser.add_argument("--no-guard", action="store_true", help="skip the guard reaction")
    parser.add_argument("--quick", action="store_true", help="8 agents, 10 kills; 10 guard halts")
    parser.add_argument("--dir", type=Path, default=REPO / ".bench" / "killswitch")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--cli-launch",
        action="store_true",
        help="also time the real `knightwatch kill` from process launch (and --help, python)",
    )
    args = parser.parse_args(argv)
    sizes = [8] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    reps = 10 if args.quick else args.reps
    guard_reps = 10 if args.quick else args.guard_reps
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    store, public_key, idle, guarded = build(args.dir)
    allow_inotify(max(sizes, default=1))
    results: dict[str, Any] = {"machine": machine(), "sizes": sizes, "runs": {}, "skipped": {}}
    for size in sizes:
        try:
            results["runs"][str(size)] = bench_size(
                args.dir, size, reps, (store, public_key, idle), cli=args.cli_launch
            )
        except (SystemExit, Exception) as exc:  # report what happened, go on with the rest
            results["skipped"][str(size)] = f"{type(exc).__name__}: {exc}"
            print(f"… {size} agents failed: {exc}", file=sys.stderr)
    results["guard"] = None
    if not args.no_guard and guard_reps > 0:
        try:
            results["guard"] = bench_guard(args.dir, guard_reps, (store, public_key, guarded))
        except (SystemExit, Exception) as exc:
            results["skipped"]["guard"] = f"{type(exc).__name__}: {exc}"
            print(f"… guard failed: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)
    shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
