"""The wheel, installed in a fresh virtual environment outside the checkout, runs the product.

How it is built and installed — offline, in seconds, as a user's pip would:

* ``python -m build --no-isolation`` (``build`` and ``hatchling`` are dev extras, so
  no package index is needed) builds the sdist from the checkout, then the wheel
  *from that sdist*, as a release does: a file the sdist lacks is missing from
  the wheel too. Both land in tmp_path.
* ``python -m venv --without-pip`` makes a fresh environment in tmp_path, and
  ``pip --python FRESH install --no-deps --no-index WHEEL`` installs the wheel
  into it: the console script, byte-compiled modules, file modes from the
  wheel. Nothing is fetched.
* Only then does the fresh environment get its dependencies: a ``.pth`` file in
  its site-packages naming this test run's site-packages (``sysconfig``'s
  purelib and platlib), where they are installed already. A ``.pth`` line that
  is a path only appends that directory to ``sys.path``; the ``.pth`` files
  inside it — such as an editable install's ``_editable_impl_knightwatch.pth``,
  which adds the checkout's ``src/`` — are processed only in site directories,
  so they are not (the test checks that no ``sys.path`` entry is in the
  checkout). The fresh site-packages comes first on ``sys.path``, so
  knightwatch and its metadata are found there, not in the editable install.
  The ``.pth`` is written after pip ran, so pip never sees the editable install.

Every command runs with its working directory in tmp_path and an environment
without ``PYTHON*`` or ``KNIGHTWATCH_*`` variables (a HOME of its own, so no
``~/.config/knightwatch``); the test checks that the interpreter, the console
script and the server and agent processes of the fleet all run the fresh
environment's knightwatch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import knightwatch
from tests.helpers import EXAMPLE, REPO

SRC = REPO / "src" / "knightwatch"
VERSION = knightwatch.__version__
TIMEOUT = 180


@dataclass(frozen=True)
class Installed:
    """The built distributions and the fresh environment the wheel is installed in."""

    sdist: Path
    wheel: Path
    venv: Path
    site_packages: Path
    env: dict[str, str]
    work: Path

    @property
    def python(self) -> Path:
        """The fresh environment's interpreter."""
        return self.venv / "bin" / "python"

    def run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a program of the fresh environment (``knightwatch``, ``python``) in the work dir."""
        done = subprocess.run(
            [str(self.venv / "bin" / str(args[0])), *map(str, args[1:])],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
        return done

    def kw_json(self, *args: str | Path) -> Any:
        """Run ``knightwatch ARGS --json`` from the fresh environment; return its document."""
        return json.loads(self.run("knightwatch", *args, "--json").stdout)


def _quiet(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"


def _without_checkout(base: dict[str, str]) -> dict[str, str]:
    """``base`` without what would point a process at the checkout or at another fleet."""
    return {
        key: value
        for key, value in base.items()
        if not key.startswith(("PYTHON", "KNIGHTWATCH_", "VIRTUAL_ENV", "XDG_CONFIG"))
    }


def _build(out: Path) -> tuple[Path, Path]:
    """Build the sdist, then the wheel from it, into ``out``; return both."""
    _quiet(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
        cwd=out.parent,
        env=_without_checkout(dict(os.environ)),
    )
    (sdist,) = out.glob("knightwatch-*.tar.gz")
    (wheel,) = out.glob("knightwatch-*-py3-none-any.whl")
    return sdist, wheel


def _install(wheel: Path, venv: Path) -> Path:
    """Make a fresh environment, install ``wheel`` into it, then add the dependencies' .pth."""
    clean = _without_checkout(dict(os.environ))
    _quiet([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv.parent, env=clean)
    python = str(venv / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python, "--disable-pip-version-check"]
    _quiet([*pip, "install", "--no-deps", "--no-index", str(wheel)], cwd=venv.parent, env=clean)
    site_packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            env=clean,
            capture_output=True,
            text=True,
            check=True,
            timeout=TIMEOUT,
        ).stdout.strip()
    )
    ours = sysconfig.get_paths()
    dependencies = dict.fromkeys((ours["purelib"], ours["platlib"]))
    (site_packages / "_knightwatch_test_dependencies.pth").write_text(
        "".join(f"{path}\n" for path in dependencies)
    )
    return site_packages


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The sdist and wheel built from the checkout, the wheel installed in a fresh venv."""
    root = tmp_path_factory.mktemp("install")
    dist, work, home = root / "dist", root / "work", root / "home"
    for directory in (dist, work, home):
        directory.mkdir()
    sdist, wheel = _build(dist)
    venv = root / "venv"
    site_packages = _install(wheel, venv)
    env = _without_checkout(dict(os.environ))
    env.update(
        HOME=str(home),
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        PYTHONNOUSERSITE="1",
        COLUMNS="200",
    )
    return Installed(sdist, wheel, venv, site_packages, env, work)


def _package_files(root: Path) -> set[str]:
    """Every file under ``root`` as a relative POSIX path, bytecode left out."""
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def _executable(root: Path, files: set[str]) -> set[str]:
    return {name for name in files if (root / name).stat().st_mode & 0o111}


class TestDistributions:
    def test_the_sdist_holds_what_builds_tests_and_documents_knightwatch(
        self, installed: Installed
    ) -> None:
        """Sources, tests, examples, README, CHANGELOG, LICENSE: a wheel is built from it."""
        with tarfile.open(installed.sdist) as sdist:
            names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
        top = f"knightwatch-{VERSION}"
        assert installed.sdist.name == f"{top}.tar.gz"
        required = {"README.md", "CHANGELOG.md", "LICENSE", "pyproject.toml", "PKG-INFO"}
        assert required <= names
        assert {f"src/knightwatch/{name}" for name in _package_files(SRC)} <= names
        assert {f"examples/smars/{name}" for name in _package_files(EXAMPLE)} <= names
        assert "tests/install/test_wheel.py" in names
        assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)

    def test_the_wheel_holds_every_file_the_product_runs_on(self, installed: Installed) -> None:
        """Migrations, dashboard, SDK schema, simulator sources and the example, modes kept."""
        assert installed.wheel.name == f"knightwatch-{VERSION}-py3-none-any.whl"
        with zipfile.ZipFile(installed.wheel) as wheel:
            modes = {info.filename: info.external_attr >> 16 for info in wheel.infolist()}
        package = _package_files(SRC)
        assert {f"knightwatch/{name}" for name in package} <= set(modes)
        for needed in ("store/migrations/env.py", "store/migrations/script.py.mako"):
            assert needed in package
        for needed in ("sdk/flags.schema.json", "api/dashboard/templates/layout.html"):
            assert needed in package
        migrations = {name for name in package if name.startswith("store/migrations/versions/")}
        assert len(migrations) >= 8
        example = _package_files(EXAMPLE)
        assert {f"knightwatch/examples/smars/{name}" for name in example} <= set(modes)
        for root, prefix, files in (
            (SRC, "knightwatch/", package),
            (EXAMPLE, "knightwatch/examples/smars/", example),
        ):
            shipped_executable = {name for name in files if modes[prefix + name] & 0o111}
            assert shipped_executable == _executable(root, files), prefix
        assert "knightwatch/examples/smars/bin/smars-router" in {
            name for name, mode in modes.items() if mode & 0o111
        }
        assert not any("__pycache__" in name or name.endswith(".pyc") for name in modes)


class TestInstalled:
    def test_it_imports_knightwatch_from_the_fresh_environment(self, installed: Installed) -> None:
        """knightwatch, its metadata and its console script come from the venv, not the checkout."""
        probe = (
            "import importlib.metadata, json, sys, knightwatch; print(json.dumps({"
            "'file': knightwatch.__file__, 'path': sys.path, 'prefix': sys.prefix, "
            "'metadata': importlib.metadata.version('knightwatch')}))"
        )
        seen = json.loads(installed.run("python", "-c", probe).stdout)
        assert Path(seen["file"]) == installed.site_packages / "knightwatch" / "__init__.py"
        assert Path(seen["prefix"]) == installed.venv
        assert seen["metadata"] == VERSION
        checkout = REPO.resolve()
        borrowed = {Path(p).resolve() for p in sysconfig.get_paths().values()}  # dependencies
        entries = [Path(p).resolve() for p in seen["path"] if p]
        inside = [p for p in entries if p.is_relative_to(checkout) and p not in borrowed]
        assert inside == [], "the checkout is on the installed knightwatch's sys.path"
        others = [  # an editable install's src/, wherever its checkout is
            entry
            for entry in seen["path"]
            if entry and (Path(entry) / "knightwatch" / "__init__.py").is_file()
        ]
        assert [Path(entry) for entry in others] == [installed.site_packages], seen["path"]
        script = (installed.venv / "bin" / "knightwatch").read_text().splitlines()[0]
        assert script == f"#!{installed.python}", script

    def test_version(self, installed: Installed) -> None:
        """``knightwatch --version`` prints the package's version."""
        assert installed.run("knightwatch", "--version").stdout.strip() == f"knightwatch {VERSION}"

    def test_keys_example_build_and_a_one_node_fleet(self, installed: Installed) -> None:
        """Keys, the shipped example written out and built, deployed on a fleet, then stopped."""
        keys = installed.kw_json("keys", "generate", "--out", "keys")
        assert (installed.work / keys["public_key"]).is_file()
        written = installed.kw_json("example", "smars", "smars-src")
        tree = installed.work / "smars-src"
        assert written["release"] == "smars@2012.8.1"
        assert _package_files(tree) == _package_files(EXAMPLE)  # bytecode of the install left out
        assert _executable(tree, _package_files(tree)) == {"bin/smars-router"}
        built = installed.kw_json(
            "bundle", "build", "smars-src", "--store", "store", "--key", "keys/release.key"
        )
        assert built["release_id"].startswith("smars@2012.8.1+")
        up = installed.kw_json(
            "fleet",
            "up",
            "--nodes",
            "1",
            "--release",
            built["release_id"],
            "--store",
            "store",
            "--trust",
            "keys/release.pub",
        )
        assert up["deployment"]["state"] == "SUCCEEDED", up["deployment"]
        pids = _fleet_processes(installed)
        status = installed.kw_json("status")
        (node,) = status["nodes"]
        assert status["state"] == "CONVERGED", status
        assert node["connected"] is True and node["service_state"] == "running", node
        assert node["active_release"] == built["release_id"], node
        down = installed.kw_json("fleet", "down")
        assert sorted(down["stopped"]) == ["node1", "server"], down
        for pid in [*pids, node["service_pid"]]:
            assert not _alive(pid), f"pid {pid} still runs after fleet down"

    def test_the_simulator_sources_build_from_the_installed_package(
        self, installed: Installed
    ) -> None:
        """The drill's releases assemble from the installed package and build as in the checkout."""
        assemble = (
            "import sys; from pathlib import Path; from knightwatch.sim.sources import assemble; "
            "assemble(sys.argv[1], Path(sys.argv[2]))"
        )
        installed.run("python", "-c", assemble, "2012.07", "sim-2012.07")
        tree = installed.work / "sim-2012.07"
        assert not any(part == "__pycache__" for p in tree.rglob("*") for part in p.parts)
        assert _executable(tree, _package_files(tree)) == {"bin/smars-halt", "bin/smars-router"}
        installed.run("knightwatch", "keys", "generate", "--out", "sim-keys")
        built = installed.kw_json(
            "bundle",
            "build",
            "sim-2012.07",
            "--store",
            "sim-store",
            "--key",
            "sim-keys/release.key",
        )
        assert built["release_id"].startswith("smars@2012.07+")


def _fleet_processes(installed: Installed) -> list[int]:
    """The fleet's server and agent pids, checked to run the fresh environment's interpreter."""
    pids = []
    for piece in ("server", "node1"):
        pid = int((installed.work / ".knightwatch-fleet" / "pids" / f"{piece}.pid").read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[0].decode() == str(installed.python), (piece, argv)
        assert argv[1:3] == [b"-m", b"knightwatch"], (piece, argv)
        pids.append(pid)
    return pids


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(autouse=True)
def _no_fleet_left(installed: Installed) -> Iterator[None]:
    """Stop a fleet a failed test left running (``fleet down`` stops nothing otherwise)."""
    yield
    if (installed.work / ".knightwatch-fleet" / "pids" / "server.pid").exists():
        installed.run("knightwatch", "fleet", "down", check=False)
