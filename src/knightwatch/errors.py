"""The one exception tree of knightwatch.

Every error a user can see is a :class:`KnightwatchError`. Its message is
written for the user, ``hint`` says what to do next, and ``exit_code`` is the
status the CLI exits with::

    KnightwatchError                  exit 1  anything that went wrong
    ├── InvalidInputError             exit 2  refused before anything changed
    │   ├── SpecError                         knightwatch.toml is malformed
    │   ├── SourceTreeError                   a source tree breaks a build rule
    │   │   └── FlagScanError                 (cli.flagscan) code reads an undeclared flag
    │   ├── KeyFileError                      a signing key is missing or malformed
    │   ├── NotFoundError                     the thing named does not exist (HTTP 404)
    │   │   ├── ReleaseNotFoundError          no release matches a reference
    │   │   ├── BlobNotFoundError             no blob has a digest
    │   │   └── AlertNotFoundError            (control.alerts) no alert has an id
    │   ├── RequestTooLargeError              (api.errors) a request body over its limit
    │   ├── UnexpectedAnswerError             (client) the server's answer is not ours
    │   ├── UserExistsError                   (control.users) a user name is taken (HTTP 409)
    │   ├── MarketInputError                  (sim.market) the exchange refused an order
    │   ├── AgentSetupError                   (agent.errors) the agent cannot start as asked
    │   └── ProtocolHeaderError               (protocol.versions) an agent's version header is bad
    ├── GateRefusedError              exit 2  a safety gate refused the operation
    │   └── PolicyRefusedError                the safety policy refused it, every reason listed
    ├── VerificationError             exit 1  bytes or signatures do not match
    ├── StoreError                    exit 1  the disk or database failed us
    │   └── SchemaTooNewError                 the database was written by a newer knightwatch
    ├── AuthenticationError           exit 1  (control.enrollment) a credential was refused
    ├── PermissionDeniedError         exit 2  (control.users) the user's role does not allow it
    │   └── CsrfRefusedError                  (server.web_sessions) no CSRF token from the dashboard
    ├── IllegalTransitionError        exit 1  (control.states) an undeclared move (a bug)
    ├── ReportError                   exit 1  (protocol.reports) an agent report was refused
    ├── ProtocolMismatchError         exit 1  (protocol.versions) agent and server share no protocol
    ├── WaitTimedOutError             exit 1  (polling) a condition did not hold in time
    ├── FleetError                    exit 1  (localfleet) a local fleet did not start
    ├── DrillError                    exit 1  (sim.drill.links) a drill could not do a step
    ├── SwarmError                    exit 1  (swarm.swarm) hollow agents could not be enrolled
    ├── AgentError                    exit 1  (agent.errors) the agent failed at its work
    │   ├── AgentTransportError               the control plane cannot be reached
    │   ├── ServiceError                      the service cannot be run as specified
    │   ├── StagingError                      a release cannot be staged or verified
    │   │   └── StagingCancelledError         (agent.fetch) staging was cancelled
    │   ├── SwitchError                       `current` cannot be switched
    │   └── CgroupUnavailableError            no cgroup can be created for the service
    ├── AuditFailedError              exit 1  (cli.audit) an audit found problems
    ├── AuditLogBrokenError           exit 1  (cli.auditlog) the audit log does not verify
    ├── DeploymentFailedError         exit 1  (cli.deploy) a deployment did not succeed
    ├── FlagAcksMissingError          exit 1  (cli.flagstages) a node did not confirm a flag
    ├── HaltUnacknowledgedError       exit 1  (cli.halting) a node did not confirm its halt
    ├── RearmIncompleteError          exit 1  (cli.killswitch) a node did not restart
    └── RetirementIncompleteError     exit 1  (cli.release) a node did not verify absence

A class defined outside this module names its module in parentheses
(relative to ``knightwatch``). tests/unit/test_errors.py checks that this
drawing is the real class tree, exit codes included, so it cannot go stale.

Foreign errors (OSError, sqlite3, httpx …) are translated at the boundary
with ``raise … from exc`` so the user never sees a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BlobNotFoundError",
    "GateRefusedError",
    "InvalidInputError",
    "KeyFileError",
    "KnightwatchError",
    "NotFoundError",
    "PolicyRefusedError",
    "Refusal",
    "ReleaseNotFoundError",
    "SourceTreeError",
    "SpecError",
    "StoreError",
    "VerificationError",
]


class KnightwatchError(Exception):
    """Root of every error knightwatch raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InvalidInputError(KnightwatchError):
    """An input was refused before anything was changed."""

    exit_code = 2


class SpecError(InvalidInputError):
    """A ``knightwatch.toml`` release spec is malformed; names the file and key."""

    def __init__(
        self, message: str, *, file: str, key: str | None = None, hint: str | None = None
    ) -> None:
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + message, hint=hint)
        self.file = file
        self.key = key


class SourceTreeError(InvalidInputError):
    """A file in a source tree breaks a build rule; names the path and the rule."""

    def __init__(self, path: str, rule: str, *, hint: str | None = None) -> None:
        super().__init__(f"{path}: {rule}", hint=hint)
        self.path = path
        self.rule = rule


class KeyFileError(InvalidInputError):
    """A signing or trust key is missing, unreadable or not an Ed25519 key."""


class NotFoundError(InvalidInputError):
    """The thing the user named (a release, blob, node, alert, audit, halt) does not exist."""


class ReleaseNotFoundError(NotFoundError):
    """No release in a store matches the reference the user gave."""

    def __init__(self, ref: str, *, hint: str | None = None, message: str | None = None) -> None:
        super().__init__(message or f"no release matches {ref!r}", hint=hint)
        self.ref = ref


class BlobNotFoundError(NotFoundError):
    """No blob in the store has this digest."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"no blob {digest}")
        self.digest = digest


class GateRefusedError(KnightwatchError):
    """A safety gate refused the operation; nothing was changed.

    It exits 2, like refused input: either way the operation was refused before
    anything changed (a script tells them apart by the JSON ``kind``).
    """

    exit_code = 2


@dataclass(frozen=True)
class Refusal:
    """One reason the safety policy refuses an action: which check, why, about what, what to do."""

    check: str
    reason: str
    subjects: tuple[str, ...] = field(default=())
    """The nodes, alert ids (``#7``) or releases the reason is about."""
    hint: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the refusal as plain JSON data (the API's and ``--json``'s shape)."""
        return {
            "check": self.check,
            "reason": self.reason,
            "subjects": list(self.subjects),
            "hint": self.hint,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Refusal:
        """Read a refusal back from :meth:`to_json`'s shape."""
        hint = data.get("hint")
        return cls(
            check=str(data["check"]),
            reason=str(data["reason"]),
            subjects=tuple(str(s) for s in data.get("subjects") or ()),
            hint=None if hint is None else str(hint),
        )


class PolicyRefusedError(GateRefusedError):
    """The safety policy refused an action; ``refusals`` holds every reason, not just the first."""

    def __init__(self, action: str, refusals: Sequence[Refusal]) -> None:
        self.action = action
        self.refusals = list(refusals)
        reasons = [r.reason for r in self.refusals]
        hints = list(dict.fromkeys(r.hint for r in self.refusals if r.hint))
        if len(reasons) == 1:
            message = f"{action} refused: {reasons[0]}"
        else:
            message = f"{action} refused for {len(reasons)} reasons: " + "; ".join(reasons)
        super().__init__(message, hint="; ".join(hints) or None)


class VerificationError(KnightwatchError):
    """Bytes, digests or signatures do not match what was recorded."""

    def __init__(self, release: str, problems: Sequence[str]) -> None:
        count = len(problems)
        super().__init__(
            f"{release}: {count} verification problem{'s' if count != 1 else ''}",
            hint="do not deploy this release; rebuild it or restore the store from a good copy",
        )
        self.release = release
        self.problems = list(problems)


class StoreError(KnightwatchError):
    """The blob store, release store or database could not be read or written."""


class SchemaTooNewError(StoreError):
    """The database's schema is newer than this knightwatch: a downgrade, never attempted."""

    def __init__(self, revision: str, head: str, version: str) -> None:
        super().__init__(
            f"the database's schema is at {revision}, which this knightwatch "
            f"({version}, schema {head}) does not know: it was written by a newer "
            "version, and a downgrade is never attempted",
            hint="run the knightwatch version that wrote it (or newer), "
            "or restore the backup taken before the upgrade",
        )
        self.revision = revision
        self.head = head
