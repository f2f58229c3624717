"""The CLI's config file: server, token and CA; a token only to its own server; a file others
can read is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from knightwatch.client import resolve_target
from knightwatch.errors import InvalidInputError


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and environment; KNIGHTWATCH_CONFIG names a file there."""
    for name in ("KNIGHTWATCH_SERVER", "KNIGHTWATCH_TOKEN", "KNIGHTWATCH_CA", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.toml"
    monkeypatch.setenv("KNIGHTWATCH_CONFIG", str(path))
    return path


def write(path: Path, text: str, mode: int = 0o600) -> None:
    path.write_text(text)
    path.chmod(mode)


def test_the_config_file_names_server_token_and_ca(config: Path) -> None:
    """With nothing else set, the file's server, token and CA are used."""
    write(config, 'server = "https://cp.example:7400"\ntoken = "s3cret"\nca = "/etc/kw/ca.pem"\n')
    target = resolve_target()
    assert (target.url, target.token, target.ca) == (
        "https://cp.example:7400",
        "s3cret",
        "/etc/kw/ca.pem",
    )


def test_the_environment_wins_and_never_gets_the_files_token(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KNIGHTWATCH_SERVER names another server: the file's token is not sent there."""
    write(config, 'server = "https://cp.example:7400"\ntoken = "s3cret"\n')
    monkeypatch.setenv("KNIGHTWATCH_SERVER", "https://elsewhere:7400")
    target = resolve_target()
    assert (target.url, target.token) == ("https://elsewhere:7400", None)
    monkeypatch.setenv("KNIGHTWATCH_TOKEN", "from-env")
    assert resolve_target().token == "from-env"


def test_a_token_file_readable_by_others_is_refused(config: Path) -> None:
    """mode 0644 with a token: refused, saying chmod 600; without a token it is fine."""
    write(config, 'server = "https://cp:7400"\ntoken = "s3cret"\n', mode=0o644)
    with pytest.raises(InvalidInputError, match="readable by others") as refused:
        resolve_target()
    assert "chmod 600" in str(refused.value.hint)
    write(config, 'server = "https://cp:7400"\n', mode=0o644)
    assert resolve_target().url == "https://cp:7400"


@pytest.mark.parametrize("text", ['server = "x', 'colour = "red"\n', 'token = "a b"\n'])
def test_a_broken_config_file_is_one_clear_refusal(config: Path, text: str) -> None:
    """Not TOML, an unknown key, a token with a space: InvalidInputError naming the file."""
    write(config, text)
    with pytest.raises(InvalidInputError):
        resolve_target()
