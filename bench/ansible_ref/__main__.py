"""``python -m bench.ansible_ref``: run the reference deploys and print seconds.

Run from the repository root. Without ``--tree`` it generates a tree under
``.bench/trees`` (default 200 files of 4 KiB). Each repetition, from empty
host directories:

1. ``ansible cold``: ansible deploys the tree as ``v1``;
2. with ``--redeploy``: one file of the tree is changed, then
   ``ansible new dir`` deploys it as ``v2`` (a new release directory: rsync
   copies everything), another file is changed, ``ansible same dir`` deploys
   ``v2`` again (rsync sends only the change), and, after a third change,
   ``ansible link-dest`` deploys ``v3`` with ``--link-dest=../v2`` (rsync
   hard-links the unchanged files);
3. the host directories are emptied and ``cp cold`` copies the tree as ``v1``;
   with ``--redeploy`` ``cp new dir`` then copies it as ``v2`` beside it.

``--redeploy`` changes files of the tree, so it is refused for a ``--tree``
given on the command line unless ``--allow-change`` is given too. Every
deploy is checked (``current`` and file counts); ``os.sync()`` runs before
each timed step. Host directories are removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from bench.ansible_ref import (
    DEFAULT_NODES,
    DEFAULT_STRATEGY,
    DeployError,
    ansible_deploy,
    change_one_file,
    count_files,
    cp_deploy,
    ensure_ansible,
    make_tree,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO_ROOT / ".bench"
DEFAULT_HOSTS_ROOT = BENCH_DIR / "ansible_ref" / "hosts"
KIB = 1024


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ansible_ref",
        description="Time cp -a and ansible deploying one tree to N local nodes.",
    )
    parser.add_argument("--tree", type=Path, help="tree to deploy (default: generate one)")
    parser.add_argument("--files", type=int, default=200, help="files in a generated tree")
    parser.add_argument(
        "--total-kib", type=int, default=800, help="size of a generated tree in KiB"
    )
    parser.add_argument("--mixed", action="store_true", help="mixed file sizes when generating")
    parser.add_argument("--nodes", type=int, default=DEFAULT_NODES)
    parser.add_argument("--venv", type=Path, default=BENCH_DIR / "ansible-venv")
    parser.add_argument("--hosts-root", type=Path, default=DEFAULT_HOSTS_ROOT)
    parser.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=["linear", "free"])
    parser.add_argument("--redeploy", action="store_true", help="also time re-deploys")
    parser.add_argument("--allow-change", action="store_true", help="let --redeploy change --tree")
    parser.add_argument("--skip-cp", action="store_true", help="time ansible only")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the host directories")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    return parser.parse_args(argv)


def _fresh(hosts_root: Path) -> None:
    if hosts_root.exists():
        shutil.rmtree(hosts_root)
    hosts_root.mkdir(parents=True)
    os.sync()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(
    results: dict[str, list[float]],
    cpu: dict[str, list[float]],
    name: str,
    step: Callable[[], float],
) -> None:
    os.sync()
    before = _children_cpu()
    seconds = step()
    used = _children_cpu() - before
    results.setdefault(name, []).append(seconds)
    cpu.setdefault(name, []).append(used)
    load = os.getloadavg()[0]
    print(f"  {name:<20} {seconds:8.3f} s  (cpu {used:7.3f} s, load {load:4.1f})", flush=True)


def run(argv: list[str]) -> int:
    """Run the steps described in the module docstring; return the exit status."""
    args = _parse(argv)
    if args.tree is None:
        suffix = "-mixed" if args.mixed else ""
        tree = BENCH_DIR / "trees" / f"gen-{args.files}f-{args.total_kib}k{suffix}"
        print(f"generating {tree} ({args.files} files, {args.total_kib} KiB)", flush=True)
        make_tree(tree, args.files, args.total_kib * KIB, mixed=args.mixed)
    else:
        tree = args.tree
        if args.redeploy and not args.allow_change:
            print("--redeploy changes files of --tree: add --allow-change", file=sys.stderr)
            return 2
    tree = tree.resolve()
    hosts_root = args.hosts_root.resolve()
    nodes = args.nodes
    playbook_bin = ensure_ansible(args.venv)
    size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    print(f"tree {tree}: {count_files(tree)} files, {size / 2**20:.1f} MiB; {nodes} nodes")
    print(f"ansible-playbook {playbook_bin}, strategy {args.strategy}, forks {nodes}")

    def ansible(version: str, opts: tuple[str, ...] = ()) -> Callable[[], float]:
        return lambda: ansible_deploy(
            tree,
            hosts_root,
            version,
            nodes,
            playbook_bin=playbook_bin,
            strategy=args.strategy,
            rsync_opts=opts,
        )

    results: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    try:
        for rep in range(args.repeat):
            print(f"run {rep + 1}/{args.repeat}", flush=True)
            _fresh(hosts_root)
            _timed(results, cpu, "ansible cold", ansible("v1"))
            if args.redeploy:
                change_one_file(tree, seed=3 * rep + 1)
                _timed(results, cpu, "ansible new dir", ansible("v2"))
                change_one_file(tree, seed=3 * rep + 2)
                _timed(results, cpu, "ansible same dir", ansible("v2"))
                change_one_file(tree, seed=3 * rep + 3)
                _timed(results, cpu, "ansible link-dest", ansible("v3", ("--link-dest=../v2",)))
            if not args.skip_cp:
                _fresh(hosts_root)
                _timed(results, cpu, "cp cold", lambda: cp_deploy(tree, hosts_root, "v1", nodes))
                if args.redeploy:
                    _timed(
                        results, cpu, "cp new dir", lambda: cp_deploy(tree, hosts_root, "v2", nodes)
                    )
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep and hosts_root.exists():
            shutil.rmtree(hosts_root)
            default_parent = DEFAULT_HOSTS_ROOT.parent
            if hosts_root.parent == default_parent and not any(default_parent.iterdir()):
                default_parent.rmdir()

    print("summary, wall seconds min / median / max; CPU seconds (children) median")
    for name, values in results.items():
        print(
            f"  {name:<20} {min(values):7.3f} / {statistics.median(values):7.3f}"
            f" / {max(values):7.3f};  cpu {statistics.median(cpu[name]):7.3f}"
        )
    if args.json:
        report = {"tree": str(tree), "nodes": nodes, "seconds": results, "cpu_seconds": cpu}
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
