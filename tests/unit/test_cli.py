"""The ``knightwatch`` command, run as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer.main

from knightwatch.cli.main import app
from tests.helpers import REPO, MakeSource

KNIGHTWATCH = str(Path(sys.executable).with_name("knightwatch"))
ENV = {**os.environ, "SOURCE_DATE_EPOCH": "1343826000", "COLUMNS": "200"}


def kw(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the knightwatch command and capture its output."""
    return subprocess.run(
        [KNIGHTWATCH, *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        check=False,
    )


def all_commands() -> list[list[str]]:
    """Every leaf command path of the CLI, e.g. ['bundle', 'build']."""
    found: list[list[str]] = []

    def walk(command: click.Command, path: list[str]) -> None:
        # Duck-typed: typer may ship its own copy of click, whose Group is not click.Group.
        subcommands = getattr(command, "commands", None)
        if isinstance(subcommands, dict):
            for name, sub in subcommands.items():
                walk(sub, [*path, name])
        else:
            found.append(path)

    walk(typer.main.get_command(app), [])
    return found


def test_every_command_is_collected() -> None:
    """The walk finds the real command tree (a regression: it once found only the root)."""
    commands = {" ".join(c) for c in all_commands()}
    assert {"bundle build", "deploy", "audit", "release retire", "node enroll"} <= commands
    assert "" not in commands


class TestHelp:
    @pytest.mark.parametrize("command", all_commands(), ids=" ".join)
    def test_every_command_has_help_with_example(self, command: list[str]) -> None:
        """``--help`` of every command exits 0 and shows an example invocation."""
        done = kw(*command, "--help")
        assert done.returncode == 0, done.stderr
        assert "Example: knightwatch " + " ".join(command) in " ".join(done.stdout.split())

    @pytest.mark.parametrize("command", all_commands(), ids=" ".join)
    def test_every_command_is_in_the_readme(self, command: list[str]) -> None:
        """The README mentions every command."""
        readme = (REPO / "README.md").read_text()
        assert "knightwatch " + " ".join(command) in readme or (
            "knightwatch " + " ".join(command[:-1]) in readme and command[-1] in readme
        )


class TestBundleCommands:
    def test_build_verify_show_diff(self, make_source: MakeSource, tmp_path: Path) -> None:
        """The whole flow works and every --json output parses."""
        keys, store = tmp_path / "keys", tmp_path / "store"
        generated = json.loads(kw("keys", "generate", "--out", keys, "--json").stdout)
        assert Path(generated["private_key"]).stat().st_mode & 0o777 == 0o600
        one = json.loads(
            kw(
                "bundle",
                "build",
                make_source(),
                "--store",
                store,
                "--key",
                keys / "release.key",
                "--json",
            ).stdout
        )
        two = json.loads(
            kw(
                "bundle",
                "build",
                make_source(version="2.0.0"),
                "--store",
                store,
                "--key",
                keys / "release.key",
                "--json",
            ).stdout
        )
        verified = kw(
            "bundle", "verify", one["release_id"], "--store", store, "--trust", keys / "release.pub"
        )
        assert verified.returncode == 0 and "verified" in verified.stdout
        shown = json.loads(kw("bundle", "show", "shop@1.0.0", "--store", store, "--json").stdout)
        assert shown["digest"] == one["digest"]
        diff = json.loads(
            kw(
                "bundle", "diff", one["digest"][:12], two["release_id"], "--store", store, "--json"
            ).stdout
        )
        assert diff["files_changed"] == [".knightwatch/release.json"]
        readable = kw("bundle", "show", "shop@2.0.0", "--store", store, "--files")
        assert readable.returncode == 0 and "core/util/money.py" in readable.stdout

    def test_verify_lists_mismatch_and_exits_1(
        self, make_source: MakeSource, tmp_path: Path
    ) -> None:
        """A corrupt blob makes verify name the file, once, and exit 1."""
        keys, store = tmp_path / "keys", tmp_path / "store"
        kw("keys", "generate", "--out", keys)
        built = json.loads(
            kw(
                "bundle",
                "build",
                make_source(),
                "--store",
                store,
                "--key",
                keys / "release.key",
                "--json",
            ).stdout
        )
        blobs = [p for p in (store / "blobs").rglob("*") if p.is_file()]
        assert len(blobs) == 6
        for path in blobs:
            path.chmod(0o644)
            path.write_bytes(path.read_bytes() + b"!")
        done = kw(
            "bundle",
            "verify",
            built["release_id"],
            "--store",
            store,
            "--trust",
            keys / "release.pub",
        )
        assert done.returncode == 1
        said = done.stdout + done.stderr
        assert said.count("core/book.py") == 1 and "corrupt" in done.stderr
        assert "error:" in done.stderr and "Traceback" not in done.stderr
        as_json = kw(
            "bundle",
            "verify",
            built["release_id"],
            "--store",
            store,
            "--trust",
            keys / "release.pub",
            "--json",
        )
        assert as_json.returncode == 1 and json.loads(as_json.stdout)["ok"] is False

    def test_unknown_release_is_one_line_and_exit_2(self, tmp_path: Path) -> None:
        """An unknown release gives one error line, a hint, and exit code 2."""
        done = kw("bundle", "show", "nope@1", "--store", tmp_path)
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert lines[0].startswith("error:") and "nope@1" in lines[0]
        assert lines[1].startswith("hint:") and len(lines) == 2

    def test_keys_never_overwritten(self, tmp_path: Path) -> None:
        """Generating keys into a directory that has them is refused with exit 2."""
        assert kw("keys", "generate", "--out", tmp_path).returncode == 0
        before = (tmp_path / "release.key").read_bytes()
        done = kw("keys", "generate", "--out", tmp_path)
        assert done.returncode == 2 and "already exists" in done.stderr
        assert (tmp_path / "release.key").read_bytes() == before

    def test_bad_key_file(self, make_source: MakeSource, tmp_path: Path) -> None:
        """A key that is not an Ed25519 PEM key is refused before anything is built."""
        bogus = tmp_path / "bogus.key"
        bogus.write_text("not a key")
        done = kw("bundle", "build", make_source(), "--store", tmp_path / "store", "--key", bogus)
        assert done.returncode == 2 and "not an Ed25519 private key" in done.stderr
        assert not (tmp_path / "store").exists()

    def test_usage_error_exit_2(self) -> None:
        """A missing required option is a usage error with exit code 2."""
        done = kw("bundle", "build")
        assert done.returncode == 2
