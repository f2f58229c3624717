"""Scale benchmark: one control plane under 1,000 and 10,000 hollow agents, SQLite and PostgreSQL.

For each store and fleet size it starts a real control plane (``knightwatch
server``, TLS, no real agent) and a ``knightwatch swarm`` process of hollow
agents — each enrolled like a real node, with its own WebSocket and key,
sending signed heartbeats and acknowledging every command — and measures:

1. **connect**: time until every hollow agent is connected, from the swarm's
   start, then again after a server restart (the reconnect storm, met by the
   agents' jittered back-off);
2. **idle**: the server's CPU (share of one core) and resident memory, per
   agent, over ``--idle-s`` seconds with no API call; the same for the swarm
   process (what one hollow agent costs);
3. **kill fan-out**: a fleet halt, from the command to each node's
   acknowledgement recorded by the server (``acked_at − issued_at``): p50,
   p99, max;
4. **deploy round**: a one-file release, propose → every node PREPARED →
   every node ACTIVE (the deployment SUCCEEDED);
5. **API latency**: ``GET /status`` and ``GET /deployments``, p50/p99/max,
   sampled for another ``--idle-s`` seconds while the fleet is idle, and
   during a second kill and deploy round (whose figures are printed too:
   what an operator polling the API costs them).

Goals (issue 16): 10,000 agents on one control plane on this 2-core
machine; kill fully acknowledged p99 ≤ 2 s; a deploy round ≤ 10 s; API calls
p99 ≤ 1 s. Figures only: it never passes or fails on time.

    python bench/scale.py                                # 1,000 and 10,000 × SQLite and PostgreSQL
    python bench/scale.py --counts 1000 --databases sqlite --idle-s 10
    python bench/scale.py --heartbeat 30                 # the servers' heartbeat period

The server's heartbeat period (``--heartbeat``, default 10 s) is what a
large fleet would set; at the 1 s default every agent reports every second.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import psycopg  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench.deploy import machine as host_machine  # noqa: E402
from knightwatch.bundle import build_release, generate_keypair, load_signing_key  # noqa: E402
from knightwatch.errors import KnightwatchError  # noqa: E402
from knightwatch.localfleet import LocalFleet  # noqa: E402

T = TypeVar("T")

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
SPEC = """\
[release]
name = "scale"
version = "{version}"

[[component]]
name = "all"
version = "1.0.0"
paths = ["**"]
"""
CONNECTED = re.compile(r"^(\d+)/(\d+) connected")


@dataclass
class SwarmProcess:
    """``knightwatch swarm`` as a child process; its stderr says how many are connected."""

    process: subprocess.Popen[str]
    connected: int = 0
    lines: list[str] = field(default_factory=list)

    def follow(self) -> None:
        """Read the swarm's status lines (in a thread)."""
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip())
            match = CONNECTED.match(line)
            if match:
                self.connected = int(match.group(1))

    def wait_connected(self, count: int, timeout: float) -> float:
        """Seconds until ``count`` agents are connected (SystemExit on timeout)."""
        started = time.monotonic()
        while self.connected < count:
            if time.monotonic() - started > timeout or self.process.poll() is not None:
                tail = "\n".join(self.lines[-10:])
                raise SystemExit(f"only {self.connected}/{count} connected:\n{tail}")
            time.sleep(0.05)
        return time.monotonic() - started


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99 and max of ``values`` (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    return {"p50": rank(0.50), "p99": rank(0.99), "max": ordered[-1]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def heartbeats_dropped(fleet: LocalFleet) -> float:
    """The server's knightwatch_heartbeats_dropped_total (stale heartbeats shed unchecked)."""
    text = httpx.get(f"{fleet.url}/metrics", timeout=120, trust_env=False, verify=fleet.verify).text
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return float(samples["knightwatch_heartbeats_dropped_total"])


def build_releases(work: Path) -> tuple[Path, Path, list[str]]:
    """Two one-file releases in a store; their release ids."""
    keys = work / "keys"
    generate_keypair(keys)
    key = load_signing_key(keys / "release.key")
    ids = []
    for version in ("1.0.0", "1.0.1"):
        source = work / f"src-{version}"
        source.mkdir(parents=True)
        (source / "knightwatch.toml").write_text(SPEC.format(version=version))
        (source / "app.txt").write_text(f"scale {version}\n")
        ids.append(build_release(source, work / "store", key).release_id)
    return work / "store", keys / "release.pub", ids


def fresh_postgres(name: str) -> str:
    """A new, empty PostgreSQL database; its SQLAlchemy URL."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_URL.format(db=name)


SAMPLE_EVERY_S = 1.0
"""How often the API sampler calls each path (the last session's sampler paused 0.2 s)."""


def sample_api(
    fleet: LocalFleet,
    samples: list[float],
    failures: list[str],
    paths: list[str],
    stop: threading.Event,
) -> None:
    """Call the operator API's read endpoints in a loop, recording each call's seconds.

    One call per path every ``SAMPLE_EVERY_S``, as an operator's ``status`` or a
    dashboard would poll: a sampler that called without pause would itself be
    the largest load on a server whose status view is 10,000 rows.
    """
    client = fleet.client
    while not stop.is_set():
        due = time.monotonic() + SAMPLE_EVERY_S
        for path in paths:
            started = time.perf_counter()
            try:
                client.get(path)
            except KnightwatchError as exc:  # a call that failed counts, and is counted
                failures.append(f"{path}: {exc.message}")
            samples.append(time.perf_counter() - started)
        stop.wait(max(0.0, due - time.monotonic()))


class ApiSampler:
    """API latency sampled in a background thread while something else runs."""

    def __init__(self, fleet: LocalFleet) -> None:
        self.samples: dict[str, list[float]] = {"/status": [], "/deployments": []}
        self.failures: list[str] = []
        """Calls that failed (their time is among the samples)."""
        self._fleet = fleet
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=sample_api, args=(fleet, values, self.failures, [path], self._stop)
            )
            for path, values in self.samples.items()
        ]

    def __enter__(self) -> ApiSampler:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def kill_fanout(fleet: LocalFleet, timeout: float) -> dict[str, Any]:
    """Halt the fleet; per-node seconds from the command to its ack recorded; re-arm."""
    client = fleet.client
    sent = time.monotonic()
    report = client.post("/halts", {"reason": "scale benchmark"})
    path = f"/halts/{report['halt_id']}"
    while not report["complete"]:
        if time.monotonic() - sent > timeout:
            raise SystemExit(f"{len(report['unacknowledged'])} nodes never acknowledged the halt")
        report = client.get(f"{path}?wait_s=10")
    issued = datetime.fromisoformat(report["issued_at"])
    fanout = [
        (datetime.fromisoformat(node["acked_at"]) - issued).total_seconds()
        for node in report["nodes"]
    ]
    rearm_sent = time.monotonic()
    client.post("/rearm", {"reason": "scale benchmark done"})
    while any(node["rearmed_at"] is None for node in client.get(path)["nodes"]):
        if time.monotonic() - rearm_sent > timeout:
            raise SystemExit("not every node acknowledged the re-arm")
        time.sleep(0.5)
    while any(node["halted"] for node in client.get("/status")["nodes"]):
        if time.monotonic() - rearm_sent > timeout:
            raise SystemExit("a node still reports itself halted after the re-arm")
        time.sleep(0.5)
    rearm_s = time.monotonic() - rearm_sent
    return {"nodes": len(fanout), **percentiles(fanout), "rearm_s": rearm_s}


def deploy_round(fleet: LocalFleet, release: str, timeout: float) -> float:
    """Seconds from proposing ``release`` to the deployment SUCCEEDED (every node ACTIVE)."""
    started = time.monotonic()
    done = fleet.deploy(release, timeout=timeout)
    if done["state"] != "SUCCEEDED":
        raise SystemExit(f"the deploy round ended {done['state']}: {done['reason']}")
    return time.monotonic() - started


def unfinished(step: Callable[[], T], timeout: float) -> T | str:
    """Run one measured step; a step that did not finish is a figure too, not an abort."""
    try:
        return step()
    except (SystemExit, KnightwatchError) as exc:
        return f"not finished in {timeout:.0f} s ({exc})"


def start_swarm(fleet: LocalFleet, count: int, ramp_s: float) -> SwarmProcess:
    """Start ``knightwatch swarm`` against the fleet's control plane."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNIGHTWATCH_")}
    env |= {"KNIGHTWATCH_SERVER": fleet.url, "KNIGHTWATCH_TOKEN": fleet.token}
    if fleet.ca:
        env["KNIGHTWATCH_CA"] = str(fleet.ca)
    argv = [sys.executable, "-m", "knightwatch", "swarm", "--count", str(count)]
    argv += ["--prefix", "scale", "--group", "scale", "--ramp", str(ramp_s)]
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    swarm = SwarmProcess(process)
    threading.Thread(target=swarm.follow, daemon=True).start()
    return swarm


def measure(work: Path, database: str, count: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every figure for one store and one fleet size."""
    store, public_key, releases = build_releases(work / "releases")
    url = fresh_postgres(f"kw_scale_{count}") if database == "postgresql" else None
    timeout = max(120.0, count / 20)
    env = {"KNIGHTWATCH_HEARTBEAT_S": str(args.heartbeat)}
    figures: dict[str, Any] = {"agents": count, "database": database, "idle_s": args.idle_s}
    with LocalFleet(
        work / "fleet", 0, trust=[public_key], database_url=url, server_env=env
    ) as fleet:
        for release in releases:
            fleet.push(store, release)
        print(f"… {database} × {count}: enrolling and connecting the swarm", file=sys.stderr)
        swarm = start_swarm(fleet, count, ramp_s=args.ramp)
        try:
            figures["first_connect_s"] = swarm.wait_connected(count, timeout * 4)
            time.sleep(args.heartbeat)  # every agent has reported at least once more
            server = fleet.server_pid
            scrape0 = time.monotonic()
            dropped0 = heartbeats_dropped(fleet)  # outside the window: /metrics is not free
            figures["metrics_scrape_s"] = time.monotonic() - scrape0
            cpu0, swarm_cpu0, t0 = (
                cpu_seconds(server),
                cpu_seconds(swarm.process.pid),
                time.monotonic(),
            )
            time.sleep(args.idle_s)  # no API calls: what the fleet alone costs
            elapsed = time.monotonic() - t0
            figures["idle"] = {
                "server_cpu_share": (cpu_seconds(server) - cpu0) / elapsed,
                "server_rss_bytes": rss_bytes(server),
                "swarm_cpu_share": (cpu_seconds(swarm.process.pid) - swarm_cpu0) / elapsed,
                "swarm_rss_bytes": rss_bytes(swarm.process.pid),
            }
            figures["dropped_idle"] = heartbeats_dropped(fleet) - dropped0
            with ApiSampler(fleet) as idle_api:
                time.sleep(args.idle_s)
            figures["api_idle"] = {p: percentiles(v) for p, v in idle_api.samples.items()}
            figures["api_idle_failures"] = idle_api.failures
            print(f"… {database} × {count}: kill fan-out", file=sys.stderr)
            figures["kill"] = unfinished(lambda: kill_fanout(fleet, timeout), timeout)
            print(f"… {database} × {count}: deploy round", file=sys.stderr)
            figures["deploy_round_s"] = unfinished(
                lambda: deploy_round(fleet, releases[0], timeout), timeout
            )
            print(json.dumps(figures), file=sys.stderr)  # the quiet figures, if the rest hangs
            # Again with the API sampled: its latency under that load, and what an operator
            # polling status costs the kill and the deploy (a 10,000-node status is not free).
            print(f"… {database} × {count}: kill and deploy with the API sampled", file=sys.stderr)
            with ApiSampler(fleet) as busy_api:
                figures["kill_sampled"] = unfinished(lambda: kill_fanout(fleet, timeout), timeout)
                figures["deploy_round_sampled_s"] = unfinished(
                    lambda: deploy_round(fleet, releases[1], timeout), timeout
                )
            figures["api_busy"] = {p: percentiles(v) for p, v in busy_api.samples.items()}
            figures["api_busy_failures"] = busy_api.failures
            figures["dropped_total"] = heartbeats_dropped(fleet)
            print(json.dumps(figures), file=sys.stderr)  # what is known so far, if the rest fails
            print(f"… {database} × {count}: server restart (reconnect storm)", file=sys.stderr)
            fleet.stop_server()
            stopped = time.monotonic()
            while swarm.connected > 0 and time.monotonic() - stopped < 60:
                time.sleep(0.05)
            fleet.start_server(timeout=timeout)
            figures["reconnect_s"] = swarm.wait_connected(count, timeout * 4)
        finally:
            swarm.process.send_signal(signal.SIGINT)
            with suppress(subprocess.TimeoutExpired):
                swarm.process.wait(timeout=60)
            if swarm.process.poll() is None:
                swarm.process.kill()
    return figures


def sent_while_idle(run: dict[str, Any], heartbeat: float) -> float:
    """About how many heartbeats the swarm sent in the idle window."""
    return float(run["agents"] * run["idle_s"] / heartbeat)


def report(results: list[dict[str, Any]], machine: dict[str, str], heartbeat: float) -> None:
    """Print every figure, one column per run, the goals beside them."""
    print(
        f"\nscale benchmark · {machine['cpus']} CPUs {machine['cpu']} · Python {machine['python']}"
        f" · server heartbeat {heartbeat:g} s"
    )
    header = f"{'':38}" + "".join(
        f"{r['database'][:6]} × {r['agents']:>6,}".rjust(20) for r in results
    )
    print(header)

    def row(label: str, values: list[str], goal: str = "") -> None:
        print(f"{label:38}" + "".join(v.rjust(20) for v in values) + (f"   {goal}" if goal else ""))

    row("first connect, all agents (s)", [f"{r['first_connect_s']:.1f}" for r in results])
    row("reconnect after restart (s)", [f"{r['reconnect_s']:.1f}" for r in results])
    row(
        "server idle CPU per agent (% core)",
        [f"{100 * r['idle']['server_cpu_share'] / r['agents']:.4f}" for r in results],
    )
    row(
        "server RSS per agent (KiB)",
        [f"{r['idle']['server_rss_bytes'] / r['agents'] / 1024:.0f}" for r in results],
    )
    row(
        "hollow agent CPU (% core)",
        [f"{100 * r['idle']['swarm_cpu_share'] / r['agents']:.4f}" for r in results],
        "aim ≪ 0.1 %",
    )
    row(
        "hollow agent RSS (KiB)",
        [f"{r['idle']['swarm_rss_bytes'] / r['agents'] / 1024:.0f}" for r in results],
        "aim: a few hundred",
    )

    row(
        "heartbeats dropped, idle window",
        [
            f"{r['dropped_idle']:,.0f} of ~{r['agents'] * r['idle_s'] / heartbeat:,.0f}"
            for r in results
        ],
    )
    row("heartbeats dropped, up to the restart", [f"{r['dropped_total']:,.0f}" for r in results])
    row(
        "/metrics, one scrape after connect (s)",
        [f"{r['metrics_scrape_s']:.2f}" for r in results],
        "Prometheus's default scrape timeout: 10 s",
    )

    def kill(r: dict[str, Any], figure: str, key: str) -> str:
        value = r[figure][key] if isinstance(r[figure], dict) else None
        return "unfinished" if value is None else f"{value:.2f}"

    def seconds(value: object) -> str:
        return format(value, ".1f") if isinstance(value, float) else "unfinished"

    for figure, label in (("kill", ""), ("kill_sampled", ", API sampled")):
        for q in ("p50", "p99", "max"):
            row(
                f"kill fan-out {q}{label} (s)",
                [kill(r, figure, q) for r in results],
                "goal p99 ≤ 2 s at 10,000" if q == "p99" else "",
            )
    row(
        "deploy round (s)", [seconds(r["deploy_round_s"]) for r in results], "goal ≤ 10 s at 10,000"
    )
    row("deploy round, API sampled (s)", [seconds(r["deploy_round_sampled_s"]) for r in results])
    for phase in ("api_idle", "api_busy"):
        for path in ("/status", "/deployments"):
            row(
                f"{path} p99 ({phase[4:]}) (s)",
                [f"{r[phase][path]['p99']:.2f}" for r in results],
                "goal ≤ 1 s",
            )
        row(f"API calls failed ({phase[4:]})", [str(len(r[f"{phase}_failures"])) for r in results])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--heartbeat", type=float, default=10.0)
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument("--ramp", type=float, default=10.0, help="spread of the first connects (s)")
    parser.add_argument("--dir", type=Path, default=REPO / ".bench" / "scale")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    machine = host_machine()
    results = []
    for database in [d for d in args.databases.split(",") if d]:
        for count in [int(c) for c in args.counts.split(",") if c]:
            work = args.dir / f"{database}-{count}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            results.append(measure(work, database, count, args))
            print(json.dumps(results[-1]), file=sys.stderr)  # each run whole, if a later one hangs
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(
            json.dumps(
                {"machine": machine, "heartbeat_s": args.heartbeat, "runs": results}, indent=2
            )
        )
    else:
        report(results, machine, args.heartbeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
