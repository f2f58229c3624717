"""Deploy benchmark: knightwatch against ``cp -a`` and ansible, on 8 local agents.

For two releases — 200 files × 4 KiB, and 5,000 files / 200 MB — it measures a
cold deploy (every node fetches, stages, verifies and switches) and a
redeploy where one file changed (only that blob, plus the 200-byte embedded
version ID, may move). In the same run, as references: ``cp -a`` of the same
tree into 8 directories (the physical limit on one disk) and ansible
deploying it to 8 local hosts (``ansible.posix.synchronize`` into
releases/<v>, then ``ansible.builtin.file state=link`` for ``current``).

Figures only; it never passes or fails on time.

    python bench/deploy.py            # both releases, 8 nodes
    python bench/deploy.py --quick    # the small release only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.ansible_ref import ansible_deploy, cp_deploy, ensure_ansible  # noqa: E402
from bench.bundle import plan_sizes  # noqa: E402
from knightwatch.bundle import build_release, generate_keypair, load_signing_key  # noqa: E402
from knightwatch.localfleet import LocalFleet  # noqa: E402

EPOCH = {"SOURCE_DATE_EPOCH": "1343826000"}
SPEC = """\
[release]
name = "{name}"
version = "{version}"

[[component]]
name = "all"
version = "1.0.0"
paths = ["**"]
"""


@dataclass(frozen=True)
class Shape:
    """A release to deploy: how many files, how many bytes."""

    name: str
    files: int
    total_bytes: int
    uniform: bool


SMALL = Shape("small", 200, 200 * 4096, uniform=True)
LARGE = Shape("large", 5000, 200 * 1024 * 1024, uniform=False)


def generate(root: Path, shape: Shape, version: str, seed: int = 2012) -> None:
    """Write a source tree of ``shape`` (random bytes, reproducible from ``seed``)."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "knightwatch.toml").write_text(SPEC.format(name=shape.name, version=version))
    sizes = (
        [shape.total_bytes // shape.files] * shape.files
        if shape.uniform
        else plan_sizes(shape.files, shape.total_bytes, rng)
    )
    for index, size in enumerate(sizes):
        path = root / f"d{index % 50:02d}" / f"f{index:05d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(rng.randbytes(size))


def change_one_file(source: Path, target: Path, version: str) -> str:
    """Copy ``source`` to ``target`` with one file changed and the version bumped."""
    shutil.copytree(source, target)
    spec = target / "knightwatch.toml"
    spec.write_text(
        spec.read_text().replace('version = "1.0.0"\n\n[[', f'version = "{version}"\n\n[[', 1)
    )
    victim = sorted(target.rglob("*.bin"))[0]
    with victim.open("r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 0xFF]))
    return str(victim.relative_to(target))


def blob_bytes(fleet: LocalFleet) -> tuple[int, int]:
    """Total (blobs, bytes) in every node's blob cache."""
    count = size = 0
    for name in fleet.names:
        for path in (fleet.root(name) / "blobs").rglob("*"):
            if path.is_file() and ".partial" not in path.parts:
                count += 1
                size += path.stat().st_size
    return count, size


def timed_deploy(fleet: LocalFleet, release_id: str) -> dict[str, Any]:
    """Deploy ``release_id`` and measure wall time and bytes moved to the nodes."""
    blobs_before, bytes_before = blob_bytes(fleet)
    started = time.perf_counter()
    result = fleet.deploy(release_id, timeout=1800)
    seconds = time.perf_counter() - started
    if result["state"] != "SUCCEEDED":
        raise SystemExit(f"deployment of {release_id} ended {result['state']}: {result['reason']}")
    blobs_after, bytes_after = blob_bytes(fleet)
    return {
        "seconds": seconds,
        "blobs_moved": blobs_after - blobs_before,
        "bytes_moved": bytes_after - bytes_before,
    }


def bench_shape(shape: Shape, work: Path, nodes: int, playbook: Path | None) -> dict[str, Any]:
    """Run every measurement for one release shape."""
    print(
        f"… {shape.name}: generating {shape.files} files, {shape.total_bytes / 2**20:.1f} MiB",
        file=sys.stderr,
    )
    v1, v2 = work / shape.name / "v1", work / shape.name / "v2"
    generate(v1, shape, "1.0.0")
    changed = change_one_file(v1, v2, "1.0.1")
    os.sync()
    keys = work / "keys"
    if not (keys / "release.key").exists():
        generate_keypair(keys)
    key = load_signing_key(keys / "release.key")
    store = work / "store"
    first = build_release(v1, store, key, environ=EPOCH)
    second = build_release(v2, store, key, environ=EPOCH)
    figures: dict[str, Any] = {
        "files": shape.files,
        "bytes": shape.total_bytes,
        "changed_file": changed,
    }
    with LocalFleet(work / shape.name / "fleet", nodes, trust=[keys / "release.pub"]) as fleet:
        print(f"… {shape.name}: fleet of {nodes} agents up; pushing", file=sys.stderr)
        for release in (first, second):
            started = time.perf_counter()
            fleet.push(store, release.release_id)
            figures.setdefault("push_seconds", []).append(time.perf_counter() - started)
        print(f"… {shape.name}: cold deploy", file=sys.stderr)
        figures["cold"] = timed_deploy(fleet, first.release_id)
        print(f"… {shape.name}: one-file redeploy", file=sys.stderr)
        figures["redeploy"] = timed_deploy(fleet, second.release_id)
    hosts = work / shape.name / "hosts"
    print(f"… {shape.name}: cp -a reference", file=sys.stderr)
    figures["cp_cold"] = cp_deploy(v1, hosts / "cp", "v1", nodes)
    if playbook is not None:
        print(f"… {shape.name}: ansible reference", file=sys.stderr)
        figures["ansible_cold"] = ansible_deploy(
            v1, hosts / "ansible", "v1", nodes, playbook_bin=playbook
        )
        figures["ansible_redeploy"] = ansible_deploy(
            v2, hosts / "ansible", "v2", nodes, playbook_bin=playbook
        )
    shutil.rmtree(hosts, ignore_errors=True)
    return figures


def machine() -> dict[str, str]:
    """What this ran on."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def report(results: dict[str, Any], nodes: int) -> None:
    """Print every figure and the ratios."""
    info = results["machine"]
    print(
        f"\ndeploy benchmark · {nodes} agents · {info['cpus']} CPUs {info['cpu']} · "
        f"Python {info['python']}"
    )
    for name, f in results["shapes"].items():
        cold, redo = f["cold"], f["redeploy"]
        print(f"\n[{name}] {f['files']:,} files, {f['bytes'] / 2**20:.1f} MiB")
        print(
            f"  knightwatch push (v1, v2)        {f['push_seconds'][0]:8.2f} s "
            f"{f['push_seconds'][1]:8.2f} s"
        )
        print(
            f"  knightwatch cold deploy          {cold['seconds']:8.2f} s   moved "
            f"{cold['bytes_moved'] / 2**20:8.1f} MiB in {cold['blobs_moved']:,} blobs"
        )
        print(
            f"  knightwatch one-file redeploy    {redo['seconds']:8.2f} s   moved "
            f"{redo['bytes_moved']:,} bytes in {redo['blobs_moved']} blobs "
            f"({redo['blobs_moved'] / nodes:.0f} per node: {f['changed_file']} and "
            ".knightwatch/release.json)"
        )
        print(f"  cp -a into {nodes} dirs (limit)      {f['cp_cold']:8.2f} s")
        print(
            f"  ratio knightwatch / cp -a        {cold['seconds'] / f['cp_cold']:8.2f}   (goal ≤ 2)"
        )
        if "ansible_cold" in f:
            print(f"  ansible cold deploy              {f['ansible_cold']:8.2f} s")
            print(f"  ansible one-file redeploy        {f['ansible_redeploy']:8.2f} s")
            print(
                f"  ansible / knightwatch, cold      {f['ansible_cold'] / cold['seconds']:8.1f}×"
                "  (goal ≥ 10×)"
            )
            print(
                f"  ansible / knightwatch, redeploy  "
                f"{f['ansible_redeploy'] / redo['seconds']:8.1f}×"
            )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="only the 200-file release")
    parser.add_argument("--skip-ansible", action="store_true")
    parser.add_argument("--dir", type=Path, default=REPO / ".bench" / "deploy")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    playbook = None if args.skip_ansible else ensure_ansible(REPO / ".bench" / "ansible-venv")
    shapes = [SMALL] if args.quick else [SMALL, LARGE]
    results = {
        "machine": machine(),
        "nodes": args.nodes,
        "shapes": {s.name: bench_shape(s, args.dir, args.nodes, playbook) for s in shapes},
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results, args.nodes)
    shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
