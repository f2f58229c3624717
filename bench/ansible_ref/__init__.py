"""Reference deploys for the deploy benchmark: ``cp -a`` and ansible.

The product benchmark deploys one release tree to N local agents. This module
gives it two references that do the same job on one machine:

* :func:`cp_deploy`: ``cp -a TREE NODE/releases/VERSION`` then
  ``ln -sfn`` for each node in turn. Plain copying on one disk, no
  orchestration: the physical limit.
* :func:`ansible_deploy`: ``ansible-playbook`` (the ``ansible`` package from
  PyPI) with N inventory hosts, all ``ansible_connection=local``. The playbook
  (``deploy.yml`` beside this file) creates ``releases``, stages the tree into
  ``releases/VERSION`` with ``ansible.posix.synchronize`` (a local rsync,
  ``archive: true``, ``checksum: false``, and ``compress: false``: the
  module's default ``--compress`` only costs CPU on a local copy; its other
  defaults, ``--delay-updates`` and ``-F``, stay) and switches ``current`` with
  ``ansible.builtin.file state=link force=yes``. It runs with ``forks`` equal to
  the number of nodes, the ``linear`` strategy (``free`` and pipelining measured
  no faster on 2 cores), no fact gathering, and the venv's own Python as the
  interpreter, so no interpreter discovery runs.

Both return wall seconds (``time.perf_counter``) for the deploy alone, then,
outside the timed span, check the result (:func:`verify_deploy`): every
``nodeI/current`` resolves to ``nodeI/releases/VERSION`` and that directory
holds as many files as the tree. Neither flushes nor drops the page cache: a
caller that wants comparable runs should ``os.sync()`` before each.

Ansible lives in its own venv, made by :func:`ensure_ansible`; this module uses
only the standard library so it imports from the project venv. bench/deploy.py
is the benchmark that uses it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "DEFAULT_NODES",
    "DEFAULT_STRATEGY",
    "PLAYBOOK",
    "DeployError",
    "ansible_deploy",
    "count_files",
    "cp_deploy",
    "ensure_ansible",
    "ensure_rsync",
    "verify_deploy",
]

DEFAULT_NODES = 8
DEFAULT_STRATEGY = "linear"
PLAYBOOK = Path(__file__).resolve().with_name("deploy.yml")
SYNCHRONIZE = "ansible.posix.synchronize"
TAIL_LINES = 40


class DeployError(RuntimeError):
    """A reference deploy or its setup failed, or left a wrong result."""


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _run(argv: Sequence[str | Path], what: str, env: dict[str, str] | None = None) -> str:
    """Run ``argv``, return its combined output, raise DeployError on failure."""
    proc = subprocess.run(
        [str(a) for a in argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        raise DeployError(f"{what} failed (exit {proc.returncode}):\n{_tail(proc.stdout)}")
    return str(proc.stdout)


def ensure_rsync() -> Path:
    """Make sure ``rsync`` is on PATH (``synchronize`` needs it); return its path.

    Installs the Debian package with ``apt-get install -y rsync`` when it is
    missing (the bench runs as root), running ``apt-get update`` and trying
    again only if the first install fails.
    """
    found = shutil.which("rsync")
    if found:
        return Path(found)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "rsync"]
    try:
        _run(install, "apt-get install rsync", env=env)
    except DeployError:
        _run(["apt-get", "update", "-q"], "apt-get update", env=env)
        _run(install, "apt-get install rsync", env=env)
    found = shutil.which("rsync")
    if not found:
        raise DeployError("rsync is still not on PATH after apt-get install rsync")
    return Path(found)


def _ansible_env(home: Path) -> dict[str, str]:
    """Environment for ansible commands: no host key checks, no retry files, own home."""
    return {
        **os.environ,
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "True",
    }


def ensure_ansible(venv_dir: Path) -> Path:
    """Make a venv holding the ``ansible`` package; return its ``ansible-playbook``.

    Creates ``venv_dir`` with ``python3 -m venv`` when it has no Python, runs
    ``pip install ansible`` when ``ansible-playbook`` is missing (a minute or
    so), and every time checks that ``ansible-doc`` knows
    ``ansible.posix.synchronize`` (about a second). ``ansible-doc`` exits 0
    even for an unknown module, so the check reads its ``--json`` output. Also
    makes sure ``rsync`` is installed.
    """
    ensure_rsync()
    venv_dir = venv_dir.resolve()
    bindir = venv_dir / "bin"
    python = bindir / "python"
    playbook_bin = bindir / "ansible-playbook"
    if not python.exists():
        _run(["python3", "-m", "venv", venv_dir], f"python3 -m venv {venv_dir}")
    if not playbook_bin.exists():
        _run(
            [python, "-m", "pip", "install", "--quiet", "ansible"],
            f"pip install ansible into {venv_dir}",
        )
    with tempfile.TemporaryDirectory(prefix="ansible-doc-") as home:
        out = _run(
            [bindir / "ansible-doc", "--json", SYNCHRONIZE],
            f"ansible-doc {SYNCHRONIZE}",
            env=_ansible_env(Path(home)),
        )
    try:
        known = SYNCHRONIZE in json.loads(out)
    except json.JSONDecodeError:
        known = False
    if not known:
        raise DeployError(f"{SYNCHRONIZE} is not available in {venv_dir}:\n{_tail(out)}")
    return playbook_bin


def count_files(root: Path) -> int:
    """Count the entries under ``root`` that are not directories (files, symlinks)."""
    total = 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    total += 1
    return total


def verify_deploy(tree: Path, hosts_root: Path, version: str, nodes: int = DEFAULT_NODES) -> None:
    """Check a deploy: each ``nodeI/current`` resolves to ``nodeI/releases/<version>``.

    Also checks that every release directory holds as many files as ``tree``.
    Raises DeployError listing every node that is wrong.
    """
    expected = count_files(tree)
    problems: list[str] = []
    for i in range(1, nodes + 1):
        node_root = hosts_root / f"node{i}"
        release = node_root / "releases" / version
        current = node_root / "current"
        if not current.is_symlink():
            problems.append(f"{current} is not a symlink")
            continue
        if current.resolve() != release.resolve() or not release.is_dir():
            problems.append(f"{current} -> {os.readlink(current)}, not {release}")
            continue
        got = count_files(release)
        if got != expected:
            problems.append(f"{release} holds {got} files, the tree {expected}")
    if problems:
        raise DeployError("deploy check failed:\n" + "\n".join(problems))


def _write_inventory(path: Path, hosts_root: Path, nodes: int, python: Path) -> None:
    lines = ["[nodes]"]
    lines += [
        f"node{i} ansible_connection=local node_root={hosts_root / f'node{i}'}"
        for i in range(1, nodes + 1)
    ]
    lines += ["", "[all:vars]", f"ansible_python_interpreter={python}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def ansible_deploy(
    tree: Path,
    hosts_root: Path,
    version: str,
    nodes: int = DEFAULT_NODES,
    *,
    playbook_bin: Path,
    strategy: str = DEFAULT_STRATEGY,
    rsync_opts: Sequence[str] = (),
    verify: bool = True,
) -> float:
    """Deploy ``tree`` to ``nodes`` local hosts with ansible; return wall seconds.

    Writes an inventory of hosts ``node1``..``nodeN`` (``ansible_connection=local``,
    host var ``node_root=<hosts_root>/nodeI``) and runs ``deploy.yml`` with
    ``forks = nodes`` and the given strategy. ``tree`` must not end in a slash
    (the playbook adds one so rsync copies its contents). ``rsync_opts`` is
    passed to ``synchronize`` as is, e.g. ``["--link-dest=../v1"]`` (a relative
    ``--link-dest`` is taken from the destination directory).

    The time covers the ``ansible-playbook`` process only, start-up included;
    writing the inventory and the check afterwards are not timed. Raises
    DeployError with the tail of ansible's output on a non-zero exit, and, when
    ``verify`` is true, if :func:`verify_deploy` finds the result wrong.
    """
    tree = tree.resolve()
    hosts_root = hosts_root.resolve()
    if not tree.is_dir():
        raise DeployError(f"tree {tree} is not a directory")
    hosts_root.mkdir(parents=True, exist_ok=True)
    playbook_bin = playbook_bin.absolute()  # keep the venv's bin/ even if it is a symlink
    with tempfile.TemporaryDirectory(prefix="ansible-ref-") as tmp:
        work = Path(tmp)
        inventory = work / "inventory.ini"
        _write_inventory(inventory, hosts_root, nodes, playbook_bin.parent / "python")
        extra = work / "extra.json"
        extra.write_text(
            json.dumps(
                {
                    "release_tree": str(tree),
                    "release_version": version,
                    "release_rsync_opts": list(rsync_opts),
                }
            ),
            encoding="utf-8",
        )
        config = work / "ansible.cfg"  # empty: ignore any ansible.cfg found elsewhere
        config.write_text("", encoding="utf-8")
        env = {
            **_ansible_env(work / "home"),
            "ANSIBLE_CONFIG": str(config),
            "ANSIBLE_REMOTE_TEMP": str(work / "remote-tmp"),
            "ANSIBLE_STRATEGY": strategy,
            "ANSIBLE_GATHERING": "explicit",
        }
        argv = [
            str(playbook_bin),
            "-i",
            str(inventory),
            "--forks",
            str(nodes),
            "-e",
            f"@{extra}",
            str(PLAYBOOK),
        ]
        start = time.perf_counter()
        proc = subprocess.run(
            argv,
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise DeployError(
            f"ansible-playbook failed (exit {proc.returncode}):\n{_tail(proc.stdout)}"
        )
    if verify:
        verify_deploy(tree, hosts_root, version, nodes)
    return elapsed


def cp_deploy(
    tree: Path,
    hosts_root: Path,
    version: str,
    nodes: int = DEFAULT_NODES,
    *,
    verify: bool = True,
) -> float:
    """Deploy ``tree`` with ``cp -a`` to each node in turn; return wall seconds.

    For I in 1..nodes: ``mkdir -p <hosts_root>/nodeI/releases``,
    ``cp -a TREE <hosts_root>/nodeI/releases/<version>`` and
    ``ln -sfn <that release> <hosts_root>/nodeI/current``. The release
    directory must not exist yet (``cp -a`` would copy the tree into it rather
    than as it). The check afterwards is not timed.
    """
    tree = tree.resolve()
    hosts_root = hosts_root.resolve()
    if not tree.is_dir():
        raise DeployError(f"tree {tree} is not a directory")
    releases = [hosts_root / f"node{i}" / "releases" / version for i in range(1, nodes + 1)]
    existing = [str(r) for r in releases if r.exists()]
    if existing:
        raise DeployError("release directories already exist: " + ", ".join(existing))
    start = time.perf_counter()
    for release in releases:
        release.parent.mkdir(parents=True, exist_ok=True)
        _run(["cp", "-a", tree, release], f"cp -a {tree} {release}")
        _run(["ln", "-sfn", release, release.parent.parent / "current"], "ln -sfn")
    elapsed = time.perf_counter() - start
    if verify:
        verify_deploy(tree, hosts_root, version, nodes)
    return elapsed
