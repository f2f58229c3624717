"""Protocol negotiation: the offer an agent's headers make, and what the server picks."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from knightwatch.clock import VirtualClock
from knightwatch.protocol.messages import (
    Hello,
    NodeState,
    Report,
    ServiceState,
    ServiceStatus,
    parse_server_message,
)
from knightwatch.protocol.reports import report_document
from knightwatch.protocol.versions import (
    LEGACY_PROTOCOL,
    LEGACY_VERSION,
    PROTOCOLS,
    Offer,
    ProtocolHeaderError,
    ProtocolMismatchError,
    chosen_protocol,
    negotiate,
    offer_headers,
    read_offer,
)
from knightwatch.server.refusals import RECORD_EVERY_S, RefusalRecords
from tests.upgrade.old_release import old_env, unpack_old_release

SERVER = "0.2.0.dev0"


def lower(headers: dict[str, str]) -> dict[str, str]:
    """Header names as an ASGI server hands them over."""
    return {name.lower(): value for name, value in headers.items()}


def test_this_knightwatch_speaks_protocols_1_and_2() -> None:
    """1 is 0.1.x's protocol, 2 is this version's."""
    assert PROTOCOLS == (1, 2)


def test_the_headers_an_agent_sends_read_back_as_its_offer() -> None:
    """offer_headers and read_offer are one format, both ways."""
    headers = offer_headers("0.2.0.dev0")
    assert headers == {"X-Knightwatch-Protocol": "1,2", "X-Knightwatch-Version": "0.2.0.dev0"}
    assert read_offer(lower(headers)) == Offer((1, 2), "0.2.0.dev0")


def test_no_headers_is_a_protocol_1_agent() -> None:
    """0.1.x sends no version headers: it speaks protocol 1 and is shown as 0.1.x."""
    assert read_offer({}) == Offer((1,), LEGACY_VERSION)
    assert negotiate(read_offer({}), SERVER) == 1


@pytest.mark.parametrize(
    ("offered", "picked"), [((1, 2), 2), ((2,), 2), ((1,), 1), ((2, 3), 2), ((0, 1), 1)]
)
def test_the_server_picks_the_highest_protocol_both_speak(
    offered: tuple[int, ...], picked: int
) -> None:
    """Any overlap serves the agent at the highest common version."""
    assert negotiate(Offer(offered, "9.9"), SERVER) == picked


def test_a_newer_agent_is_told_to_wait_for_the_control_plane() -> None:
    """An agent that speaks only later protocols: both versions named, upgrade the server."""
    with pytest.raises(ProtocolMismatchError) as caught:
        negotiate(Offer((3,), "0.9.0"), SERVER)
    assert caught.value.message == (
        "agent knightwatch 0.9.0 speaks protocol 3; this server (0.2.0.dev0) speaks 1-2: "
        "upgrade the control plane first"
    )


def test_an_older_agent_is_told_to_upgrade() -> None:
    """An agent that speaks only earlier protocols (here 0): upgrade the agent."""
    with pytest.raises(ProtocolMismatchError) as caught:
        negotiate(Offer((0,), "0.0.1"), SERVER)
    assert caught.value.message == (
        "agent knightwatch 0.0.1 speaks protocol 0; this server (0.2.0.dev0) speaks 1-2: "
        "upgrade the agent"
    )
    with pytest.raises(ProtocolMismatchError, match=r"speaks protocol 1,3; .* speaks 2,4"):
        negotiate(Offer((1, 3), "1.0"), SERVER, supported=(2, 4))


def test_a_server_that_outgrew_protocol_1_refuses_an_agent_without_headers() -> None:
    """A future server speaking 2-3 tells a 0.1 agent to upgrade."""
    with pytest.raises(
        ProtocolMismatchError, match=r"0\.1\.x speaks protocol 1; .*upgrade the agent"
    ):
        negotiate(read_offer({}), "0.4.0", supported=(2, 3))


BAD = [
    ("garbage", {"x-knightwatch-protocol": "garbage", "x-knightwatch-version": "0.2.0"}),
    ("negative", {"x-knightwatch-protocol": "-1", "x-knightwatch-version": "0.2.0"}),
    ("non-numeric", {"x-knightwatch-protocol": "1,two", "x-knightwatch-version": "0.2.0"}),
    ("float", {"x-knightwatch-protocol": "2.0", "x-knightwatch-version": "0.2.0"}),
    ("empty", {"x-knightwatch-protocol": "", "x-knightwatch-version": "0.2.0"}),
    ("huge-number", {"x-knightwatch-protocol": "1" * 400, "x-knightwatch-version": "0.2.0"}),
    ("too-many", {"x-knightwatch-protocol": ",".join("1" * 9), "x-knightwatch-version": "0.2"}),
    ("long-list", {"x-knightwatch-protocol": "1," + " " * 70 + "2", "x-knightwatch-version": "1"}),
    ("leading-zero", {"x-knightwatch-protocol": "02", "x-knightwatch-version": "0.2.0"}),
    ("no-version", {"x-knightwatch-protocol": "1,2"}),
    ("version-alone", {"x-knightwatch-version": "0.2.0"}),
    ("version-huge", {"x-knightwatch-protocol": "2", "x-knightwatch-version": "1" * 5000}),
    ("version-spaces", {"x-knightwatch-protocol": "2", "x-knightwatch-version": "0.2 beta"}),
    ("version-control", {"x-knightwatch-protocol": "2", "x-knightwatch-version": "0.2\x1b[31m"}),
    ("version-unicode", {"x-knightwatch-protocol": "2", "x-knightwatch-version": "0.2.\uff10"}),
    ("version-letter-first", {"x-knightwatch-protocol": "2", "x-knightwatch-version": "v0.2"}),
]


@pytest.mark.parametrize("headers", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_headers_are_refused_naming_the_header(headers: dict[str, str]) -> None:
    """Anything but a short list of small numbers and a plain version: one clear line."""
    with pytest.raises(ProtocolHeaderError) as caught:
        read_offer(headers)
    message = caught.value.message
    assert "X-Knightwatch-" in message and "\n" not in message
    assert len(message) < 300 and "\x1b" not in message
    assert caught.value.exit_code == 2


def test_spaces_and_repeats_in_the_list_are_tolerated() -> None:
    """`1, 2, 2` is still protocols 1 and 2."""
    offer = read_offer({"x-knightwatch-protocol": " 1, 2 ,2", "x-knightwatch-version": "0.2.0"})
    assert offer.protocols == (1, 2)


def test_the_agent_checks_the_protocol_the_server_chose() -> None:
    """No protocol in the Hello is a protocol-1 server; one the agent did not offer is refused."""
    assert chosen_protocol(None) == 1
    assert chosen_protocol(2) == 2
    with pytest.raises(ProtocolMismatchError, match="chose protocol 3"):
        chosen_protocol(3)
    with pytest.raises(ProtocolMismatchError, match="chose protocol 1"):
        chosen_protocol(None, (2,))


def test_a_protocol_1_hello_has_exactly_the_fields_of_0_1() -> None:
    """A protocol-1 agent refuses unknown fields: its greeting leaves the new ones out."""
    fields = {
        "node": "n1",
        "nonce": "x" * 24,
        "heartbeat_s": 1.0,
        "server_time": "2026-12-05T00:00:00Z",
    }
    legacy = Hello.model_validate(fields)
    assert '"protocol"' not in legacy.wire() and '"server_version"' not in legacy.wire()
    current = Hello.model_validate({**fields, "protocol": 2, "server_version": SERVER})
    back = parse_server_message(current.wire())
    assert isinstance(back, Hello)
    assert (back.protocol, back.server_version) == (2, SERVER)


def test_a_retrying_refused_agent_is_written_once_per_period_or_on_news() -> None:
    """Every try of a refused agent is not a store write: a new reason or 30 s is."""
    clock = VirtualClock()
    records = RefusalRecords(clock)
    assert records.due("n1", "speaks protocol 3")
    assert not records.due("n1", "speaks protocol 3")
    assert records.due("n2", "speaks protocol 3")  # another node is news
    assert records.due("n1", "speaks protocol 4")  # another reason is news
    clock.advance(RECORD_EVERY_S)
    assert records.due("n1", "speaks protocol 4")  # and so is time
    records.accepted("n1")
    assert records.due("n1", "speaks protocol 4")  # served in between: news again


OPEN_WITH_0_1_0 = """
import sys
from knightwatch.protocol.messages import Report
Report.model_validate_json(sys.stdin.read())
print("accepted")
"""


@pytest.mark.parametrize("adoption", [None, "adopted running service pid 7 (release x)"])
def test_a_protocol_1_report_is_one_0_1_0_accepts(
    adoption: str | None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """0.1.0's own Report model (extra fields forbidden) accepts what a protocol-1 session sends."""
    report = Report(
        node="node1",
        nonce="n" * 24,
        seq=1,
        sent_at=datetime.now(UTC),
        kind="inventory",
        state=NodeState(service=ServiceStatus(state=ServiceState.RUNNING, adoption=adoption)),
    )
    old = unpack_old_release(tmp_path_factory.mktemp("knightwatch-0.1.0"))

    def opened_by_0_1_0(document: dict[str, object]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", OPEN_WITH_0_1_0],
            input=json.dumps(document),
            env=old_env(old),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    legacy = opened_by_0_1_0(report_document(report, LEGACY_PROTOCOL))
    assert legacy.stdout.strip() == "accepted", legacy.stderr
    current = report_document(report, 2)
    assert "adoption" in current["state"]["service"]  # type: ignore[index]
    assert "Extra inputs are not permitted" in opened_by_0_1_0(current).stderr
