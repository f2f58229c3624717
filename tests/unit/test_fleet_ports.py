"""Local fleets' ports: claimed machine-wide, so two fleets never get the same one."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from knightwatch.errors import KnightwatchError
from knightwatch.localfleet import ports
from knightwatch.localfleet.fleetfile import FLEET_FILE


@pytest.fixture
def claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A claims directory of this test's own (the real one is shared by the machine)."""
    directory = tmp_path / "claims"
    monkeypatch.setattr(ports, "CLAIMS", directory)
    return directory


@pytest.fixture
def listener() -> Iterator[int]:
    """A port in the fleets' range that something listens on."""
    with socket.socket() as server:
        for port in ports.PORTS:
            try:
                server.bind(("127.0.0.1", port))
            except OSError:
                continue
            server.listen()
            yield port
            return
    pytest.fail("no port of the range could be bound")


def _quiet(count: int) -> range:
    """``count`` consecutive ports of the fleets' range that nothing listens on now."""
    for start in range(ports.PORTS.start, ports.PORTS.stop - count, count):
        window = range(start, start + count)
        if not any(ports._listening(port) for port in window):
            return window
    raise AssertionError(f"no {count} quiet ports in a row")


def _fleet(tmp_path: Path, name: str, *, with_state: bool = True) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    if with_state:
        (directory / FLEET_FILE).write_text("{}")
    return directory


def test_two_fleets_never_get_the_same_port(
    claims: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty claims from a range of twenty: every port once, each file naming its fleet."""
    window = _quiet(20)
    monkeypatch.setattr(ports, "PORTS", window)
    one, two = _fleet(tmp_path, "one"), _fleet(tmp_path, "two")
    got = [ports.claim_port(one if i % 2 else two) for i in range(20)]
    assert sorted(got) == list(window)
    assert (claims / str(got[1])).read_text() == str(one)
    with pytest.raises(KnightwatchError) as full:
        ports.claim_port(one, attempts=50)
    assert "no free port" in full.value.message and full.value.hint


def test_a_port_something_listens_on_is_never_claimed(
    claims: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listener: int
) -> None:
    monkeypatch.setattr(ports, "PORTS", range(listener, listener + 1))
    with pytest.raises(KnightwatchError):
        ports.claim_port(_fleet(tmp_path, "one"), attempts=20)
    assert not (claims / str(listener)).exists()


def test_down_gives_back_only_its_own_ports(
    claims: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ports, "PORTS", _quiet(6))
    one, two = _fleet(tmp_path, "one"), _fleet(tmp_path, "two")
    mine = {ports.claim_port(one) for _ in range(3)}
    theirs = {ports.claim_port(two) for _ in range(3)}
    ports.release_ports(one)
    assert {int(p.name) for p in claims.iterdir()} == theirs
    assert {ports.claim_port(two) for _ in range(3)} == mine


@pytest.mark.parametrize(
    ("age_s", "with_state", "taken_over"),
    [
        (ports.GRACE_S + 60, False, True),  # its fleet left no state behind
        (ports.GRACE_S - 60, False, False),  # young: its fleet may be starting
        (ports.GRACE_S + 60, True, False),  # its fleet is still there
        (ports.MAX_AGE_S + 60, True, True),  # a day old
    ],
)
def test_an_abandoned_claim_is_taken_over_and_only_that(
    claims: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    age_s: float,
    with_state: bool,
    taken_over: bool,
) -> None:
    port = _quiet(1).start
    monkeypatch.setattr(ports, "PORTS", range(port, port + 1))
    gone = _fleet(tmp_path, "gone", with_state=with_state)
    assert ports.claim_port(gone) == port
    then = time.time() - age_s
    os.utime(claims / str(port), (then, then))
    newcomer = _fleet(tmp_path, "new")
    if taken_over:
        assert ports.claim_port(newcomer) == port
        assert (claims / str(port)).read_text() == str(newcomer)
    else:
        with pytest.raises(KnightwatchError):
            ports.claim_port(newcomer, attempts=20)
        assert (claims / str(port)).read_text() == str(gone)
