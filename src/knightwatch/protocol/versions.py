"""Protocol versions of the agent WebSocket, and how agent and server agree on one.

* Protocol 1 is what knightwatch 0.1.x speaks: the upgrade request carries
  no version, the server's ``Hello`` has exactly 0.1's fields (a 0.1 agent
  refuses a ``Hello`` with any other: its models forbid unknown fields).
* Protocol 2 (knightwatch 0.2): the agent states the protocols it speaks and
  its knightwatch version in the upgrade request (``X-Knightwatch-Protocol:
  1,2`` and ``X-Knightwatch-Version: 0.2.0``); the ``Hello`` names the
  protocol the server chose and the server's version. Every other message is
  protocol 1's.

A server serves each agent in the protocol chosen for its session: it never
sends a field or a message that protocol lacks (the agent's models refuse
them), which is why a later protocol is a number here and not a guess.

The server picks the highest protocol both speak (:func:`negotiate`); an
agent that sends no protocol header is a protocol-1 agent. An agent the
server cannot serve gets a ``refused`` message — the one message every
protocol shares, so any agent can read it — naming both versions and which
side to upgrade, and the connection is closed with :data:`CLOSE_UNSUPPORTED`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from knightwatch.errors import InvalidInputError, KnightwatchError

__all__ = [
    "ADOPTION_PROTOCOL",
    "CLOSE_BAD_HANDSHAKE",
    "CLOSE_UNSUPPORTED",
    "LEGACY_VERSION",
    "PROTOCOLS",
    "PROTOCOL_HEADER",
    "VERSION_HEADER",
    "Offer",
    "ProtocolHeaderError",
    "ProtocolMismatchError",
    "chosen_protocol",
    "negotiate",
    "offer_headers",
    "read_offer",
]

PROTOCOL_HEADER = "X-Knightwatch-Protocol"
VERSION_HEADER = "X-Knightwatch-Version"
PROTOCOLS: tuple[int, ...] = (1, 2)
"""The protocols this knightwatch speaks, oldest first."""
LEGACY_PROTOCOL = 1
ADOPTION_PROTOCOL = 2
"""The first protocol whose reports may say how the agent found its service at start."""
LEGACY_VERSION = "0.1.x"
"""The version of an agent (or server) that states none: it speaks protocol 1, so it is 0.1.x."""
CLOSE_UNSUPPORTED = 4426
"""WebSocket close code: the server speaks none of the agent's protocols (cf. HTTP 426)."""
CLOSE_BAD_HANDSHAKE = 4400
"""WebSocket close code: the agent's version headers are malformed."""
MAX_VERSION_CHARS = 32
MAX_OFFERED = 8
MAX_PROTOCOL_HEADER_CHARS = 64
_VERSION = re.compile(r"[0-9][0-9A-Za-z.+-]{0,31}")
_NUMBER = r"(?:0|[1-9][0-9]{0,2})"
_PROTOCOL_LIST = re.compile(rf" *{_NUMBER}(?: *, *{_NUMBER}){{0,{MAX_OFFERED - 1}}} *")


class ProtocolHeaderError(InvalidInputError):
    """An agent's version headers are malformed (too long, bad characters, not numbers)."""


class ProtocolMismatchError(KnightwatchError):
    """Agent and server speak no protocol in common: one of them must be upgraded."""


@dataclass(frozen=True)
class Offer:
    """What an agent says it speaks when it connects."""

    protocols: tuple[int, ...]
    """Every protocol it speaks, ascending (``(1,)`` for an agent that sends no header)."""
    version: str
    """Its knightwatch version (:data:`LEGACY_VERSION` when it states none)."""


def offer_headers(version: str, protocols: Sequence[int] = PROTOCOLS) -> dict[str, str]:
    """The upgrade request's headers stating ``protocols`` and knightwatch ``version``."""
    return {
        PROTOCOL_HEADER: ",".join(str(p) for p in protocols),
        VERSION_HEADER: version,
    }


def read_offer(headers: Mapping[str, str]) -> Offer:
    """The agent's offer from its upgrade request's headers (names in lower case).

    Raises :class:`ProtocolHeaderError` naming the header for anything but a
    short list of small numbers and a short version of letters, digits and
    ``.+-``: the headers are the first thing a stranger with a stolen
    credential can send, so nothing else is read from them.
    """
    protocols = headers.get(PROTOCOL_HEADER.lower())
    version = headers.get(VERSION_HEADER.lower())
    if protocols is None:
        if version is not None:
            raise ProtocolHeaderError(
                f"{VERSION_HEADER} {_quoted(version)} without {PROTOCOL_HEADER}: "
                "an agent that states its version states its protocols too"
            )
        return Offer((LEGACY_PROTOCOL,), LEGACY_VERSION)
    offered = _protocols(protocols)
    if version is None:
        raise ProtocolHeaderError(f"{PROTOCOL_HEADER} without {VERSION_HEADER}")
    if not _VERSION.fullmatch(version):
        raise ProtocolHeaderError(
            f"{VERSION_HEADER} {_quoted(version)} is not a knightwatch version "
            f"(a digit, then up to {MAX_VERSION_CHARS - 1} of 0-9 A-Z a-z . + -)"
        )
    return Offer(offered, version)


def _protocols(value: str) -> tuple[int, ...]:
    if len(value) > MAX_PROTOCOL_HEADER_CHARS or not _PROTOCOL_LIST.fullmatch(value):
        raise ProtocolHeaderError(
            f"{PROTOCOL_HEADER} {_quoted(value)} is not a list of protocol versions "
            f"(up to {MAX_OFFERED} numbers 0-999 separated by commas, e.g. '1,2')"
        )
    return tuple(sorted({int(part) for part in value.split(",")}))


def _quoted(value: str) -> str:
    """A header value fit for a log line: ASCII-escaped, at most 40 characters shown."""
    shown = ascii(value[:40])
    return shown + ("…" if len(value) > 40 else "")


def negotiate(offer: Offer, server_version: str, supported: Sequence[int] = PROTOCOLS) -> int:
    """The highest protocol both speak; ProtocolMismatchError naming both versions if none."""
    common = set(offer.protocols) & set(supported)
    if common:
        return max(common)
    advice = (
        "upgrade the control plane first"
        if max(offer.protocols) > max(supported)
        else "upgrade the agent"
    )
    raise ProtocolMismatchError(
        f"agent knightwatch {offer.version} speaks protocol {_span(offer.protocols)}; "
        f"this server ({server_version}) speaks {_span(supported)}: {advice}",
        hint="agents and control plane must share a protocol; see docs/design.md (Version skew)",
    )


def chosen_protocol(chosen: int | None, offered: Sequence[int] = PROTOCOLS) -> int:
    """The protocol a ``Hello`` names (None: a protocol-1 server, which names none).

    ProtocolMismatchError if the server chose one the agent did not offer.
    """
    protocol = LEGACY_PROTOCOL if chosen is None else chosen
    if protocol not in offered:
        raise ProtocolMismatchError(
            f"the server chose protocol {protocol}, which this agent does not speak "
            f"(it speaks {_span(offered)})"
        )
    return protocol


def _span(protocols: Sequence[int]) -> str:
    """``3``, ``1-2`` or ``1,3``: a list of protocol versions as written in messages."""
    ordered = sorted(set(protocols))
    if len(ordered) > 1 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}"
    return ",".join(str(p) for p in ordered)
