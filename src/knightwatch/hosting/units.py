"""The systemd units of the server and the agent: rendered from templates, written atomically.

The templates (``templates/knightwatch-server.service`` and
``templates/knightwatch-agent.service``) ship inside the package; a unit is one
of them with the operator's paths and options filled in. Every input is
checked before anything is written (absolute paths, an executable that
exists, names systemd and knightwatch accept), and a unit file appears
whole or not at all (a temporary file, fsync, rename).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from knightwatch.errors import InvalidInputError

__all__ = [
    "AGENT_UNIT",
    "SERVER_UNIT",
    "SERVICE_CAPABILITIES",
    "SYSTEMD_DIR",
    "AgentUnit",
    "ServerUnit",
    "absolute",
    "executable",
    "write_unit",
]

SERVER_UNIT = "knightwatch-server.service"
AGENT_UNIT = "knightwatch-agent.service"
SYSTEMD_DIR = Path("/etc/systemd/system")
"""Where an administrator's own units go (they win over the packaged ones in /usr/lib)."""
STATE_ROOT = Path("/var/lib")
HOMES = (Path("/home"), Path("/root"), Path("/run/user"))
"""What ``ProtectHome=yes`` hides: a path the unit needs there gets ``read-only`` instead."""
PRIVILEGED_PORTS = 1024
SERVICE_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETGID",
    "CAP_SETUID",
)
"""The agent unit's default capabilities: none is the agent's own need (it runs as root and
touches only its root and its cgroups); they let the service it supervises bind a port below
1024, drop to another user and own its files. ``--capabilities none`` keeps none."""
KNOWN_CAPABILITIES = frozenset(
    "CAP_" + name
    for name in [
        "AUDIT_CONTROL",
        "AUDIT_READ",
        "AUDIT_WRITE",
        "BLOCK_SUSPEND",
        "BPF",
        "CHECKPOINT_RESTORE",
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "IPC_LOCK",
        "IPC_OWNER",
        "KILL",
        "LEASE",
        "LINUX_IMMUTABLE",
        "MAC_ADMIN",
        "MAC_OVERRIDE",
        "MKNOD",
        "NET_ADMIN",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_RAW",
        "PERFMON",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_CHROOT",
        "SYS_MODULE",
        "SYS_NICE",
        "SYS_PACCT",
        "SYS_PTRACE",
        "SYS_RAWIO",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "SYSLOG",
        "WAKE_ALARM",
    ]
)
_SAFE_ARG = re.compile(r"^[A-Za-z0-9_./:@+=,-]+$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")


@dataclass(frozen=True)
class ServerUnit:
    """What ``knightwatch-server.service`` runs: where, as whom, with which options."""

    executable: Path
    data_dir: Path = STATE_ROOT / "knightwatch"
    config: Path | None = None
    user: str | None = None
    """None runs the server as a transient user of its own (``DynamicUser=yes``)."""
    group: str | None = None
    host: str | None = None
    port: int | None = None

    def render(self) -> str:
        """The unit file's text (the inputs are checked first)."""
        self._check()
        args = [str(self.executable), "server", "--data", str(self.data_dir)]
        args += _option("--config", self.config)
        args += _option("--host", self.host) + _option("--port", self.port)
        privileged = self.port is not None and self.port < PRIVILEGED_PORTS
        capabilities = "CAP_NET_BIND_SERVICE" if privileged else ""
        return _template(SERVER_UNIT).format(
            config_file=self.config or "/etc/knightwatch/server.toml",
            exec_start=_command(args),
            identity=self._identity(),
            writable=self._writable(),
            protect_home=_protect_home(self.executable, self.data_dir, self.config),
            capabilities=capabilities,
            private_users="# PrivateUsers: off, it would void CAP_NET_BIND_SERVICE"
            if privileged
            else "PrivateUsers=yes",
        )

    def _identity(self) -> str:
        if self.user is None:
            return "DynamicUser=yes"
        return f"User={self.user}\nGroup={self.group or self.user}"

    def _writable(self) -> str:
        state = _state_directory(self.data_dir, "0700")
        return (
            state if state.startswith("State") else f"ReadWritePaths={_quoted(str(self.data_dir))}"
        )

    def _check(self) -> None:
        absolute("--data", self.data_dir)
        if self.config is not None:
            absolute("--config", self.config)
        for flag, name in (("--user", self.user), ("--group", self.group)):
            if name is not None and not _USER.fullmatch(name):
                raise InvalidInputError(
                    f"{flag} {name!r} is not a user or group name",
                    hint="a-z 0-9 _ -, starting with a letter or _, at most 31 characters",
                )
        if self.group is not None and self.user is None:
            raise InvalidInputError(
                "--group needs --user (without it the server runs as a user of its own)"
            )
        if self.user is None and _under(self.data_dir, STATE_ROOT) is None:
            raise InvalidInputError(
                f"--data {self.data_dir} is outside /var/lib: a server without --user runs as "
                "a transient user that can only own a directory under /var/lib",
                hint="give --user (and create that user), or keep --data under /var/lib",
            )
        if self.port is not None and not 1 <= self.port <= 65535:
            raise InvalidInputError(f"--port {self.port} is not a TCP port")
        if self.host is not None and not _SAFE_ARG.fullmatch(self.host):
            raise InvalidInputError(f"--host {self.host!r} is not an address")


@dataclass(frozen=True)
class AgentUnit:
    """What ``knightwatch-agent.service`` runs: the agent's root and its options."""

    executable: Path
    root: Path
    server: str | None = None
    """None leaves the control plane's URL to the configuration file."""
    name: str | None = None
    """None leaves the node's name to the configuration file."""
    config: Path | None = None
    ca: Path | None = None
    join_file: Path | None = None
    trust: tuple[Path, ...] = ()
    trust_fingerprints: tuple[str, ...] = ()
    cgroup_mount: Path | None = None
    capabilities: tuple[str, ...] = SERVICE_CAPABILITIES
    """The capability bounding set of the agent and so of its service (empty: none)."""

    def render(self) -> str:
        """The unit file's text (the inputs are checked first)."""
        self._check()
        args = [str(self.executable), "agent", "--root", str(self.root)]
        args += _option("--server", self.server)
        args += _option("--name", self.name)
        args += _option("--config", self.config) + _option("--ca", self.ca)
        args += _option("--join-file", self.join_file)
        for key in self.trust:
            args += ["--trust", str(key)]
        for fingerprint in self.trust_fingerprints:
            args += ["--trust-fingerprint", fingerprint]
        args += _option("--cgroup-mount", self.cgroup_mount)
        writable = [self.root]
        if self.cgroup_mount is not None and _under(self.cgroup_mount, Path("/sys")) is None:
            writable.append(self.cgroup_mount)
        paths = (self.executable, self.root, self.config, self.ca, self.join_file, *self.trust)
        return _template(AGENT_UNIT).format(
            config_file=self.config or "/etc/knightwatch/agent.toml",
            exec_start=_command(args),
            cgroup_mount=self.cgroup_mount or "/sys/fs/cgroup",
            writable=" ".join(_quoted(str(path)) for path in writable),
            state=_state_directory(self.root, "0755"),
            capabilities=" ".join(self.capabilities),
            protect_home=_protect_home(*paths),
        )

    def _check(self) -> None:
        absolute("--root", self.root)
        if self.root == Path("/"):
            raise InvalidInputError("--root / would make the whole system writable")
        for flag, path in (
            ("--config", self.config),
            ("--ca", self.ca),
            ("--join-file", self.join_file),
            ("--cgroup-mount", self.cgroup_mount),
            *(("--trust", key) for key in self.trust),
        ):
            if path is not None:
                absolute(flag, path)
        for capability in self.capabilities:
            if capability not in KNOWN_CAPABILITIES:
                raise InvalidInputError(
                    f"--capabilities: {capability!r} is not a Linux capability",
                    hint="e.g. --capabilities CAP_NET_BIND_SERVICE,CAP_KILL, or none",
                )
        if self.server is not None and not re.fullmatch(r"https?://[^\s\"'\\]+", self.server):
            raise InvalidInputError(
                f"--server {self.server!r} is not an http:// or https:// URL",
                hint="e.g. --server https://cp.example:7400",
            )


def absolute(flag: str, path: Path) -> Path:
    """``path`` if it is absolute and printable; a unit cannot use anything else."""
    text = str(path)
    if not path.is_absolute():
        raise InvalidInputError(
            f"{flag} {text} is not an absolute path",
            hint=f"a unit runs from /; give the full path, e.g. {flag} {Path.cwd() / path}",
        )
    if any(ch in text for ch in "\n\r\t\\") or not text.isprintable():
        raise InvalidInputError(f"{flag} {text!r} holds characters a unit cannot carry")
    return path


def executable(path: Path) -> Path:
    """``path`` if it is an absolute path to an executable file (``--executable``)."""
    absolute("--executable", path)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise InvalidInputError(
            f"--executable {path} is not an executable file",
            hint="give the knightwatch command the unit runs, e.g. --executable "
            "/usr/local/bin/knightwatch",
        )
    return path


def write_unit(directory: Path, filename: str, text: str) -> Path:
    """Write ``directory/filename`` atomically (temporary file, fsync, rename); its path."""
    directory = directory.absolute()
    if not directory.is_dir():
        raise InvalidInputError(f"--output-dir {directory} is not a directory")
    target = directory / filename
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{filename}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), 0o644)
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
    return target


def _template(filename: str) -> str:
    return resources.files("knightwatch.hosting").joinpath("templates", filename).read_text("utf-8")


def _option(flag: str, value: object) -> list[str]:
    return [] if value is None else [flag, str(value)]


def _command(args: list[str]) -> str:
    """A command line as systemd parses ``ExecStart=``."""
    return " ".join(_quoted(arg) for arg in args)


def _quoted(arg: str) -> str:
    """One word for systemd: quoted when needed, ``%`` and ``$`` escaped."""
    if not _SAFE_ARG.fullmatch(arg):
        arg = '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg.replace("%", "%%").replace("$", "$$")


def _under(path: Path, parent: Path) -> str | None:
    """``path`` relative to ``parent`` when it lies strictly below it, else None."""
    try:
        relative = path.relative_to(parent)
    except ValueError:
        return None
    return str(relative) if relative.parts and ".." not in relative.parts else None


def _state_directory(path: Path, mode: str) -> str:
    """``StateDirectory=`` lines that create ``path`` under /var/lib (a comment elsewhere)."""
    state = _under(path, STATE_ROOT)
    if state is None:
        return f"# {path} is outside /var/lib: create it before the first start"
    return f"StateDirectory={_quoted(state)}\nStateDirectoryMode={mode}"


def _protect_home(*paths: Path | None) -> str:
    """``yes`` hides /home, /root and /run/user; ``read-only`` when the unit needs a path there."""
    for path in paths:
        if path is None:
            continue
        for candidate in (path, path.resolve()):
            if any(candidate == home or _under(candidate, home) for home in HOMES):
                return "read-only"
    return "yes"
