"""The systemd units: written by ``install-unit`` as an operator runs it, checked by systemd itself.

Every unit the commands write (server and agent, default and other options)
passes ``systemd-analyze verify`` without a word about it, and keeps the
exposure score ``systemd-analyze security --offline=true`` gives it (the
README reports both).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from knightwatch.hosting.units import AgentUnit, ServerUnit
from knightwatch.polling import wait_until
from tests.helpers import answers_healthz

KNIGHTWATCH = Path(sys.executable).with_name("knightwatch")
"""The real console script: ``verify`` needs the unit's ExecStart binary to exist."""
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is missing (.ci/run installs systemd)"
)
FINGERPRINT = "SHA256:" + "ab" * 32
SERVER_CASES = {
    "default": [],
    "user-port-config": [
        *("--user", "knightwatch", "--group", "knightwatch", "--port", "443"),
        *("--host", "0.0.0.0", "--data", "/srv/knightwatch"),
        *("--config", "/etc/knightwatch/server.toml"),
    ],
    "state-subdirectory": ["--data", "/var/lib/kw/plane one", "--port", "7401"],
}
AGENT_CASES = {
    "default": ["--server", "https://cp.example:7400", "--name", "node1"],
    "everything": [
        *("--root", "/srv/knightwatch/agent", "--server", "http://127.0.0.1:7400"),
        *("--name", "web-1.eu", "--config", "/etc/knightwatch/agent.toml"),
        *("--ca", "/etc/knightwatch/ca.pem", "--join-file", "/etc/knightwatch/join token"),
        *("--trust", "/etc/knightwatch/release.pub", "--trust", "/etc/knightwatch/other.pub"),
        *("--trust-fingerprint", FINGERPRINT, "--cgroup-mount", "/mnt/cgroup"),
    ],
    "no-capabilities": ["--server", "https://cp:7400", "--name", "n", "--capabilities", "none"],
    "root-under-home": ["--root", "/home/ops/kw", "--server", "https://cp:7400", "--name", "n"],
}


def kw(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the knightwatch command and capture its output."""
    return subprocess.run(
        [str(KNIGHTWATCH), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=120,
        check=False,
    )


def install(kind: str, directory: Path, *args: str) -> Path:
    """``knightwatch KIND install-unit`` into ``directory``; the unit file written."""
    done = kw(kind, "install-unit", "--output-dir", directory, "--json", *args)
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    assert written["written"] is True
    return Path(written["path"])


def verify(unit: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about ``unit`` (nothing, for a good one)."""
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "info", "SYSTEMD_LOG_COLOR": "0"},
        timeout=120,
        check=False,
    )
    said = (done.stdout + done.stderr).splitlines()
    about = [line for line in said if unit.name in line or str(unit) in line]
    return about if done.returncode == 0 else [f"exit {done.returncode}", *said]


def exposure(unit: Path) -> float:
    """The overall exposure ``systemd-analyze security --offline=true`` gives ``unit``."""
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    return float(found.group(1))


def directives(text: str) -> dict[str, list[str]]:
    """Each ``Key=value`` of a unit file (comments left out), values in order."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@needs_systemd
class TestVerify:
    @pytest.mark.parametrize("case", SERVER_CASES)
    def test_server_unit_verifies(self, tmp_path: Path, case: str) -> None:
        """Every server unit passes ``systemd-analyze verify`` with nothing said about it."""
        unit = install("server", tmp_path, *SERVER_CASES[case])
        assert unit == tmp_path / "knightwatch-server.service"
        assert verify(unit) == []

    @pytest.mark.parametrize("case", AGENT_CASES)
    def test_agent_unit_verifies(self, tmp_path: Path, case: str) -> None:
        """Every agent unit passes ``systemd-analyze verify`` with nothing said about it."""
        unit = install("agent", tmp_path, *AGENT_CASES[case])
        assert unit == tmp_path / "knightwatch-agent.service"
        assert verify(unit) == []

    def test_verify_would_catch_a_bad_unit(self, tmp_path: Path) -> None:
        """The check is not blind: a misspelt directive or a bad value is reported."""
        text = (install("server", tmp_path)).read_text()
        bad = tmp_path / "bad" / "knightwatch-server.service"
        bad.parent.mkdir()
        bad.write_text(text.replace("PrivateTmp=yes", "PrivateTemp=yes\nProtectHome=maybe"))
        said = verify(bad)
        assert any("PrivateTemp" in line for line in said), said
        assert any("maybe" in line for line in said), said

    def test_exposure_scores(self, tmp_path: Path) -> None:
        """The exposure scores stay what the README reports (server 1.1, agent 3.0 at most)."""
        (tmp_path / "server").mkdir()
        (tmp_path / "agent").mkdir()
        assert exposure(install("server", tmp_path / "server")) <= 1.1
        assert exposure(install("agent", tmp_path / "agent", *AGENT_CASES["default"])) <= 3.0


class TestContents:
    def test_server_unit_is_strict(self) -> None:
        """The server: a transient user, /var/lib/knightwatch, no capability, no W+X memory."""
        unit = directives(ServerUnit(KNIGHTWATCH).render())
        assert unit["ExecStart"] == [f"{KNIGHTWATCH} server --data /var/lib/knightwatch"]
        expected = {
            "Restart": "on-failure",
            "RestartSec": "5s",
            "DynamicUser": "yes",
            "StateDirectory": "knightwatch",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "NoNewPrivileges": "yes",
            "PrivateTmp": "yes",
            "PrivateUsers": "yes",
            "ProtectControlGroups": "yes",
            "MemoryDenyWriteExecute": "yes",
            "CapabilityBoundingSet": "",
            "SystemCallArchitectures": "native",
        }
        assert {key: unit[key][-1] for key in expected} == expected
        assert "ReadWritePaths" not in unit and "User" not in unit

    def test_server_on_a_privileged_port_gets_that_capability_only(self) -> None:
        """--port 443 adds CAP_NET_BIND_SERVICE (and so no PrivateUsers, which would void it)."""
        unit = directives(ServerUnit(KNIGHTWATCH, port=443, user="kw").render())
        assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
        assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
        assert "PrivateUsers" not in unit
        assert unit["User"] == ["kw"] and unit["Group"] == ["kw"]

    def test_agent_unit_lets_the_agent_supervise(self) -> None:
        """The agent: its root its only writable path, cgroups writable, it stops its service."""
        root = Path("/var/lib/knightwatch-agent")
        unit = directives(AgentUnit(KNIGHTWATCH, root, "https://cp:7400", "node1").render())
        assert unit["ExecStart"] == [
            f"{KNIGHTWATCH} agent --root {root} --server https://cp:7400 --name node1"
        ]
        assert unit["ReadWritePaths"] == [str(root)]
        assert unit["KillMode"] == ["process"]
        assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
        assert unit["Restart"] == ["on-failure"]
        for kept in ("NoNewPrivileges", "PrivateTmp", "ProtectKernelTunables", "RestrictSUIDSGID"):
            assert unit[kept] == ["yes"], kept
        assert unit["ProtectSystem"] == ["strict"]
        for left_out in ("ProtectControlGroups", "MemoryDenyWriteExecute", "User", "DynamicUser"):
            assert left_out not in unit, left_out
        assert "CAP_SYS_ADMIN" not in unit["CapabilityBoundingSet"][0]

    def test_paths_are_quoted_and_escaped_for_systemd(self) -> None:
        """A space is quoted, and % and $ are not taken as specifiers or variables."""
        unit = AgentUnit(
            KNIGHTWATCH, Path("/srv/a b"), "https://cp:7400", "n", join_file=Path("/etc/100%$x")
        ).render()
        exec_start = directives(unit)["ExecStart"][0]
        assert '--root "/srv/a b"' in exec_start
        assert '--join-file "/etc/100%%$$x"' in exec_start
        assert 'ReadWritePaths="/srv/a b"' in unit

    def test_a_path_under_home_makes_home_read_only_not_hidden(self) -> None:
        """ProtectHome=yes would hide a root under /home; read-only keeps it usable."""
        unit = directives(AgentUnit(KNIGHTWATCH, Path("/home/ops/kw"), "http://x:1", "n").render())
        assert unit["ProtectHome"] == ["read-only"]
        assert unit["ReadWritePaths"] == ["/home/ops/kw"]


class TestInstallUnit:
    def test_writes_atomically_and_replaces(self, tmp_path: Path) -> None:
        """The unit appears whole (mode 644, no temporary file left); a second run replaces it."""
        first = install("server", tmp_path)
        assert first.stat().st_mode & 0o777 == 0o644
        second = install("server", tmp_path, "--port", "7500")
        assert second == first and "--port 7500" in first.read_text()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["knightwatch-server.service"]

    def test_stdout_and_dry_run_write_nothing(self, tmp_path: Path) -> None:
        """--stdout prints the unit; --dry-run prints it and where it would go."""
        printed = kw(
            "agent", "install-unit", "--output-dir", tmp_path, "--stdout", *AGENT_CASES["default"]
        )
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout.startswith("# knightwatch-agent.service")
        assert "KillMode=process" in printed.stdout
        dry = kw("server", "install-unit", "--output-dir", tmp_path, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "DynamicUser=yes" in dry.stdout
        assert f"would write {tmp_path / 'knightwatch-server.service'}" in dry.stderr
        as_json = json.loads(kw("server", "install-unit", "--dry-run", "--json").stdout)
        assert as_json["written"] is False
        assert as_json["path"] == "/etc/systemd/system/knightwatch-server.service"
        assert list(tmp_path.iterdir()) == []

    def test_default_executable_is_the_running_command(self, tmp_path: Path) -> None:
        """Without --executable the unit runs the knightwatch that wrote it."""
        text = kw("server", "install-unit", "--stdout").stdout
        assert f"ExecStart={KNIGHTWATCH} server" in text

    @pytest.mark.parametrize(
        ("kind", "args", "says"),
        [
            ("server", ["--data", "relative/data"], "--data relative/data is not an absolute path"),
            ("server", ["--executable", "/nonexistent/knightwatch"], "is not an executable file"),
            ("server", ["--executable", "knightwatch"], "is not an absolute path"),
            ("server", ["--data", "/srv/kw"], "outside /var/lib"),
            ("server", ["--user", "Bad User"], "is not a user or group name"),
            ("server", ["--group", "kw"], "--group needs --user"),
            ("server", ["--port", "70000"], "is not a TCP port"),
            ("server", ["--output-dir", "/nonexistent/units"], "is not a directory"),
            ("server", ["--config", "etc/server.toml"], "is not an absolute path"),
            ("agent", ["--server", "https://cp:7400", "--name", "Node 1"], "not a valid node name"),
            (
                "agent",
                ["--server", "ftp://cp", "--name", "n1"],
                "is not an http:// or https:// URL",
            ),
            ("agent", ["--name", "n1"], "no --server given and"),
            ("agent", ["--root", "r", "--server", "http://x:1", "--name", "n"], "not an absolute"),
            ("agent", ["--root", "/", "--server", "http://x:1", "--name", "n"], "whole system"),
            (
                "agent",
                ["--server", "http://x:1", "--name", "n", "--capabilities", "CAP_FLY"],
                "'CAP_FLY' is not a Linux capability",
            ),
        ],
    )
    def test_bad_input_is_refused_and_nothing_written(
        self, tmp_path: Path, kind: str, args: list[str], says: str
    ) -> None:
        """One clear line (exit 2), no traceback, no file."""
        done = kw(kind, "install-unit", "--output-dir", tmp_path, *args)
        assert done.returncode == 2, done.stderr
        assert says in " ".join(done.stderr.split())
        assert "Traceback" not in done.stderr
        assert list(tmp_path.iterdir()) == []

    def test_agent_server_and_name_may_come_from_its_settings_file(self, tmp_path: Path) -> None:
        """Without --server/--name the unit leaves them to agent.toml, which must set them."""
        etc = tmp_path / "etc"
        etc.mkdir()
        (etc / "agent.toml").write_text('server = "https://cp:7400"\nname = "node7"\n')
        out = tmp_path / "out"
        out.mkdir()
        done = kw(
            "agent",
            "install-unit",
            "--output-dir",
            out,
            "--json",
            env={"KNIGHTWATCH_CONFIG_DIR": str(etc)},
        )
        assert done.returncode == 0, done.stderr
        exec_start = directives(json.loads(done.stdout)["text"])["ExecStart"][0]
        assert "--server" not in exec_start and "--name" not in exec_start

    def test_group_options_before_a_subcommand_are_refused(self, tmp_path: Path) -> None:
        """``server --port 1 install-unit`` does not silently drop --port."""
        done = kw("server", "--port", "1", "install-unit", "--output-dir", tmp_path)
        assert done.returncode == 2
        assert "option of `knightwatch server` itself" in " ".join(done.stderr.split())
        assert list(tmp_path.iterdir()) == []


MDWE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3)
    sys.exit(77)
os.execv(sys.argv[1], sys.argv[1:])
"""
"""Run a command as ``MemoryDenyWriteExecute=yes`` would: no memory both writable and
executable, for it and everything it starts (the kernel's own switch, inherited on exec)."""


def test_server_runs_without_writable_executable_memory(tmp_path: Path) -> None:
    """The server unit's MemoryDenyWriteExecute=yes does not break Python or its libraries."""
    refused = subprocess.run(
        [
            sys.executable,
            "-c",
            MDWE,
            sys.executable,
            "-c",
            "import mmap; mmap.mmap(-1, 4096, prot=7)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if refused.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3 and later)")
    assert "PermissionError" in refused.stderr  # the switch is on: W+X memory is refused
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                MDWE,
                str(KNIGHTWATCH),
                "server",
                "--data",
                str(tmp_path / "data"),
                "--port",
                str(port),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: answers_healthz(port), timeout=60, what=f"the server answers ({log})")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
