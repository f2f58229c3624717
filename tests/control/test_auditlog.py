"""The audit log on both engines: a hash chain whose every broken link is named, checkpoints that
catch a rewritten or truncated chain, and appends from two processes that never fork it."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, text, update

from knightwatch.control import auditlog
from knightwatch.server.checkpoints import CheckpointLog, checkpoint_problems
from knightwatch.store import AuditLogEntry, Database
from tests.databases import Target

T0 = datetime(2012, 8, 1, 9, 30, tzinfo=UTC)


def fill(db: Database, count: int, start: int = 0) -> None:
    """Append ``count`` entries, one transaction each, as state changes do."""
    for i in range(start, start + count):
        with db.session() as session:
            auditlog.append(
                session,
                actor=f"user{i % 3}",
                action="flag.set",
                obj=f"flag{i}",
                at=T0 + timedelta(seconds=i),
                payload={"i": i, "text": "ünïcode ✓", "n": None},
            )


def verify(db: Database) -> auditlog.ChainReport:
    with db.reading() as session:
        return auditlog.verify_chain(session)


def test_an_intact_chain_verifies(db: Database) -> None:
    """Entries 1..n, each linked to the one before; the report names the head."""
    fill(db, 5)
    report = verify(db)
    assert report.ok and (report.entries, report.head_seq) == (5, 5)
    with db.reading() as session:
        assert next(auditlog.iter_entries(session)).prev_hash == auditlog.GENESIS


@pytest.mark.parametrize(
    ("column", "value"),
    [("actor", "mallory"), ("payload", '{"i":999}'), ("action", "flag.retire"), ("object", "x")],
)
def test_an_edited_row_is_named(db: Database, column: str, value: str) -> None:
    """A row changed in the database directly: verify names exactly that entry."""
    fill(db, 6)
    with db.session() as session:
        session.execute(update(AuditLogEntry).where(AuditLogEntry.seq == 4).values({column: value}))
    report = verify(db)
    assert not report.ok and report.broken_seq == 4
    assert "entry 4 was changed" in str(report.problem)


def test_a_deleted_middle_row_and_a_rehashed_row_are_named(db: Database) -> None:
    """Deleting entry 3 leaves a gap; recomputing 3's hash breaks 4's link."""
    fill(db, 5)
    with db.session() as session:
        session.execute(delete(AuditLogEntry).where(AuditLogEntry.seq == 3))
    report = verify(db)
    assert report.broken_seq == 4 and "entry 3 is missing" in str(report.problem)


def test_a_rewritten_or_truncated_chain_is_caught_by_the_checkpoints(
    db: Database, tmp_path: Path
) -> None:
    """The last rows deleted (the chain itself still holds) or the whole chain rewritten:
    the signed checkpoint no longer agrees; a checkpoint signed by another key is named."""
    fill(db, 6)
    log = CheckpointLog(tmp_path / "cp" / "checkpoints.jsonl", tmp_path / "cp" / "key.pem")
    with db.reading() as session:
        head = auditlog.head(session)
        assert head is not None
        log.write(head.seq, head.hash, T0)
    found, unreadable = log.read()
    assert unreadable == [] and checkpoint_problems(verify(db), found, log.public_key) == []
    with db.session() as session:
        session.execute(delete(AuditLogEntry).where(AuditLogEntry.seq > 4))
    report = verify(db)
    assert report.ok  # the chain alone cannot tell
    (problem,) = checkpoint_problems(report, found, log.public_key)
    assert "ends at entry 4" in problem and "recorded entry 6" in problem
    fill(db, 2, start=100)  # rewritten: entries 5 and 6 again, with other content
    (problem,) = checkpoint_problems(verify(db), found, log.public_key)
    assert "entry 6 differs" in problem
    other = CheckpointLog(tmp_path / "other.jsonl", tmp_path / "other.pem")
    (problem,) = checkpoint_problems(verify(db), found, other.public_key)
    assert "not signed" in problem


APPENDER = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from knightwatch.control import auditlog
from knightwatch.store import open_database
db = open_database(sys.argv[1] or None, Path(sys.argv[2]))
for i in range(int(sys.argv[3])):
    with db.session() as session:
        auditlog.append(session, actor=sys.argv[4], action="test.append", obj=str(i),
                        at=datetime.now(UTC))
db.close()
"""


def test_two_processes_appending_at_once_never_fork_the_chain(target: Target) -> None:
    """Two control-plane processes append 60 entries each at once: 120 entries, one chain."""
    target.open().close()  # migrated before the race
    argv = [sys.executable, "-c", APPENDER, target.url or "", str(target.data_dir), "60"]
    processes = [
        subprocess.Popen([*argv, name], stderr=subprocess.PIPE, text=True)
        for name in ("plane-a", "plane-b")
    ]
    failures = [p.stderr.read() for p in processes if p.stderr and p.wait(120) != 0]
    for process in processes:
        if process.stderr:
            process.stderr.close()
    assert failures == []
    with target.open() as db:
        report = verify(db)
    assert report.ok and report.entries == 120


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payloads=st.lists(
        st.dictionaries(
            st.text(max_size=8),
            st.one_of(st.integers(), st.text(max_size=20), st.booleans(), st.none()),
            max_size=4,
        ),
        min_size=1,
        max_size=8,
    ),
    victim=st.integers(min_value=0, max_value=7),
)
def test_any_single_edit_is_found_where_it_was_made(
    db: Database, payloads: list[dict[str, object]], victim: int
) -> None:
    """Property: for any chain, changing any one entry's payload breaks verification at it."""
    with db.session() as session:
        session.execute(delete(AuditLogEntry))
    for i, payload in enumerate(payloads):
        with db.session() as session:
            auditlog.append(session, actor="p", action="a", obj=str(i), at=T0, payload=payload)
    assert verify(db).ok
    seq = victim % len(payloads) + 1
    with db.session() as session:
        session.execute(
            text("UPDATE audit_log SET payload = :p WHERE seq = :s"),
            {"p": '{"edited":true}', "s": seq},
        )
    report = verify(db)
    assert not report.ok and report.broken_seq == seq
