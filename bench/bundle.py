"""Benchmark ``knightwatch bundle build`` against ``find | xargs sha256sum``.

Generates a reproducible tree (default 20,000 files, about 1 GiB: many small
files, some medium, a few large, spread over nested directories), then, in
one run:

1. times the reference, ``find TREE -type f -print0 | xargs -0 sha256sum``;
2. times a cold ``knightwatch bundle build`` into an empty store;
3. times a second build of the unchanged tree into the same store (it should
   write no blob);
4. times the reference once more.

Nothing is dropped from the page cache (that cannot be done portably): the
tree is still cached from being generated, so every timed run reads from
memory. The faster of the two reference runs is the one the ratio uses, so a
build never looks good because the reference happened to be slow. Dirty pages
of the generated tree are flushed (``sync``) before timing, because the build
calls ``syncfs(2)`` and would otherwise pay for writing out our test data.

The build result is checked: the manifest must list every generated file
(plus the embedded ``.knightwatch/release.json``) with the digest we computed
while writing it, and the cold build must write one blob per distinct file
plus one. The script prints figures and never fails on time; it exits 1 only
when something actually broke.

Usage: ``python bench/bundle.py [--quick] [--files N] [--total-mb N] [--json]``
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO_ROOT / ".bench" / "bundle"
MIB = 1024 * 1024
KIB = 1024
WRITE_CHUNK = 4 * MIB
FILES_PER_DIR = 100
SUBDIRS_PER_DIR = 10
QUICK_FILES = 2000
QUICK_TOTAL_MB = 64

SPEC_TOML = """\
[release]
name = "bench"
version = "1.0.0"

[[component]]
name = "all"
version = "1.0.0"
paths = ["**"]
"""

REFERENCE_SCRIPT = 'set -o pipefail; find "$1" -type f -print0 | xargs -0 sha256sum > /dev/null'

console = Console(highlight=False)
if not console.is_terminal:
    console.width = 120  # a log or pipe: no need to wrap the table at 80 columns
errors = Console(stderr=True, highlight=False)


class BenchError(Exception):
    """Something broke (a command failed or a result is wrong); not a slow figure."""


@dataclass(frozen=True)
class Options:
    """The resolved command line."""

    files: int
    total_bytes: int
    directory: Path
    seed: int
    keep: bool
    workers: int | None
    json_output: bool


@dataclass(frozen=True)
class TreeFile:
    """One file to generate: where, how big."""

    path: str
    size: int


@dataclass
class Tree:
    """The generated tree and what we know about its contents."""

    root: Path
    digests: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    sync_seconds: float = 0.0

    @property
    def files(self) -> int:
        """Number of generated files (the spec file not counted)."""
        return len(self.digests)

    @property
    def total_bytes(self) -> int:
        """Bytes of all generated files."""
        return sum(self.sizes.values())

    def distinct(self) -> dict[str, int]:
        """Return the size of each distinct content, by digest."""
        return {self.digests[path]: size for path, size in self.sizes.items()}


@dataclass(frozen=True)
class Run:
    """One timed run over the tree."""

    seconds: float
    files: int
    total_bytes: int

    @property
    def files_per_s(self) -> float:
        """Files hashed per second."""
        return self.files / self.seconds

    @property
    def mib_per_s(self) -> float:
        """MiB hashed per second."""
        return self.total_bytes / MIB / self.seconds

    def figures(self) -> dict[str, float]:
        """Return the run as plain JSON data."""
        return {
            "seconds": round(self.seconds, 3),
            "files_per_s": round(self.files_per_s, 1),
            "mib_per_s": round(self.mib_per_s, 1),
        }


@dataclass(frozen=True)
class BuildRun:
    """One timed ``knightwatch bundle build`` and its ``--json`` result."""

    run: Run
    result: dict[str, Any]


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> Options:
    """Parse the command line; ``--quick`` changes the defaults, not explicit values."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, help="files to generate (default 20000)")
    parser.add_argument("--total-mb", type=int, help="total size in MiB (default 1024)")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="work directory")
    parser.add_argument("--seed", type=int, default=2012, help="seed of the generated tree")
    parser.add_argument("--keep", action="store_true", help="keep the tree and store")
    parser.add_argument("--workers", type=int, help="pass --workers N to the build")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_FILES} files, {QUICK_TOTAL_MB} MiB",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    files = args.files or (QUICK_FILES if args.quick else 20_000)
    total_mb = args.total_mb or (QUICK_TOTAL_MB if args.quick else 1024)
    if files < 1 or total_mb < 1:
        parser.error("--files and --total-mb must be positive")
    return Options(
        files=files,
        total_bytes=total_mb * MIB,
        directory=args.dir.resolve(),
        seed=args.seed,
        keep=args.keep,
        workers=args.workers,
        json_output=args.json,
    )


# --- the tree ---------------------------------------------------------------------------------


def plan_sizes(files: int, total_bytes: int, rng: random.Random) -> list[int]:
    """Return ``files`` sizes summing to ``total_bytes``.

    Nominal mix: 0.05% large (8-64 MiB), 5% medium (64 KiB-1 MiB), the rest
    small (1-16 KiB); every size is then scaled by one factor so the total
    is exact (with the defaults the factor is close to 1).
    """
    large = max(1, round(files * 0.0005)) if files >= 20 else 0
    medium = round(files * 0.05)
    small = files - large - medium
    sizes = [rng.randint(1 * KIB, 16 * KIB) for _ in range(small)]
    sizes += [rng.randint(64 * KIB, 1 * MIB) for _ in range(medium)]
    sizes += [rng.randint(8 * MIB, 64 * MIB) for _ in range(large)]
    factor = total_bytes / sum(sizes)
    sizes = [max(1, int(size * factor)) for size in sizes]
    biggest = sizes.index(max(sizes))
    sizes[biggest] = max(1, sizes[biggest] + total_bytes - sum(sizes))
    rng.shuffle(sizes)
    return sizes


def plan_tree(files: int, total_bytes: int, rng: random.Random) -> list[TreeFile]:
    """Return the files to generate, spread over two levels of directories."""
    leaves = max(1, files // FILES_PER_DIR)
    plan: list[TreeFile] = []
    for index, size in enumerate(plan_sizes(files, total_bytes, rng)):
        leaf = rng.randrange(leaves)
        directory = f"d{leaf // SUBDIRS_PER_DIR:03d}/s{leaf % SUBDIRS_PER_DIR:02d}"
        plan.append(TreeFile(f"{directory}/f{index:06d}.bin", size))
    return plan


def write_file(path: Path, size: int, rng: random.Random) -> str:
    """Write ``size`` random bytes to ``path``; return their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        remaining = size
        while remaining:
            chunk = rng.randbytes(min(remaining, WRITE_CHUNK))
            out.write(chunk)
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def generate_tree(root: Path, options: Options) -> Tree:
    """Create the source tree (spec included) and flush it to disk."""
    started = time.perf_counter()
    rng = random.Random(options.seed)
    tree = Tree(root)
    root.mkdir(parents=True)
    (root / "knightwatch.toml").write_text(SPEC_TOML)
    for item in plan_tree(options.files, options.total_bytes, rng):
        path = root / item.path
        path.parent.mkdir(parents=True, exist_ok=True)
        tree.digests[item.path] = write_file(path, item.size, rng)
        tree.sizes[item.path] = item.size
    tree.seconds = time.perf_counter() - started
    started = time.perf_counter()
    os.sync()
    tree.sync_seconds = time.perf_counter() - started
    return tree


# --- commands ---------------------------------------------------------------------------------


def knightwatch_command() -> list[str]:
    """Return the argv prefix that runs the installed ``knightwatch`` CLI."""
    beside = Path(sys.executable).parent / "knightwatch"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [os.fspath(beside)]
    found = shutil.which("knightwatch")
    if found is None:
        raise BenchError("no knightwatch command next to the interpreter or on PATH")
    return [found]


def run_command(argv: list[str]) -> tuple[float, str]:
    """Run ``argv`` and return (wall seconds, stdout); raise BenchError if it fails."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(
            f"{' '.join(argv[:3])} … exited {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    return seconds, done.stdout


def generate_key(directory: Path) -> Path:
    """Generate a signing key pair in ``directory``; return the private key."""
    run_command([*knightwatch_command(), "keys", "generate", "--out", os.fspath(directory)])
    return directory / "release.key"


def time_reference(tree: Tree) -> Run:
    """Time ``find | xargs -0 sha256sum`` over the tree (spec file included)."""
    seconds, _ = run_command(["bash", "-c", REFERENCE_SCRIPT, "bash", os.fspath(tree.root)])
    return Run(seconds, tree.files, tree.total_bytes)


def time_build(tree: Tree, store: Path, key: Path, workers: int | None) -> BuildRun:
    """Time one ``knightwatch bundle build --json`` of the tree into ``store``."""
    argv = [*knightwatch_command(), "bundle", "build", os.fspath(tree.root)]
    argv += ["--store", os.fspath(store), "--key", os.fspath(key), "--json"]
    if workers is not None:
        argv += ["--workers", str(workers)]
    seconds, stdout = run_command(argv)
    try:
        result = json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise BenchError(f"bundle build --json printed no JSON: {stdout[:500]!r}") from exc
    return BuildRun(Run(seconds, tree.files, tree.total_bytes), result)


def stored_manifest(store: Path, release_id: str) -> dict[str, Any]:
    """Return the manifest of ``release_id`` as ``bundle show --json`` prints it."""
    argv = [*knightwatch_command(), "bundle", "show", release_id]
    _, stdout = run_command([*argv, "--store", os.fspath(store), "--json"])
    manifest: dict[str, Any] = json.loads(stdout)["manifest"]
    return manifest


# --- checks -----------------------------------------------------------------------------------


def check_cold_build(tree: Tree, store: Path, build: BuildRun) -> list[str]:
    """Return what is wrong with the cold build's result and stored release."""
    result = build.result
    problems: list[str] = []
    distinct = tree.distinct()
    if result["files"] != tree.files + 1:
        problems.append(f"build reports {result['files']} files, expected {tree.files + 1}")
    if result["blobs_written"] != len(distinct) + 1:
        problems.append(
            f"cold build wrote {result['blobs_written']} blobs, expected {len(distinct) + 1} "
            "(distinct files + release.json)"
        )
    expected_bytes = sum(distinct.values()) + result["total_bytes"] - tree.total_bytes
    if result["bytes_written"] != expected_bytes:
        problems.append(
            f"cold build wrote {result['bytes_written']} bytes, expected {expected_bytes}"
        )
    problems += check_manifest(tree, stored_manifest(store, result["release_id"]))
    on_disk = sum(1 for p in (store / "blobs" / "sha256").rglob("*") if p.is_file())
    if on_disk != len(distinct) + 1:
        problems.append(f"store holds {on_disk} blob files, expected {len(distinct) + 1}")
    return problems


def check_manifest(tree: Tree, manifest: dict[str, Any]) -> list[str]:
    """Compare the manifest's files with what we generated."""
    listed = {entry["path"]: entry for entry in manifest["files"]}
    problems: list[str] = []
    if len(listed) != tree.files + 1:
        problems.append(f"manifest lists {len(listed)} files, expected {tree.files + 1}")
    if ".knightwatch/release.json" not in listed:
        problems.append("manifest lacks .knightwatch/release.json")
    wrong = [
        path
        for path, digest in tree.digests.items()
        if path not in listed
        or listed[path]["digest"] != digest
        or listed[path]["size"] != tree.sizes[path]
    ]
    if wrong:
        problems.append(f"{len(wrong)} files missing or with a wrong digest/size, e.g. {wrong[0]}")
    return problems


def check_rebuild(cold: BuildRun, warm: BuildRun) -> list[str]:
    """Return what is wrong with the second build of the unchanged tree."""
    problems: list[str] = []
    if warm.result["blobs_written"] != 0:
        problems.append(f"second build wrote {warm.result['blobs_written']} blobs, expected 0")
    if warm.result["digest"] != cold.result["digest"]:
        problems.append("second build of the unchanged tree gave a different release digest")
    if warm.result["created"]:
        problems.append("second build created a new release")
    return problems


# --- report -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Describe the machine: CPUs, CPU model, SHA extensions, Python."""
    model, sha_ni = "unknown", False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        if key.strip() == "flags":
            sha_ni = "sha_ni" in value.split()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "sha_ni": sha_ni,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def figures(
    options: Options, tree: Tree, refs: list[Run], cold: BuildRun, warm: BuildRun
) -> dict[str, Any]:
    """Collect every figure of the run as plain JSON data."""
    best = min(refs, key=lambda run: run.seconds)
    return {
        "machine": machine(),
        "tree": {
            "files": tree.files,
            "mib": round(tree.total_bytes / MIB, 1),
            "distinct_files": len(tree.distinct()),
            "seed": options.seed,
            "generate_seconds": round(tree.seconds, 2),
            "sync_seconds": round(tree.sync_seconds, 2),
        },
        "reference": {
            "runs_seconds": [round(run.seconds, 3) for run in refs],
            "best": best.figures(),
        },
        "build": {
            **cold.run.figures(),
            "internal_seconds": round(cold.result["seconds"], 3),
            "blobs_written": cold.result["blobs_written"],
            "mib_written": round(cold.result["bytes_written"] / MIB, 1),
            "workers": options.workers,
        },
        "ratio": round(cold.run.seconds / best.seconds, 3),
        "rebuild": {
            "seconds": round(warm.run.seconds, 3),
            "internal_seconds": round(warm.result["seconds"], 3),
            "blobs_written": warm.result["blobs_written"],
        },
    }


def print_table(data: dict[str, Any]) -> None:
    """Print the figures as a readable table."""
    mach, tree, ref, build = data["machine"], data["tree"], data["reference"], data["build"]
    table = Table(title="knightwatch bundle build vs find | xargs sha256sum", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column()
    sha = "SHA-NI" if mach["sha_ni"] else "no SHA-NI"
    table.add_row("machine", f"{mach['nproc']} CPUs, {mach['cpu']} ({sha})")
    table.add_row("", f"Python {mach['python']}, Linux {mach['kernel']}")
    table.add_row(
        "tree",
        f"{tree['files']:,} files ({tree['distinct_files']:,} distinct), {tree['mib']:,} MiB, "
        f"seed {tree['seed']}; generated in {tree['generate_seconds']} s, "
        f"flushed in {tree['sync_seconds']} s",
    )
    runs = " / ".join(f"{s:.2f} s" for s in ref["runs_seconds"])
    table.add_row("reference runs", f"{runs} (before / after the builds; the faster is used)")
    table.add_row("reference", _run_text(ref["best"]))
    workers = build["workers"] or "default"
    table.add_row("build (cold)", _run_text(build) + f", workers {workers}")
    table.add_row(
        "",
        f"{build['internal_seconds']:.2f} s inside build_release, "
        f"{build['seconds'] - build['internal_seconds']:.2f} s outside (start-up, imports, scan); "
        f"{build['blobs_written']:,} blobs ({build['mib_written']:,} MiB) written",
    )
    verdict = "faster than" if data["ratio"] < 1 else "slower than"
    table.add_row(
        "ratio", f"{data['ratio']:.2f} (build time / reference time; {verdict} the reference)"
    )
    rebuild = data["rebuild"]
    table.add_row(
        "rebuild (unchanged)",
        f"{rebuild['seconds']:.2f} s ({rebuild['internal_seconds']:.2f} s inside), "
        f"{rebuild['blobs_written']} blobs written",
    )
    console.print(table)


def _run_text(run: dict[str, float]) -> str:
    return (
        f"{run['seconds']:.2f} s, {run['files_per_s']:,.0f} files/s, {run['mib_per_s']:,.1f} MiB/s"
    )


# --- main -------------------------------------------------------------------------------------


def status(options: Options, message: str) -> None:
    """Tell a person what is happening (on stderr, so --json output stays clean)."""
    if not options.json_output:
        errors.print(f"[dim]… {message}[/]")


def clean(directory: Path) -> None:
    """Remove what this script creates under ``directory`` (and nothing else)."""
    for name in ("tree", "store", "keys"):
        shutil.rmtree(directory / name, ignore_errors=True)
    with contextlib.suppress(OSError):
        directory.rmdir()


def bench(options: Options) -> dict[str, Any]:
    """Run the whole benchmark and return its figures; raise BenchError if it broke."""
    work = options.directory
    clean(work)
    work.mkdir(parents=True, exist_ok=True)
    key = generate_key(work / "keys")
    store = work / "store"
    mib = options.total_bytes // MIB
    status(options, f"generating {options.files:,} files, {mib:,} MiB in {work / 'tree'}")
    tree = generate_tree(work / "tree", options)
    status(options, "timing the reference (find | xargs sha256sum)")
    refs = [time_reference(tree)]
    status(options, "timing the cold build")
    cold = time_build(tree, store, key, options.workers)
    status(options, "timing the rebuild of the unchanged tree")
    warm = time_build(tree, store, key, options.workers)
    status(options, "timing the reference again")
    refs.append(time_reference(tree))
    status(options, "checking the build result")
    problems = check_cold_build(tree, store, cold) + check_rebuild(cold, warm)
    data = figures(options, tree, refs, cold, warm)
    data["problems"] = problems
    return data


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the figures; return 1 only if something broke."""
    options = parse_args(argv)
    try:
        data = bench(options)
    except BenchError as exc:
        errors.print(f"[bold red]bench failed:[/] {exc}")
        return 1
    finally:
        if not options.keep:
            clean(options.directory)
    if options.json_output:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        print_table(data)
        for problem in data["problems"]:
            console.print(f"[red]✗[/] {problem}")
        if not data["problems"]:
            console.print("[green]✓[/] build result checked: manifest, digests, blob counts")
    return 1 if data["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
