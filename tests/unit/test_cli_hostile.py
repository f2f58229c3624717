"""The ``knightwatch`` command against hostile settings, servers and text.

A hostile server here is a plain HTTP server on loopback that records what
it is sent and answers canned JSON: a foreign or compromised server, or one
holding text that another person typed. The command runs as a subprocess,
as a user runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from knightwatch.client import FLEET_FILE, resolve_target

KNIGHTWATCH = str(Path(sys.executable).with_name("knightwatch"))
BASE_ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in ("KNIGHTWATCH_SERVER", "KNIGHTWATCH_TOKEN", "KNIGHTWATCH_JOIN_TOKEN")
}
HOSTILE_TEXT = "[/] [bold]x\x1b[2J\x1b]0;owned\x07\u202eevil"


class HostileServer:
    """A loopback HTTP server answering canned JSON per path, recording every request."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append((self.path, dict(self.headers.items())))
                body = json.dumps(outer.answers.get(self.path.split("?")[0], {})).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                return

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    """A hostile server answering ``{}`` everywhere (tests fill ``answers``)."""
    server = HostileServer({})
    yield server
    server.close()


def kw(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    """Run the knightwatch command with ``env`` added to a clean environment."""
    return subprocess.run(
        [KNIGHTWATCH, *map(str, args)],
        capture_output=True,
        text=True,
        env={**BASE_ENV, "COLUMNS": "300", **(env or {})},
        cwd=cwd,
        timeout=120,
        check=False,
    )


def one_line_and_hint(stderr: str) -> list[str]:
    """The error and hint lines; fails unless there are exactly these two."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error:"), stderr
    assert lines[1].startswith("hint:"), stderr
    return lines


# -- where the token goes --------------------------------------------------------------------


def write_fleet_file(directory: Path, server: str, token: str | None) -> None:
    """A ``.knightwatch-fleet/fleet.json`` as ``knightwatch fleet up`` writes it."""
    path = directory / FLEET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"server": server, **({"token": token} if token else {})}
    path.write_text(json.dumps(data))


CP, EVIL, DEFAULT = "http://cp:7400", "http://evil:1", "http://127.0.0.1:7400"
ENV_TOKEN = {"KNIGHTWATCH_TOKEN": "env"}
ENV_SERVER = {"KNIGHTWATCH_SERVER": CP}
TARGETS: list[tuple[str, dict[str, str], tuple[str, str | None] | None, tuple[str, str | None]]] = [
    # (case, environment, fleet file (server, token), expected (url, token))
    ("env-token-not-to-fleet-server", ENV_TOKEN, (EVIL, None), (EVIL, None)),
    ("fleet-server-gets-its-own-token", ENV_TOKEN, (EVIL, "fleet"), (EVIL, "fleet")),
    ("env-server-gets-env-token", {**ENV_SERVER, **ENV_TOKEN}, (EVIL, "fleet"), (CP, "env")),
    ("fleet-token-not-to-env-server", ENV_SERVER, (EVIL, "fleet"), (CP, None)),
    ("fleet-token-to-same-server", ENV_SERVER, (CP, "fleet"), (CP, "fleet")),
    ("env-token-to-default-server", ENV_TOKEN, None, (DEFAULT, "env")),
    ("serverless-fleet-token-stays", {}, ("", "fleet"), (DEFAULT, None)),
]


def test_each_token_reaches_only_its_own_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An environment token never goes to a server a fleet file names; a file's token stays home."""
    monkeypatch.chdir(tmp_path)
    wrong = []
    for case, env, fleet, expected in TARGETS:
        for name in ("KNIGHTWATCH_SERVER", "KNIGHTWATCH_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        FLEET_FILE.unlink(missing_ok=True)
        if fleet is not None:
            write_fleet_file(tmp_path, *fleet)
        target = resolve_target()
        if (target.url, target.token) != expected:
            wrong.append(f"{case}: {(target.url, target.token)} != {expected}")
    assert not wrong, wrong


def test_status_sends_no_environment_token_to_a_fleet_file_server(
    tmp_path: Path, hostile: HostileServer
) -> None:
    """``status`` beside a fleet file naming another server does not send it the env token."""
    write_fleet_file(tmp_path, hostile.url, None)
    kw("status", env={"KNIGHTWATCH_TOKEN": "operator-secret"}, cwd=tmp_path)
    assert hostile.requests, "the command did not call the fleet file's server"
    for _path, headers in hostile.requests:
        assert "operator-secret" not in json.dumps(headers)


# -- bad settings and bad answers: one line and a hint, exit 2 -------------------------------

BAD_SETTINGS = [
    ("unclosed-ipv6", {"KNIGHTWATCH_SERVER": "http://[::1"}, "KNIGHTWATCH_SERVER"),
    ("not-http", {"KNIGHTWATCH_SERVER": "ftp://cp"}, "KNIGHTWATCH_SERVER"),
    ("non-ascii-token", {"KNIGHTWATCH_TOKEN": "caf\u00e9"}, "KNIGHTWATCH_TOKEN"),
    ("newline-token", {"KNIGHTWATCH_TOKEN": "abc\ndef"}, "line break"),
]


@pytest.mark.parametrize(
    ("env", "says"), [b[1:] for b in BAD_SETTINGS], ids=[b[0] for b in BAD_SETTINGS]
)
def test_bad_server_or_token_is_one_line_and_exit_2(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    """A malformed server URL or token is named in one line with a hint, exit 2, no traceback."""
    done = kw("status", env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert says in one_line_and_hint(done.stderr)[0]


@pytest.mark.parametrize("nodes", ["", " ", " , "])
def test_kill_with_an_empty_selector_is_refused_before_any_server(
    tmp_path: Path, nodes: str
) -> None:
    """``kill --nodes ""`` is refused on the operator's machine, with no server reachable."""
    nobody = {"KNIGHTWATCH_SERVER": "http://127.0.0.1:9"}  # nothing listens there
    done = kw("kill", "--nodes", nodes, "--reason", "x", env=nobody, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "selector is empty" in one_line_and_hint(done.stderr)[0]


def test_server_answering_an_empty_object_is_one_line_and_exit_2(
    tmp_path: Path, hostile: HostileServer
) -> None:
    """A server answering ``{}`` is an unexpected answer: one line, a hint, exit 2."""
    done = kw("status", env={"KNIGHTWATCH_SERVER": hostile.url}, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "'state'" in one_line_and_hint(done.stderr)[0]


# -- --json on failure -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["bundle", "show", "nope@1", "--store", "."], 2, "nope@1"),
        (["bundle", "build", "--json"], 2, "source"),
        (["status"], 2, "KNIGHTWATCH_TOKEN"),
        (["kill", "--reason", "stop"], 2, "KNIGHTWATCH_TOKEN"),
    ],
    ids=["domain-error", "usage-error", "bad-token", "bad-token-fast-kill"],
)
def test_json_failure_is_a_json_document(
    tmp_path: Path, args: list[str], code: int, says: str
) -> None:
    """With --json a failure prints {"ok": false, "error": …} on stdout, and the exit code."""
    argv = args if "--json" in args else [*args, "--json"]
    done = kw(*argv, env={"KNIGHTWATCH_TOKEN": "bad token"}, cwd=tmp_path)
    assert done.returncode == code, done.stderr
    document = json.loads(done.stdout)
    assert document["ok"] is False and document["exit_code"] == code
    assert says in document["error"] and "problems" in document


# -- operator text is text, never markup or terminal control ---------------------------------


def test_history_and_deployments_print_hostile_text_inertly(
    tmp_path: Path, hostile: HostileServer
) -> None:
    """Reasons holding markup, ANSI escapes and bidi overrides print as visible text."""
    event = {"at": "2026-01-01T00:00:00", "state": "retired", "actor": HOSTILE_TEXT}
    hostile.answers["/api/v1/history"] = {
        "kind": "node",
        "key": "node1",
        "events": [{**event, "reason": HOSTILE_TEXT, "detail": HOSTILE_TEXT}],
    }
    row = {
        "id": 1,
        "kind": "deploy",
        "release_id": "smars@1",
        "strategy": "atomic",
        "state": "FAILED",
        "requested_by": HOSTILE_TEXT,
        "created_at": "2026-01-01T00:00:00",
        "reason": HOSTILE_TEXT,
    }
    hostile.answers["/api/v1/deployments"] = [row]
    env = {"KNIGHTWATCH_SERVER": hostile.url}
    for command in (["history", "node1"], ["deployments"]):
        done = kw(*command, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "\x1b" not in done.stdout and "\u202e" not in done.stdout
        assert "\x07" not in done.stdout
        assert "[/] [bold]x\\x1b[2J" in done.stdout and "\\u202eevil" in done.stdout
