"""Settings files in the usual places: /etc/knightwatch/server.toml and agent.toml.

Precedence (highest first): option, environment variable, the settings file
(``--config`` or the default one), DATA/server.toml (the server only),
default. Tests point KNIGHTWATCH_CONFIG_DIR at a private directory (the root
conftest points it at an empty place), so the host's /etc is never read.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from knightwatch.cli.agentconfig import resolve
from knightwatch.errors import InvalidInputError
from knightwatch.hosting.configfiles import (
    CONFIG_DIR,
    CONFIG_DIR_ENV,
    ConfigFile,
    agent_config_file,
    server_config_file,
)
from knightwatch.polling import wait_until
from knightwatch.server.settings import ServerSettings
from tests.helpers import answers_healthz

KNIGHTWATCH = Path(sys.executable).with_name("knightwatch")


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


def test_tests_never_read_the_hosts_files() -> None:
    """The suite runs with the settings directory moved away from /etc/knightwatch."""
    assert os.environ[CONFIG_DIR_ENV] != str(CONFIG_DIR)
    assert not Path(os.environ[CONFIG_DIR_ENV]).exists()


class TestWhere:
    def test_config_option_then_variable_then_default(self, tmp_path: Path) -> None:
        """--config wins over KNIGHTWATCH_SERVER_CONFIG, which wins over the default file."""
        env = {CONFIG_DIR_ENV: str(tmp_path)}
        assert server_config_file(None, env) == ConfigFile(tmp_path / "server.toml", None)
        assert agent_config_file(None, {}) == ConfigFile(CONFIG_DIR / "agent.toml", None)
        named = {**env, "KNIGHTWATCH_SERVER_CONFIG": "/x/s.toml"}
        assert server_config_file(None, named).path == Path("/x/s.toml")
        assert server_config_file(None, named).required
        assert server_config_file(Path("o.toml"), named) == ConfigFile(Path("o.toml"), "--config")


class TestServerSettings:
    def test_precedence_and_sources(self, tmp_path: Path) -> None:
        """Option > variable > settings file > DATA/server.toml > default, each source named."""
        data = tmp_path / "data"
        data.mkdir()
        (data / "server.toml").write_text(
            "port = 7001\nheartbeat_s = 2.0\ncanary_soak_s = 3.0\ndead_man_s = 4.0\n"
        )
        etc = tmp_path / "server.toml"
        etc.write_text(
            f'data_dir = "{data}"\nport = 7002\nheartbeat_s = 5.0\ncanary_soak_s = 6.0\n'
        )
        settings, sources = ServerSettings.resolve(
            {"port": 7004},
            environ={"KNIGHTWATCH_HEARTBEAT_S": "7.0"},
            config=ConfigFile(etc, "--config"),
        )
        assert (settings.port, sources["port"]) == (7004, "option")
        assert (settings.heartbeat_s, sources["heartbeat_s"]) == (7.0, "KNIGHTWATCH_HEARTBEAT_S")
        assert (settings.canary_soak_s, sources["canary_soak_s"]) == (6.0, str(etc))
        assert (settings.dead_man_s, sources["dead_man_s"]) == (4.0, str(data / "server.toml"))
        assert (settings.data_dir, sources["data_dir"]) == (data, str(etc))
        assert (settings.commit_timeout_s, sources["commit_timeout_s"]) == (120.0, "default")

    def test_without_a_settings_file_only_the_data_directory_is_read(self, tmp_path: Path) -> None:
        """``load`` as before: DATA/server.toml under the environment and the arguments."""
        (tmp_path / "server.toml").write_text("port = 7001\n")
        assert ServerSettings.load({"data_dir": tmp_path}, environ={}).port == 7001

    @pytest.mark.parametrize("where", ["settings file", "data directory"])
    def test_unknown_key_is_refused_naming_file_and_key(self, tmp_path: Path, where: str) -> None:
        """A misspelt setting is an error, never a setting silently left at its default."""
        path = tmp_path / "server.toml"
        path.write_text("prot = 7001\n")
        config = ConfigFile(path, "--config") if where == "settings file" else None
        with pytest.raises(InvalidInputError) as caught:
            ServerSettings.load({"data_dir": tmp_path}, environ={}, config=config)
        assert caught.value.message == f"{path}: unknown setting 'prot'"
        assert "did you mean 'port'?" in (caught.value.hint or "")

    def test_named_file_must_exist_default_one_need_not(self, tmp_path: Path) -> None:
        """--config NOPE is an error; a missing default /etc file is not."""
        missing = tmp_path / "nope.toml"
        with pytest.raises(InvalidInputError, match="does not exist"):
            ServerSettings.load(environ={}, config=ConfigFile(missing, "--config"))
        assert ServerSettings.load(environ={}, config=ConfigFile(missing, None)).port == 7400

    def test_invalid_value_names_its_source(self, tmp_path: Path) -> None:
        """A bad value says which file (or variable) holds it."""
        path = tmp_path / "server.toml"
        path.write_text('port = "many"\n')
        with pytest.raises(InvalidInputError) as caught:
            ServerSettings.load(environ={}, config=ConfigFile(path, "--config"))
        assert str(path) in (caught.value.hint or "")


class TestAgentSettings:
    def test_precedence_and_sources(self, tmp_path: Path) -> None:
        """Option > KNIGHTWATCH_AGENT_* > agent.toml > default; lists split in variables."""
        path = tmp_path / "agent.toml"
        path.write_text(
            'server = "https://cp:7400"\nname = "from-file"\nroot = "/srv/kw"\n'
            'trust = ["/k/one.pub"]\nstat_interval = 2\n'
        )
        found = resolve(
            {"name": "from-option", "trust": []},
            {"KNIGHTWATCH_AGENT_TRUST": "/k/a.pub:/k/b.pub", "KNIGHTWATCH_AGENT_ROOT": "/env"},
            ConfigFile(path, None),
        )
        values, sources = found.values, found.sources
        assert (values["name"], sources["name"]) == ("from-option", "option")
        assert values["root"] == Path("/env") and sources["root"] == "KNIGHTWATCH_AGENT_ROOT"
        assert values["trust"] == [Path("/k/a.pub"), Path("/k/b.pub")]
        assert (values["server"], sources["server"]) == ("https://cp:7400", str(path))
        assert (values["stat_interval"], sources["stat_interval"]) == (2.0, str(path))
        assert (values["audit_interval"], sources["audit_interval"]) == (600.0, "default")
        assert values["ca"] is None

    @pytest.mark.parametrize(
        ("text", "says"),
        [
            ('servr = "x"\n', "unknown setting 'servr'"),
            ("stat_interval = true\n", "stat_interval = True is invalid"),
            ("trust = 3\n", "trust = 3 is invalid"),
            ('join = "secret"\n', "unknown setting 'join'"),
        ],
    )
    def test_bad_file_is_refused_naming_file_and_key(
        self, tmp_path: Path, text: str, says: str
    ) -> None:
        """Unknown keys (the one-time token too) and wrong types are refused, by name."""
        path = tmp_path / "agent.toml"
        path.write_text(text)
        with pytest.raises(InvalidInputError) as caught:
            resolve({}, {}, ConfigFile(path, None))
        assert str(path) in caught.value.message and says in caught.value.message


class TestAgentCommand:
    def test_settings_file_feeds_the_agent(self, tmp_path: Path) -> None:
        """agent.toml's values reach the agent: its bad name is refused as --name's would be."""
        etc = tmp_path / "etc"
        etc.mkdir()
        root = tmp_path / "root"
        (etc / "agent.toml").write_text(
            f'server = "http://127.0.0.1:9"\nroot = "{root}"\nname = "Bad Name"\n'
        )
        done = kw("agent", env={CONFIG_DIR_ENV: str(etc)})
        assert done.returncode == 2, done.stderr
        assert "'Bad Name' is not a valid node name" in done.stderr
        assert not root.exists()

    def test_missing_required_option_is_still_refused(self, tmp_path: Path) -> None:
        """With no option, variable or file giving it, --server is missing, as before."""
        done = kw("agent", "--root", tmp_path / "r", "--name", "n1")
        assert done.returncode == 2
        assert "Missing option '--server'" in done.stderr
        assert not (tmp_path / "r").exists()

    def test_unknown_key_stops_the_agent_before_anything(self, tmp_path: Path) -> None:
        """An unknown key in --config is one line naming the file and the key (exit 2)."""
        path = tmp_path / "agent.toml"
        path.write_text("hearbeat = 1\n")
        root = tmp_path / "r"
        done = kw(
            "agent",
            "--config",
            path,
            "--server",
            "http://127.0.0.1:9",
            "--root",
            root,
            "--name",
            "n1",
        )
        assert done.returncode == 2
        assert f"{path}: unknown setting 'hearbeat'" in done.stderr
        assert "Traceback" not in done.stderr and not root.exists()

    def test_config_show(self, tmp_path: Path) -> None:
        """Each setting, its value and its source; the join token masked."""
        path = tmp_path / "agent.toml"
        path.write_text('server = "https://cp:7400"\nname = "node1"\n')
        done = kw(
            "agent",
            "config",
            "show",
            "--config",
            path,
            "--json",
            env={"KNIGHTWATCH_AGENT_ROOT": "/srv/kw", "KNIGHTWATCH_JOIN_TOKEN": "s3cret"},
        )
        assert done.returncode == 0, done.stderr
        shown = {row["name"]: row for row in json.loads(done.stdout)["settings"]}
        assert shown["server"] == {
            "name": "server",
            "value": "https://cp:7400",
            "source": str(path),
        }
        assert shown["root"]["source"] == "KNIGHTWATCH_AGENT_ROOT"
        assert shown["health_timeout"] == {
            "name": "health_timeout",
            "value": 30.0,
            "source": "default",
        }
        assert shown["join"]["value"] == "**********" and "s3cret" not in done.stdout


class TestServerCommand:
    def test_config_show_masks_secrets_and_names_sources(self, tmp_path: Path) -> None:
        """The database password, operator token and receiver URLs never appear."""
        etc = tmp_path / "etc"
        etc.mkdir()
        (etc / "server.toml").write_text(
            'database_url = "postgresql+psycopg://kw:hunter2@db.example/kw"\n'
            'operator_token = "op-s3cret"\n'
            "[alerts]\n"
            'receivers = [{name = "hook", webhook = "https://hooks.example/T0KEN?k=v"}]\n'
        )
        data = tmp_path / "data"
        data.mkdir()
        (data / "server.toml").write_text("canary_soak_s = 3.0\n")
        done = kw(
            "server",
            "config",
            "show",
            "--data",
            data,
            "--json",
            env={CONFIG_DIR_ENV: str(etc), "KNIGHTWATCH_PORT": "7999"},
        )
        assert done.returncode == 0, done.stderr
        for secret in ("hunter2", "op-s3cret", "T0KEN"):
            assert secret not in done.stdout
        document = json.loads(done.stdout)
        shown = {row["name"]: (row["value"], row["source"]) for row in document["settings"]}
        assert shown["database_url"] == (
            "postgresql+psycopg://kw:***@db.example/kw",
            str(etc / "server.toml"),
        )
        assert shown["operator_token"][0] == "**********"
        assert shown["port"] == (7999, "KNIGHTWATCH_PORT")
        assert shown["data_dir"] == (str(data), "--data")
        assert shown["canary_soak_s"] == (3.0, str(data / "server.toml"))
        assert shown["host"] == ("127.0.0.1", "default")
        receiver = shown["alerts"][0]["receivers"][0]
        assert receiver["webhook"] == "https://hooks.example/***"
        assert [f["exists"] for f in document["files"]] == [True, True]
        readable = kw("server", "config", "show", "--data", data, env={CONFIG_DIR_ENV: str(etc)})
        assert readable.returncode == 0 and "KNIGHTWATCH_PORT" not in readable.stdout
        assert "hunter2" not in readable.stdout

    def test_missing_named_config_is_refused(self, tmp_path: Path) -> None:
        """``server --config NOPE`` exits 2 before anything is created."""
        data = tmp_path / "data"
        done = kw("server", "--data", data, "--config", tmp_path / "nope.toml")
        assert done.returncode == 2
        assert "nope.toml (from --config) does not exist" in done.stderr
        assert not data.exists()
        env = {"KNIGHTWATCH_SERVER_CONFIG": str(tmp_path / "gone.toml")}
        by_variable = kw("server", "--data", data, env=env)
        assert by_variable.returncode == 2
        assert "(from KNIGHTWATCH_SERVER_CONFIG) does not exist" in by_variable.stderr

    def test_init_opens_the_servers_store(self, tmp_path: Path) -> None:
        """``knightwatch init`` reads the same settings file, so it writes the server's store."""
        etc, data = tmp_path / "etc", tmp_path / "data"
        etc.mkdir()
        (etc / "server.toml").write_text(f'data_dir = "{data}"\n')
        done = kw("init", "--json", env={CONFIG_DIR_ENV: str(etc)})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["name"] == "admin"
        assert (data / "knightwatch.db").exists()

    def test_server_runs_with_its_settings_file(self, tmp_path: Path) -> None:
        """A real server takes its data directory and port from /etc/knightwatch/server.toml."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        etc, data = tmp_path / "etc", tmp_path / "data"
        etc.mkdir()
        (etc / "server.toml").write_text(f'data_dir = "{data}"\nport = {port}\n')
        log = tmp_path / "server.log"
        with log.open("wb") as output:
            server = subprocess.Popen(
                [str(KNIGHTWATCH), "server"],
                env={**os.environ, CONFIG_DIR_ENV: str(etc)},
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        try:
            answered = f"the server answers ({log})"
            wait_until(lambda: answers_healthz(port), timeout=60, what=answered)
            assert (data / "knightwatch.db").exists()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
