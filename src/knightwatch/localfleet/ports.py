"""Ports for local fleets, claimed machine-wide so that two fleets never share one.

A fleet picks its server's and its services' ports when it is made, but a
service binds its port only when it starts, perhaps minutes later, and a
server restarted by a test leaves its port unbound in between. A port that
was free when picked could meanwhile be picked by another fleet on the
machine (parallel test workers, a second ``fleet up``), and the later of the
two failed with "Address already in use", or a health check reached the
other fleet's service. So every port a fleet picks is claimed: a file named
by the port in a directory all fleets share, created exclusively, holding
the fleet's directory. ``down`` releases the fleet's claims; a claim whose
fleet left no state behind, or older than a day, is taken over.

The ports come from below Linux's ephemeral range (32768 up), where the
kernel never hands one out for an outgoing connection or a ``bind`` to port 0.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import tempfile
import time
from pathlib import Path

from knightwatch.errors import KnightwatchError
from knightwatch.localfleet.fleetfile import FLEET_FILE

__all__ = ["CLAIMS", "PORTS", "claim_port", "release_ports"]

CLAIMS = Path(tempfile.gettempdir()) / "knightwatch-fleet-ports"
"""One file per claimed port, holding the claiming fleet's directory."""
PORTS = range(20000, 32768)
GRACE_S = 600.0
"""A claim this young is never taken over: its fleet may not have written its state yet."""
MAX_AGE_S = 86_400.0


def claim_port(owner: Path, *, attempts: int = 500) -> int:
    """Claim a port no other local fleet holds and nothing listens on, for fleet ``owner``."""
    CLAIMS.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        port = secrets.choice(PORTS)
        if _listening(port) or not _take(CLAIMS / str(port), owner):
            continue
        if _listening(port):  # bound between the look and the claim: keep looking
            (CLAIMS / str(port)).unlink(missing_ok=True)
            continue
        return port
    raise KnightwatchError(
        f"no free port left for a local fleet in {PORTS.start}-{PORTS.stop - 1}",
        hint=f"stop fleets you no longer need (knightwatch fleet down); claims: {CLAIMS}",
    )


def release_ports(owner: Path) -> None:
    """Give back every port fleet ``owner`` claimed."""
    with contextlib.suppress(FileNotFoundError):
        for claim in CLAIMS.iterdir():
            if _owner(claim) == str(owner):
                claim.unlink(missing_ok=True)


def _take(claim: Path, owner: Path) -> bool:
    try:
        fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        if _abandoned(claim):
            claim.unlink(missing_ok=True)  # free for a later pick; this one looks on
        return False
    with os.fdopen(fd, "w") as out:
        out.write(str(owner))
    return True


def _abandoned(claim: Path) -> bool:
    """A claim whose fleet left no state behind (past the grace), or older than a day."""
    try:
        age = time.time() - claim.stat().st_mtime
    except FileNotFoundError:
        return True
    if age < GRACE_S:
        return False
    holder = _owner(claim)
    return age > MAX_AGE_S or not holder or not (Path(holder) / FLEET_FILE).exists()


def _owner(claim: Path) -> str:
    try:
        return claim.read_text().strip()
    except OSError:
        return ""


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
