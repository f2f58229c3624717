"""Flag propagation benchmark: from ``flags set`` to a process on every node seeing the value.

A fleet of local agents (8, then 64) runs a release whose service is a tiny
Python process using the SDK the agent provides (``from knightwatch.sdk
import flags``): it registers a change callback (inotify: no polling) and,
on every change, appends the wall-clock time it saw the new value to a file
in its data directory. Every repetition:

1. notes the client's clock and POSTs a fleet-wide value (what ``knightwatch
   flags set`` does, waiting for every acknowledgement);
2. records the time the API answered with every node acknowledged;
3. waits until every node's service saw the new version, and records the
   slowest: max(seen) − sent — one clock, this machine's.

The reference, measured in the same run: the floor of the data path on one
node — write a flags.json atomically (temp, fsync, rename) and wait for the
same SDK in another process to see it, with no control plane or network.

Figures only (median, p99, max), printed beside the issue's goal (p99 ≤ 100 ms
at 8 agents on loopback) and the published figures of other services
(LaunchDarkly advertises about 200 ms; Unleash's SDKs poll every 15 s).

    python bench/flags.py                      # 8 and 64 agents × 200 changes
    python bench/flags.py --sizes 8 --reps 50  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.deploy import machine  # noqa: E402
from bench.killswitch import (  # noqa: E402
    QUIET_AGENT,
    release_spec,
    start_fleet,
    summarize,
)
from knightwatch.bundle import build_release, generate_keypair, load_signing_key  # noqa: E402
from knightwatch.localfleet import LocalFleet  # noqa: E402
from knightwatch.testing import wait_until  # noqa: E402

EPOCH = {"SOURCE_DATE_EPOCH": "1343826000"}
FLAG = "bench.flag"
GOAL_P99_MS = 100.0
SERVER_ENV = {"KNIGHTWATCH_HEARTBEAT_S": "5", "KNIGHTWATCH_COMMIT_TIMEOUT_S": "600"}
SPEC = (
    release_spec("flagwatch")
    + f"""\
[service]
command = ["python3", "watch.py"]
data_dirs = ["seen"]
halt = {{ signal = "SIGTERM", grace_s = 5.0 }}

[[flag]]
name = "{FLAG}"
kind = "ops"
description = "flips back and forth for the propagation benchmark"
default = false
"""
)
WATCHER = f'''\
"""Append when and which flag version this process saw, on every change (SDK callback)."""

import json
import os
import signal
import sys
import threading
import time

from knightwatch.sdk import flags

DATA = os.environ.get("KNIGHTWATCH_DATA_DIR", ".")
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(DATA, "seen", "log")


def seen(_names=None):
    line = json.dumps({{"t": time.time(), "version": flags.version, "value": flags.get("{FLAG}")}})
    with open(OUT, "a") as out:
        out.write(line + "\\n")


flags.on_change(seen)
seen()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
'''


def build(work: Path) -> tuple[Path, Path, str]:
    """Build the watcher release; return (store, public key, release ID)."""
    keys = work / "keys"
    generate_keypair(keys)
    source = work / "flagwatch"
    source.mkdir()
    (source / "knightwatch.toml").write_text(SPEC)
    (source / "watch.py").write_text(WATCHER)
    store = work / "store"
    key = load_signing_key(keys / "release.key")
    return store, keys / "release.pub", build_release(source, store, key, environ=EPOCH).release_id


def last_seen(fleet: LocalFleet, node: str) -> dict[str, Any] | None:
    """The newest line the node's watcher wrote."""
    try:
        lines = (fleet.root(node) / "data" / "seen" / "log").read_text().splitlines()
    except OSError:
        return None
    return json.loads(lines[-1]) if lines else None


def one_change(fleet: LocalFleet, rep: int, timeout: float) -> dict[str, float]:
    """Set the flag fleet-wide, wait for every ack and every watcher; return the times."""
    value = rep % 2 == 1
    sent = time.time()
    change = fleet.client.post(
        f"/flags/{FLAG}/values?wait_s={min(timeout, 60):g}",
        {"scope": "fleet", "value": value, "reason": f"bench {rep}"},
    )
    acked = time.time()
    if change["missing"]:
        raise SystemExit(f"repetition {rep}: no ack from {change['missing']}")
    version = change["version"]
    seen: dict[str, float] = {}

    def everyone_saw() -> bool:
        for node in fleet.names:
            if node not in seen:
                line = last_seen(fleet, node)
                if line is not None and line["version"] >= version and line["value"] is value:
                    seen[node] = line["t"]
        return len(seen) == len(fleet.names)

    # Poll gently on a big fleet: reading every node's file each 2 ms would starve the
    # watchers (niced with their agents) and measure this loop instead of the path.
    interval = 0.002 if len(fleet.names) <= 8 else 0.02
    wait_until(everyone_saw, timeout=timeout, what="every watcher", interval=interval)
    return {
        "set_to_seen_ms": (max(seen.values()) - sent) * 1000,
        "set_to_acked_ms": (acked - sent) * 1000,
    }


def reference(work: Path, reps: int) -> dict[str, float]:
    """The floor: an atomic local write of flags.json seen by the SDK in another process."""
    directory = work / "reference"
    directory.mkdir()
    flags_file = directory / "flags.json"
    log = directory / "log"
    declared = {FLAG: {"kind": "ops", "type": "boolean", "default": False}}

    def write(version: int, value: bool) -> None:
        document = {
            "format": 1,
            "node": "ref",
            "release": None,
            "version": version,
            "written_at": "2012-08-01T09:30:00Z",
            "flags": {FLAG: {**declared[FLAG], "value": value, "source": "fleet"}},
        }
        temp = directory / f".flags.{version}"
        with open(temp, "wb") as out:
            out.write(json.dumps(document).encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, flags_file)

    write(0, False)
    env = {
        **os.environ,
        "KNIGHTWATCH_FLAGS_FILE": str(flags_file),
        "KNIGHTWATCH_FLAG_DEFAULTS": json.dumps(declared),
        "PYTHONPATH": str(REPO / "src"),
    }
    script = directory / "watch.py"
    script.write_text(WATCHER)
    watcher = subprocess.Popen(["python3", str(script), str(log)], env=env)
    times = []
    try:
        wait_until(log.exists, timeout=30, what="the reference watcher")
        for rep in range(1, reps + 1):
            sent = time.time()
            write(rep, rep % 2 == 1)

            def saw(version: int = rep) -> float | None:
                lines = log.read_text().splitlines()
                line = json.loads(lines[-1])
                return line["t"] if line["version"] >= version else None

            seen = wait_until(saw, timeout=30, what="the reference watcher", interval=0.001)
            times.append((seen - sent) * 1000)
    finally:
        watcher.terminate()
        watcher.wait(10)
    return summarize(times)


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")


def allow_inotify(size: int) -> None:
    """One machine hosting ``size`` nodes needs an inotify instance per agent and per service;
    the default (128 per user) would push the SDK onto its once-a-second fallback."""
    wanted = 4 * size + 64
    try:
        if int(INOTIFY_INSTANCES.read_text()) < wanted:
            INOTIFY_INSTANCES.write_text(str(wanted))
            print(f"… raised fs.inotify.max_user_instances to {wanted}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(
            f"… cannot raise fs.inotify.max_user_instances ({exc}): figures at {size} "
            "agents may show the SDK's once-a-second fallback",
            file=sys.stderr,
        )


def bench_size(work: Path, size: int, reps: int, release: tuple[Path, Path, str]) -> dict[str, Any]:
    """``reps`` fleet-wide changes on ``size`` agents."""
    store, public_key, release_id = release
    allow_inotify(size)
    fleet = LocalFleet(
        work / f"fleet-{size}",
        nodes=size,
        trust=[public_key],
        server_env=SERVER_ENV,
        agent_args=QUIET_AGENT,
    )
    try:
        start_fleet(fleet)
        fleet.push(store, release_id)
        done = fleet.deploy(release_id, timeout=600 + 4 * size)
        if done["state"] != "SUCCEEDED":
            raise SystemExit(f"deploy to {size} agents ended {done['state']}: {done['reason']}")
        wait_until(
            lambda: all(last_seen(fleet, n) for n in fleet.names),
            timeout=300,
            what="every watcher started",
        )
        print(f"… {size} agents: {reps} changes", file=sys.stderr)
        runs = [one_change(fleet, rep, timeout=60 + size) for rep in range(1, reps + 1)]
    finally:
        fleet.down()
        shutil.rmtree(work / f"fleet-{size}", ignore_errors=True)
    result: dict[str, Any] = {"agents": size, "repetitions": reps}
    for key in runs[0]:
        result[key] = summarize([r[key] for r in runs])
    return result


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,64", help="fleet sizes, comma-separated")
    parser.add_argument("--reps", type=int, default=200, help="changes per fleet size")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kw-bench-flags-"))
    try:
        release = build(work)
        results: dict[str, Any] = {"machine": machine(), "reference": reference(work, args.reps)}
        results["fleets"] = [
            bench_size(work, int(size), args.reps, release)
            for size in args.sizes.split(",")
            if size
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    report(results)


def report(results: dict[str, Any]) -> None:
    """Print the figures beside the reference and the goal."""
    info = results["machine"]
    print(f"machine: {info['cpus']} CPUs, {info['cpu']}, Python {info['python']}")
    ref = results["reference"]
    print(
        f"reference (local atomic write → SDK sees it): median {ref['median']:.1f} ms, "
        f"p99 {ref['p99']:.1f} ms, max {ref['max']:.1f} ms"
    )
    for fleet in results["fleets"]:
        seen, acked = fleet["set_to_seen_ms"], fleet["set_to_acked_ms"]
        goal = f" (goal p99 ≤ {GOAL_P99_MS:.0f} ms)" if fleet["agents"] == 8 else ""
        print(f"{fleet['agents']} agents × {fleet['repetitions']} changes{goal}:")
        print(
            f"  flags set → every node's SDK sees it: median {seen['median']:.1f} ms, "
            f"p99 {seen['p99']:.1f} ms, max {seen['max']:.1f} ms "
            f"({seen['p99'] / ref['p99']:.1f}× the reference p99)"
        )
        print(
            f"  flags set → every ack in the answer:  median {acked['median']:.1f} ms, "
            f"p99 {acked['p99']:.1f} ms, max {acked['max']:.1f} ms"
        )
    print(
        "published, not measured here: LaunchDarkly ~200 ms (users report 1–30 s); "
        "Unleash SDKs poll every 15 s"
    )


if __name__ == "__main__":
    main()
