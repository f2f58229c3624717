"""Fixtures for integration tests: real releases, real control planes, real agents.

Every fleet here is a :class:`knightwatch.localfleet.LocalFleet` — a control
plane and N agent processes, each agent supervising the SMARS example
service on its own port — with short server timeouts so that a failure is
detected in seconds. Tests check what is really on each node: the
``current`` symlink on disk, the live service process and its working
directory, and what the service itself answers on ``/version``.

PostgreSQL runs when ``KNIGHTWATCH_TEST_DATABASE_URL`` is set (for example
``postgresql+psycopg://postgres@127.0.0.1:5432/test``); each fleet then gets
a fresh schema ``kw_<hex>``, selected through libpq's ``options`` in the URL
and dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from knightwatch.bundle import BuildResult, SigningKey, build_release, load_signing_key
from knightwatch.localfleet import LocalFleet
from knightwatch.testing import WaitTimedOutError, wait_until
from tests.agent.network_faults import FlakyLink
from tests.databases import PG_ENV, postgresql_schema
from tests.helpers import EXAMPLE

BUILD_ENV = {"SOURCE_DATE_EPOCH": "1343826000"}
SERVER_ENV = {
    "KNIGHTWATCH_PREPARE_TIMEOUT_S": "30",
    "KNIGHTWATCH_COMMIT_TIMEOUT_S": "30",
    "KNIGHTWATCH_ROLLBACK_TIMEOUT_S": "30",
    "KNIGHTWATCH_CANARY_SOAK_S": "1",
}
# A new service has 20 s to turn healthy: short enough that the tests of broken releases
# stay quick, long enough that a loaded 2-core machine does not fail a healthy one.
AGENT_ARGS = ("--health-timeout", "20")
SETTLE_S = 60.0  # generous: the machine is shared; nothing here measures speed


@dataclass(frozen=True)
class Releases:
    """The releases every integration test deploys, built once per session."""

    store: Path
    public_key: Path
    v1: BuildResult
    v2: BuildResult
    broken: BuildResult
    untrusted_store: Path
    untrusted: BuildResult


def _smars_copy(target: Path, version: str) -> Path:
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    spec = target / "knightwatch.toml"
    spec.write_text(spec.read_text().replace('version = "2012.8.1"', f'version = "{version}"', 1))
    return target


def smars_variant(target: Path, version: str, *, launcher: str | None = None) -> Path:
    """A copy of examples/smars at ``version``, with its own ``bin/smars-router`` if given."""
    source = _smars_copy(target, version)
    if launcher is not None:
        path = source / "bin" / "smars-router"
        path.write_text(launcher)
        path.chmod(0o755)
    return source


@pytest.fixture(scope="session")
def releases(
    tmp_path_factory: pytest.TempPathFactory, key_dir: Path, signing_key: SigningKey
) -> Releases:
    """v1 (examples/smars), v2 (one file changed), broken (health 404), one untrusted."""
    work = tmp_path_factory.mktemp("releases")
    store = work / "store"
    v1 = build_release(EXAMPLE, store, signing_key, environ=BUILD_ENV)

    v2_source = _smars_copy(work / "v2", "2012.8.2")
    routing = v2_source / "config" / "routing.toml"
    routing.write_text(routing.read_text().replace('"BATS"]', '"BATS", "EDGX"]'))
    v2 = build_release(v2_source, store, signing_key, environ=BUILD_ENV)

    broken_source = _smars_copy(work / "broken", "2012.8.3")
    spec = broken_source / "knightwatch.toml"
    text, count = re.subn(
        r"(health = \{ http = \"[^\"]*?)/health\"", r'\1/no-such-page"', spec.read_text()
    )
    assert count == 1, "the example's health check changed; update this fixture"
    spec.write_text(text)
    broken = build_release(broken_source, store, signing_key, environ=BUILD_ENV)

    other_source = _smars_copy(work / "other", "2012.8.9")
    untrusted_store = work / "untrusted-store"
    other_key = load_signing_key(key_dir / "other.key")
    untrusted = build_release(other_source, untrusted_store, other_key, environ=BUILD_ENV)
    return Releases(store, key_dir / "release.pub", v1, v2, broken, untrusted_store, untrusted)


# -- fleets ----------------------------------------------------------------------------------


def make_fleet(
    directory: Path,
    releases: Releases,
    *,
    nodes: int = 2,
    database_url: str | None = None,
    server_env: dict[str, str] | None = None,
    agent_args: tuple[str, ...] = (),
) -> LocalFleet:
    """A fleet trusting the test signing key, with short timeouts (not started yet)."""
    return LocalFleet(
        directory,
        nodes=nodes,
        trust=[releases.public_key],
        database_url=database_url,
        server_env={**SERVER_ENV, **(server_env or {})},
        agent_args=(*AGENT_ARGS, *agent_args),
    )


@contextlib.contextmanager
def approvals_fleet(directory: Path, releases: Releases, *, nodes: int) -> Iterator[LocalFleet]:
    """A started fleet under the standard approval policy, v1 and v2 pushed, nothing deployed."""
    with make_fleet(
        directory, releases, nodes=nodes, server_env={"KNIGHTWATCH_APPROVALS": "standard"}
    ) as local:
        local.push(releases.store, releases.v1.release_id)
        local.push(releases.store, releases.v2.release_id)
        yield local


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None (SQLite in the server's data directory), then a fresh PostgreSQL schema URL."""
    if request.param == "sqlite":
        yield None
        return
    base_url = os.environ.get(PG_ENV)
    if not base_url:
        pytest.skip(f"set {PG_ENV} to run the PostgreSQL variant")
    with postgresql_schema(base_url) as (_schema, url):
        yield url


# -- what is really on the nodes -----------------------------------------------------------


def current_digest(fleet: LocalFleet, name: str) -> str | None:
    """The digest node ``name``'s ``current`` symlink points at on disk, or None."""
    try:
        target = os.readlink(fleet.root(name) / "current")
    except FileNotFoundError:
        return None
    return target.removeprefix("releases/")


def fleet_digests(fleet: LocalFleet) -> dict[str, str | None]:
    """Every node's ``current`` on disk."""
    return {name: current_digest(fleet, name) for name in fleet.names}


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[1][0] not in "ZX"


def processes_under(directory: Path) -> list[int]:
    """Live processes whose working directory lies under ``directory`` (a node's releases)."""
    root = os.path.realpath(directory) + "/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if (cwd + "/").startswith(root) and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def node_problems(
    fleet: LocalFleet, name: str, digest: str, release_id: str, status: dict[str, Any]
) -> list[str]:
    """What differs on node ``name`` from "runs release ``digest``, healthy" (empty if none)."""
    problems = []
    root = fleet.root(name)
    release_dir = root / "releases" / digest
    if (found := current_digest(fleet, name)) != digest:
        problems.append(f"{name}: current -> {found}, expected {digest[:12]}")
    if not release_dir.is_dir():
        problems.append(f"{name}: {release_dir} is not a directory")
    node = next((n for n in status["nodes"] if n["name"] == name), None)
    if node is None:
        return [*problems, f"{name}: not in the fleet status"]
    if not node["connected"]:
        problems.append(f"{name}: not connected")
    if node["active_digest"] != digest:
        problems.append(f"{name}: reports active {node['active_digest']}")
    if node["service_state"] != "running":
        problems.append(f"{name}: service is {node['service_state']} ({node['service_detail']})")
    pid = node["service_pid"]
    if pid is None or not pid_alive(pid):
        problems.append(f"{name}: service pid {pid} is not alive")
    else:
        cwd = os.path.realpath(f"/proc/{pid}/cwd")
        if not (cwd + "/").startswith(os.path.realpath(release_dir) + "/"):
            problems.append(f"{name}: service pid {pid} runs in {cwd}")
    running = processes_under(root / "releases")
    if running != [pid]:  # no stale copy of any release still in memory (P2)
        problems.append(f"{name}: processes running from its releases: {running}, not [{pid}]")
    try:
        answer = httpx.get(
            f"http://127.0.0.1:{fleet.service_port(name)}/version", timeout=5.0, trust_env=False
        )
        if answer.text.strip() != release_id:
            problems.append(f"{name}: /version says {answer.text.strip()!r}")
    except httpx.HTTPError as exc:
        problems.append(f"{name}: GET /version failed: {exc!r}")
    return problems


def assert_fleet_on(fleet: LocalFleet, digest: str, *, timeout: float = SETTLE_S) -> None:
    """Every node runs release ``digest``: on disk, in its process, in its answers, in status."""
    release_id = fleet.client.get(f"/releases/{digest}")["release_id"]
    last: list[str] = []

    def check() -> bool:
        status = fleet.status()
        last[:] = [
            p for n in fleet.names for p in node_problems(fleet, n, digest, release_id, status)
        ]
        return not last

    with contextlib.suppress(Exception):
        wait_until(check, timeout=timeout, what=f"every node on {release_id}", interval=0.2)
    assert not last, "\n".join(last)


def wait_idle(fleet: LocalFleet, *, timeout: float = SETTLE_S) -> dict[str, Any]:
    """Wait until no deployment is active (catch-ups included); return the fleet status."""

    def idle() -> dict[str, Any] | None:
        status = fleet.status()
        return status if status["deployment_id"] is None else None

    return wait_until(idle, timeout=timeout, what="no active deployment", interval=0.2)


def deploy_ok(fleet: LocalFleet, release: BuildResult, **options: Any) -> dict[str, Any]:
    """Deploy ``release`` and insist it SUCCEEDED."""
    done = fleet.deploy(release.release_id, timeout=180, **options)
    assert done["state"] == "SUCCEEDED", done
    return done


def converge_on(fleet: LocalFleet, release: BuildResult) -> None:
    """Bring the whole fleet to ``release`` (deploying only if it is not there already)."""
    wait_idle(fleet)
    status = fleet.status()
    if status["state"] != "CONVERGED" or status["desired_release"] != release.release_id:
        deploy_ok(fleet, release)
    fleet.wait_state("CONVERGED", timeout=SETTLE_S)
    assert_fleet_on(fleet, release.digest)


def kw(fleet: LocalFleet, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``knightwatch ARGS`` against the fleet, as its admin (or ``token``'s user) would."""
    env = {
        **os.environ,
        "KNIGHTWATCH_SERVER": fleet.url,
        "KNIGHTWATCH_TOKEN": token or fleet.token,
        "KNIGHTWATCH_CA": str(fleet.ca or ""),
        "COLUMNS": "250",
    }
    return subprocess.run(
        [str(Path(sys.executable).with_name("knightwatch")), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def add_user(fleet: LocalFleet, name: str, role: str) -> str:
    """Add user ``name`` with ``role`` as the fleet's admin; return its token."""
    return str(fleet.client.post("/users", {"name": name, "role": role})["token"])


def events(deployment: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The recorded transitions of a deployment as (event, node) pairs, in order."""
    return [(e["event"], e["node"]) for e in deployment["events"]]


def wait_explained(
    fleet: LocalFleet,
    check: Callable[[], object],
    what: str,
    *,
    logs: tuple[str, ...],
    timeout: float = SETTLE_S,
) -> None:
    """Wait until ``check`` is truthy; on timeout fail with the tails of ``logs``."""
    try:
        wait_until(check, timeout=timeout, what=what, interval=0.1)
    except WaitTimedOutError as exc:
        tails = "\n".join(f"--- {name}.log\n{log_tail(fleet, name)}" for name in logs)
        raise AssertionError(f"{exc}\n{tails}") from None


def log_tail(fleet: LocalFleet, name: str, lines: int = 40) -> str:
    """The last lines of a fleet process's log, for assertion messages."""
    path = fleet.directory / "logs" / f"{name}.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


class Link:
    """A :class:`FlakyLink` relay that can be cut (connections dropped, new ones refused)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._relay: FlakyLink | None = FlakyLink(upstream_port).__enter__()
        self.port, self.url = self._relay.port, self._relay.url

    def url_for(self, fleet: LocalFleet) -> str:
        """The relay's URL in the fleet's scheme (TLS passes through the relay untouched)."""
        return self.url.replace("http://", "https://") if fleet.tls else self.url

    def cut(self) -> None:
        """Drop every relayed connection and stop listening."""
        if self._relay is not None:
            self._relay.__exit__(None, None, None)
            self._relay = None

    def stall(self) -> None:
        """Keep every connection open but let no byte through (a silently dead link)."""
        assert self._relay is not None
        self._relay.stall()

    def restore(self) -> None:
        """Listen again on the same port (a stalled link is cut first)."""
        if self._relay is not None and self._relay._stalled.is_set():
            self.cut()
        if self._relay is None:
            relay = FlakyLink(self.upstream_port)
            relay.port, relay.url = self.port, self.url
            self._relay = relay.__enter__()
