"""The configuration audit on the wire: findings, the node's audit status, audits on demand.

An agent proves continuously what it runs (P2). Every heartbeat carries its
:class:`AuditStatus` — the drift it sees right now, as :class:`Finding`\\ s —
and a change of drift is reported at once (report kind ``drift``). An
operator's audit is an :class:`AuditRequest` down and an :class:`AuditResult`
up; a retirement is a :class:`Retire` down and a :class:`RetireResult` up.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from knightwatch.protocol.bounds import MAX_INT
from knightwatch.vocabulary import Severity

__all__ = [
    "MAX_FINDINGS_IN_HEARTBEAT",
    "MAX_FINDINGS_IN_RESULT",
    "AbsentPath",
    "AuditRequest",
    "AuditResult",
    "AuditStatus",
    "CheckOutcome",
    "Finding",
    "FindingKind",
    "Retire",
    "RetireResult",
    "Severity",
]

MAX_FINDINGS_IN_HEARTBEAT = 100
MAX_FINDINGS_IN_RESULT = 2000
Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Text = Annotated[str, Field(max_length=2000)]
RelPath = Annotated[str, Field(min_length=1, max_length=4096)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FindingKind(StrEnum):
    """What kind of difference between desired and actual state a finding is."""

    MODIFIED = "modified"
    """A file's bytes differ from the manifest."""
    MISSING = "missing"
    UNMANAGED = "unmanaged"
    """A path under the release that the release does not contain."""
    MODE = "mode"
    TYPE = "type"
    """A path is of another kind than the manifest says (a symlink instead of a file, …)."""
    SYMLINK = "symlink"
    """A symlink points elsewhere than the manifest says."""
    CURRENT = "current"
    """``current`` does not point at the active release."""
    STALE_PROCESS = "stale-process"
    UNMANAGED_PROCESS = "unmanaged-process"
    VERSION = "version"
    """The service reports another version than the active release."""
    FUNCTIONAL = "functional"
    """A health or smoke check fails (not drift by itself: the service is unhealthy)."""
    RETIRED_PRESENT = "retired-present"
    """A file of a retired component is still on the node."""
    AUDIT_ERROR = "audit-error"
    """The audit itself could not look (unreadable tree, lost watcher)."""


class Finding(_Message):
    """One difference between what should be on the node and what is."""

    kind: FindingKind
    severity: Severity
    detail: Text
    path: RelPath | None = None
    expected: Annotated[str, Field(max_length=4096)] | None = None
    actual: Annotated[str, Field(max_length=4096)] | None = None
    pid: Annotated[int, Field(ge=1, le=MAX_INT)] | None = None

    @property
    def is_drift(self) -> bool:
        """True unless the finding only says the service is unhealthy."""
        return self.kind is not FindingKind.FUNCTIONAL


class AuditStatus(_Message):
    """The continuous audit as of now: what the agent watches and the drift it sees."""

    release: Digest | None = None
    watching: bool = False
    """True while the file watcher (inotify) runs on the active tree."""
    files: Annotated[int, Field(ge=0, le=MAX_INT)] = 0
    last_sweep_at: datetime | None = None
    """When every file of the active tree was last checked (hashed, or its hash proof held)."""
    last_process_check_at: datetime | None = None
    last_functional_check_at: datetime | None = None
    findings: Annotated[list[Finding], Field(max_length=MAX_FINDINGS_IN_HEARTBEAT)] = []
    total: Annotated[int, Field(ge=0, le=MAX_INT)] = 0
    """How many findings there are (``findings`` holds the most severe first)."""


class AbsentPath(_Message):
    """A path that must not exist in the active tree: it belonged to a retired component."""

    component: Annotated[str, Field(max_length=255)]
    path: RelPath


class AuditRequest(_Message):
    """Audit now: re-hash every file, check processes, run the functional checks."""

    type: Literal["audit"] = "audit"
    audit_id: Annotated[int, Field(ge=1, le=MAX_INT)]
    absent: Annotated[list[AbsentPath], Field(max_length=20000)] = []


class CheckOutcome(_Message):
    """One functional check and its result."""

    name: Annotated[str, Field(max_length=255)]
    ok: bool
    detail: Text | None = None


class AuditResult(_Message):
    """A node's answer to an :class:`AuditRequest`."""

    audit_id: Annotated[int, Field(ge=1, le=MAX_INT)]
    release: Digest | None
    started_at: datetime
    finished_at: datetime
    files: Annotated[int, Field(ge=0, le=MAX_INT)]
    bytes_hashed: Annotated[int, Field(ge=0, le=MAX_INT)]
    processes_checked: Annotated[int, Field(ge=0, le=MAX_INT)]
    checks: Annotated[list[CheckOutcome], Field(max_length=300)] = []
    findings: Annotated[list[Finding], Field(max_length=MAX_FINDINGS_IN_RESULT)] = []
    total: Annotated[int, Field(ge=0, le=MAX_INT)] = 0


class Retire(_Message):
    """Delete a retired release's tree and verify that it is gone."""

    type: Literal["retire"] = "retire"
    retirement_id: Annotated[int, Field(ge=1, le=MAX_INT)]
    digest: Digest


class RetireResult(_Message):
    """Whether the retired release is verifiably absent from the node."""

    retirement_id: Annotated[int, Field(ge=1, le=MAX_INT)]
    digest: Digest
    absent: bool
    detail: Text
