"""LocalFleet: a control plane and N agents as separate processes in one directory."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from knightwatch.client import ApiClient, ServerTarget
from knightwatch.errors import InvalidInputError, KnightwatchError
from knightwatch.hosting.configfiles import (
    AGENT_CONFIG_ENV,
    AGENT_ENV_PREFIX,
    CONFIG_DIR_ENV,
    SERVER_CONFIG_ENV,
)
from knightwatch.localfleet.fleetfile import read_fleet_file, write_fleet_file
from knightwatch.localfleet.ports import claim_port, release_ports
from knightwatch.localfleet.processes import (
    FleetProcess,
    alive,
    kill_strays,
    stop_process,
)
from knightwatch.polling import wait_until
from knightwatch.push import push_release
from knightwatch.tlsca import client_context, create_local_ca
from knightwatch.vocabulary import TERMINAL_STATES

__all__ = ["FleetError", "LocalFleet"]


class FleetError(KnightwatchError):
    """A local fleet process did not start or did not reach the expected state."""


class LocalFleet:
    """A control plane and ``nodes`` agents on this machine, each a real process."""

    def __init__(
        self,
        directory: Path,
        nodes: int = 3,
        *,
        trust: Sequence[Path] = (),
        database_url: str | None = None,
        port: int | None = None,
        server_env: Mapping[str, str] | None = None,
        agent_args: Sequence[str] = (),
        agent_env: Mapping[str, str] | None = None,
        tls: bool = True,
    ) -> None:
        self.directory = directory.resolve()
        self.names = [f"node{i}" for i in range(1, nodes + 1)]
        self.port = port or claim_port(self.directory)
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._trust = [Path(p).resolve() for p in trust]
        self._database_url = database_url
        # A local fleet runs the solo approval policy unless told otherwise: one person
        # trying things on a laptop is not a change board (`fleet up` says so).
        self._server_env = {"KNIGHTWATCH_APPROVALS": "solo", **(server_env or {})}
        self._agent_args = list(agent_args)
        self._agent_env = dict(agent_env or {})  # services inherit their agent's environment
        self._service_ports = {name: claim_port(self.directory) for name in self.names}
        self._server: FleetProcess | None = None
        self._agents: dict[str, FleetProcess] = {}
        self._client: ApiClient | None = None

    @classmethod
    def attach(cls, directory: Path) -> LocalFleet:
        """The fleet ``up`` started in ``directory`` (from its fleet.json), to manage its pieces."""
        data = read_fleet_file(directory)
        options = data["options"]
        fleet = cls(
            Path(data["directory"]),
            0,
            trust=[Path(p) for p in options["trust"]],
            database_url=options.get("database_url"),
            port=int(options["port"]),
            server_env=options.get("server_env") or {},
            agent_args=options.get("agent_args") or [],
            agent_env=options.get("agent_env") or {},
            tls=bool(options["tls"]),
        )
        fleet.names = list(data["nodes"])
        fleet._service_ports = {k: int(v) for k, v in options["service_ports"].items()}
        return fleet

    @property
    def trust(self) -> list[Path]:
        """The release keys the server and every agent trust."""
        return list(self._trust)

    @property
    def ca(self) -> Path | None:
        """The CA certificate clients pin (None for a plain-HTTP fleet)."""
        return self.directory / "tls" / "ca.pem" if self.tls else None

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an HTTP client of this fleet passes as ``verify``: the pinned CA."""
        return client_context(self.ca)

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """An SSL context pinning the fleet's CA (None for plain HTTP): for WebSocket clients."""
        return ssl.create_default_context(cafile=str(self.ca)) if self.ca else None

    # -- lifecycle ------------------------------------------------------------

    def __enter__(self) -> LocalFleet:
        return self.up()

    def __exit__(self, *_exc: object) -> None:
        self.down()

    def up(self, *, timeout: float = 60.0) -> LocalFleet:
        """Start the server, enroll and start every agent, wait until all are connected."""
        for sub in ("logs", "pids", "nodes"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self.start_server(timeout=timeout)
        for name in self.names:
            self.start_agent(name, join=self.enroll(name))
        self.wait_connected(self.names, timeout=timeout)
        self._write_fleet_file()
        return self

    def down(self) -> None:
        """Stop every agent (which stops its service), then the server; kill stragglers."""
        for name in list(self._agents):
            self.stop_agent(name)
        if self._client is not None:  # first: the server need not wait for its connection
            self._client.close()
            self._client = None
        self.stop_server()
        kill_strays(self.directory)
        release_ports(self.directory)

    # -- the server -----------------------------------------------------------

    def start_server(self, *, timeout: float = 60.0, env: Mapping[str, str] | None = None) -> None:
        """Start ``knightwatch server`` (its first admin made once) and wait for /healthz."""
        self._initialize()
        args = ["server", "--data", str(self.directory / "server"), "--port", str(self.port)]
        for key in self._trust:
            args += ["--trust", str(key)]
        if self._database_url:
            args += ["--db", self._database_url]
        if self.tls:
            made = create_local_ca(self.directory / "tls")
            args += ["--tls-cert", str(made.server_cert), "--tls-key", str(made.server_key)]
        merged = {**self._server_env, **(env or {})}
        self._server = self._spawn("server", args, merged)
        wait_until(self._healthy, timeout=timeout, what="the control plane to answer")

    @property
    def server_pid(self) -> int:
        """The running server's process id (FleetError if it is not running)."""
        if self._server is None or self._server.process.poll() is not None:
            raise FleetError("the control plane of this fleet is not running")
        return self._server.process.pid

    def stop_server(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the server with ``sig`` (SIGKILL simulates a crash); return its exit status."""
        if self._server is None:
            return None
        status = stop_process(self._server, sig)
        self._server = None
        return status

    def server_exit_status(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` for the server to exit by itself; return its status."""
        if self._server is None:
            return None
        try:
            return self._server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def forget_server(self) -> None:
        """Drop the handle of a server that exited by itself."""
        self._server = None

    @property
    def approvals(self) -> str:
        """The approval policy the fleet's control plane runs ("solo", "standard", or JSON)."""
        return self._server_env["KNIGHTWATCH_APPROVALS"]

    @property
    def token_file(self) -> Path:
        """Where the fleet's first admin's token is (``knightwatch init --token-file``)."""
        return self.directory / "admin.token"

    @property
    def token(self) -> str:
        """The token of the fleet's first admin, ``admin``."""
        return self.token_file.read_text().strip()

    @property
    def client(self) -> ApiClient:
        """An operator API client for this fleet."""
        if self._client is None:
            ca = str(self.ca) if self.ca else None
            self._client = ApiClient(ServerTarget(self.url, self.token, ca), timeout=300.0)
        return self._client

    # -- agents ---------------------------------------------------------------

    def enroll(self, name: str, group: str = "default") -> str:
        """Return a fresh join token for ``name`` (a new node joins ``group``)."""
        return str(self.client.post(f"/nodes/{name}/enroll", {"group": group})["token"])

    def root(self, name: str) -> Path:
        """The root directory of node ``name``."""
        return self.directory / "nodes" / name

    def service_port(self, name: str) -> int:
        """The TCP port node ``name``'s service listens on."""
        return self._service_ports[name]

    def start_agent(
        self,
        name: str,
        join: str | None = None,
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        server: str | None = None,
    ) -> None:
        """Start the agent of node ``name`` (enrolling with ``join`` if given, extra ``env``).

        ``server`` points the agent elsewhere than the control plane (a proxy in front of it).
        """
        args = [
            "agent",
            "--server",
            server or self.url,
            "--root",
            str(self.root(name)),
            "--name",
            name,
            "--service-port",
            str(self._service_ports[name]),
            *self._agent_args,
            *extra,
        ]
        for key in self._trust:
            args += ["--trust", str(key)]
        if self.ca is not None and "--ca" not in extra:
            args += ["--ca", str(self.ca)]
        if join:
            args += ["--join", join]
        self._agents[name] = self._spawn(name, args, {**self._agent_env, **(env or {})})

    def stop_agent(self, name: str, sig: int = signal.SIGTERM) -> int | None:
        """Stop node ``name``'s agent with ``sig`` (SIGKILL leaves its service running)."""
        agent = self._agents.pop(name, None)
        return stop_process(agent, sig) if agent else None

    def agent_pid(self, name: str) -> int:
        """The pid of node ``name``'s agent."""
        return self._agents[name].process.pid

    # -- one piece at a time, from another process (fleet stop|start|restart) ----------

    def pieces(self) -> list[str]:
        """The names of the fleet's processes: ``server`` and every node."""
        return ["server", *self.names]

    def running_pid(self, piece: str) -> int | None:
        """The pid of ``piece`` (``server`` or a node) from its pid file, if it is alive."""
        self._known(piece)
        try:
            pid = int((self.directory / "pids" / f"{piece}.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def stop_piece(self, piece: str, grace: float = 15.0) -> bool:
        """SIGTERM ``piece`` by its pid file (SIGKILL after ``grace``); False if not running."""
        pid = self.running_pid(piece)
        (self.directory / "pids" / f"{piece}.pid").unlink(missing_ok=True)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.1)
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        return True

    def start_piece(self, piece: str, *, timeout: float = 60.0) -> int:
        """Start ``piece`` again with the options ``up`` used; wait until it serves; its pid."""
        if (pid := self.running_pid(piece)) is not None:
            raise InvalidInputError(
                f"{piece} is already running (pid {pid})",
                hint=f"restart it instead: knightwatch fleet restart {piece}",
            )
        if piece == "server":
            self.start_server(timeout=timeout)
        else:
            self.start_agent(piece)
            self.wait_connected([piece], timeout=timeout)
        return self.running_pid(piece) or 0

    def _known(self, piece: str) -> None:
        if piece not in self.pieces():
            raise InvalidInputError(
                f"this fleet has no node {piece!r}",
                hint=f"its pieces are: {', '.join(self.pieces())}",
            )

    # -- operations -------------------------------------------------------------

    def push(self, store: Path, release: str) -> dict[str, Any]:
        """Upload a built release from a local bundle store."""
        return push_release(self.client, store, release).to_json()

    def deploy(
        self, release: str, *, wait: bool = True, timeout: float = 300.0, **options: Any
    ) -> dict[str, Any]:
        """Start a deployment; with ``wait``, return it once it reached a terminal state."""
        started: dict[str, Any] = self.client.post("/deployments", {"release": release, **options})
        if started.get("pending"):
            raise FleetError(
                f"the deploy of {release} is change {started['change']['id']}, awaiting approval",
                hint="this fleet runs the standard approval policy: approve it, then execute it",
            )
        return self.wait_deployment(started["id"], timeout=timeout) if wait else started

    def wait_deployment(self, deployment_id: int, *, timeout: float = 300.0) -> dict[str, Any]:
        """Wait until deployment ``deployment_id`` is terminal and return it."""

        def done() -> dict[str, Any] | None:  # a long poll: the server waits for the end
            data: dict[str, Any] = self.client.get(f"/deployments/{deployment_id}?wait_s=5")
            return data if data["state"] in TERMINAL_STATES else None

        return wait_until(
            done, timeout=timeout, what=f"deployment {deployment_id} to end", interval=0.01
        )

    def status(self) -> dict[str, Any]:
        """The fleet status as the operator API reports it."""
        result: dict[str, Any] = self.client.get("/status")
        return result

    def wait_connected(self, names: Sequence[str], *, timeout: float = 60.0) -> None:
        """Wait until every node in ``names`` is connected and has reported."""

        def connected() -> bool:
            nodes = {n["name"]: n for n in self.status()["nodes"]}
            return all(
                nodes.get(name, {}).get("connected")
                and nodes[name].get("last_report_age_s") is not None
                for name in names
            )

        wait_until(connected, timeout=timeout, what=f"{', '.join(names)} to connect", interval=0.1)

    def wait_state(self, state: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the fleet status is ``state`` and return the status."""

        def reached() -> dict[str, Any] | None:
            data = self.status()
            return data if data["state"] == state else None

        return wait_until(reached, timeout=timeout, what=f"the fleet to be {state}", interval=0.1)

    # -- plumbing ---------------------------------------------------------------

    def _initialize(self) -> None:
        """``knightwatch init`` once, as a user would: the admin's token goes to a file."""
        if self.token_file.exists():
            return
        args = ["init", "--data", str(self.directory / "server"), "--token-file"]
        args += [str(self.token_file), "--json"]
        if self._database_url:
            args += ["--db", self._database_url]
        done = subprocess.run(
            [sys.executable, "-m", "knightwatch", *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env={**self._host_environ(), **self._server_env},
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise FleetError(f"knightwatch init failed: {done.stderr.strip() or done.stdout}")

    def _host_environ(self) -> dict[str, str]:
        """This process's environment without the host's knightwatch settings files.

        A local fleet on a host that runs knightwatch for real must not pick up
        /etc/knightwatch/*.toml (its database, its server URL): its pieces read
        DIR/etc/ instead, and inherit no ``KNIGHTWATCH_AGENT_*`` variable.
        """
        inherited = {
            key: value
            for key, value in os.environ.items()
            if key not in (SERVER_CONFIG_ENV, AGENT_CONFIG_ENV)
            and not key.startswith(AGENT_ENV_PREFIX)
        }
        return {**inherited, CONFIG_DIR_ENV: str(self.directory / "etc")}

    def _spawn(self, name: str, args: list[str], env: Mapping[str, str]) -> FleetProcess:
        log = self.directory / "logs" / f"{name}.log"
        handle = log.open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "knightwatch", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**self._host_environ(), **env},
        )
        handle.close()
        (self.directory / "pids" / f"{name}.pid").write_text(f"{process.pid}\n")
        return FleetProcess(name, process, log)

    def _healthy(self) -> bool:
        if self._server is not None and self._server.process.poll() is not None:
            tail = self._server.log.read_text(errors="replace")[-2000:]
            raise FleetError(
                f"the control plane exited with {self._server.process.returncode}:\n{tail}"
            )
        try:
            with contextlib.ExitStack() as stack:
                conn = stack.enter_context(
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
                )
                if self.ssl_context is not None:
                    conn = stack.enter_context(
                        self.ssl_context.wrap_socket(conn, server_hostname="127.0.0.1")
                    )
                conn.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                return b"200" in conn.recv(64)
        except OSError:
            return False

    def _write_fleet_file(self) -> None:
        data = {
            "server": self.url,
            "token": self.token,
            "nodes": self.names,
            "directory": str(self.directory),
            "ca": str(self.ca) if self.ca else None,
            "options": {
                "port": self.port,
                "tls": self.tls,
                "trust": [str(p) for p in self._trust],
                "database_url": self._database_url,
                "server_env": self._server_env,
                "agent_args": self._agent_args,
                "agent_env": self._agent_env,
                "service_ports": self._service_ports,
            },
        }
        write_fleet_file(self.directory, data)
