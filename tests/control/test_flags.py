"""The flag registry and values on a real store (SQLite and PostgreSQL): P3 and P4.

Names are never reused, meanings never change, and a value changes only when
every node in scope runs one release that declares the flag — each refusal
naming its nodes; a kill flag's safe side is never blocked.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from knightwatch.bundle.spec import FlagSpec
from knightwatch.clock import VirtualClock
from knightwatch.control.flags.model import Scope, parse_lifetimes, parse_value
from knightwatch.control.flags.registry import (
    amend_flag,
    create_flag,
    declaration_refusals,
    declare_release_flags,
    retire_flag,
)
from knightwatch.control.flags.values import change_acks, set_flag_value, values_for_node
from knightwatch.control.flags.views import stale_flags
from knightwatch.errors import InvalidInputError, NotFoundError, PolicyRefusedError
from knightwatch.store import Database, FlagChange, FlagValue, Node, Release
from knightwatch.store.queries import get_fleet
from knightwatch.vocabulary import FlagKind, FlagType
from tests.helpers import release_row

OLD, NEW = "a" * 64, "b" * 64
NODES = ("node1", "node2", "node3")
RLP = FlagSpec(name="rlp", kind="release", description="Retail Liquidity Program", default=False)
HALT = FlagSpec(name="smars.halt", kind="kill", description="stop new orders", default=False)
PEG = FlagSpec(name="power_peg", kind="release", description="Power Peg", default=False)


@pytest.fixture
def clock() -> VirtualClock:
    """2012-08-01 09:30 UTC, moved only by the test."""
    return VirtualClock(datetime(2012, 8, 1, 9, 30, tzinfo=UTC))


def _declare(db: Database, release: Release, specs: list[FlagSpec], now: datetime) -> list[str]:
    manifest: Any = SimpleNamespace(spec=SimpleNamespace(flag=specs))
    with db.session() as session:
        row = session.merge(release)
        return declare_release_flags(session, row, manifest, at=now, actor="ci")


@pytest.fixture
def db(db: Database, clock: VirtualClock) -> Database:
    """node1, node2 on NEW (declares rlp and the kill flag); node3 on OLD (declares power_peg)."""
    now = clock.now()
    _declare(db, release_row(OLD, "2003", now), [PEG], now)
    _declare(db, release_row(NEW, "2012", now), [RLP, HALT], now)
    with db.session() as session:
        get_fleet(session, now=now)  # as on a running plane: the row exists
        for name in NODES:
            digest = OLD if name == "node3" else NEW
            session.add(
                Node(
                    name=name,
                    status="enrolled",
                    created_at=now,
                    connected=True,
                    group_name="east" if name != "node3" else "west",
                    active_digest=digest,
                    desired_digest=digest,
                    service_state="running",
                )
            )
    return db


def set_value(db: Database, clock: VirtualClock, name: str, scope: str, value: object) -> Any:
    with db.session() as session:
        return set_flag_value(session, name, scope, value, actor="ops", reason="", at=clock.now())


def checks(exc: PolicyRefusedError) -> dict[str, tuple[str, ...]]:
    return {r.check: r.subjects for r in exc.refusals}


class TestRegistry:
    def test_a_push_registers_new_flags_once(self, db: Database, clock: VirtualClock) -> None:
        """The first release to declare a name registers it; a later one only declares it."""
        assert _declare(db, release_row("c" * 64, "3", clock.now()), [RLP], clock.now()) == []

    def test_a_changed_meaning_is_refused_naming_what_changed(self, db: Database) -> None:
        """Another description, kind or type: "would change meaning", every difference listed."""
        reworded = FlagSpec(name="rlp", kind="ops", description="RLP v2", default=0)
        with db.session() as session:
            (refusal,) = declaration_refusals(session, [reworded])
        assert refusal.check == "flag-meaning-fixed"
        assert "would change meaning" in refusal.reason
        for part in ("kind release → ops", "type boolean → integer", "description differs"):
            assert part in refusal.reason

    def test_a_retired_name_is_reserved_forever(self, db: Database, clock: VirtualClock) -> None:
        """Retired: declaring or creating it again is refused, naming when and why."""
        with db.session() as session:
            retire_flag(session, "power_peg", reason="dead since 2003", at=clock.now(), actor="x")
        with db.session() as session:
            (refusal,) = declaration_refusals(session, [PEG])
            assert "retired on 2012-08-01" in refusal.reason and "dead since 2003" in refusal.reason
            with pytest.raises(InvalidInputError, match="reserved forever"):
                create_flag(
                    session,
                    name="power_peg",
                    kind=FlagKind.OPS,
                    description="d",
                    default=True,
                    owner=None,
                    lifetime_days=None,
                    at=clock.now(),
                    actor="x",
                )

    def test_amend_records_the_old_wording(self, db: Database, clock: VirtualClock) -> None:
        """A wording fix needs a reason and becomes the meaning the next push must match."""
        with db.session() as session:
            amend_flag(
                session,
                "rlp",
                description="Retail Liquidity Program routing",
                reason="wording",
                at=clock.now(),
                actor="ann",
            )
        with db.session() as session:
            assert declaration_refusals(session, [RLP])  # the old wording now differs
            change = session.query(FlagChange).filter_by(kind="amend").one()
            assert json.loads(change.old_value or "") == "Retail Liquidity Program"
            with pytest.raises(InvalidInputError, match="reason"):
                amend_flag(session, "rlp", description="x", reason=" ", at=clock.now(), actor="a")

    @pytest.mark.parametrize("name", ["../etc", "a/b", "x\x00y", "A", "a" * 10_000, ""])
    def test_hostile_names_are_refused(self, db: Database, clock: VirtualClock, name: str) -> None:
        """Path separators, NUL, upper case, 10 KB, empty: refused, nothing registered."""
        with db.session() as session, pytest.raises(InvalidInputError, match="not a flag name"):
            create_flag(
                session,
                name=name,
                kind=FlagKind.OPS,
                description="d",
                default=1,
                owner=None,
                lifetime_days=None,
                at=clock.now(),
                actor="x",
            )


class TestGate:
    def test_the_old_release_refuses_naming_the_node(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """node3 runs OLD, which does not declare rlp: refused with both reasons, naming node3."""
        with pytest.raises(PolicyRefusedError) as refused:
            set_value(db, clock, "rlp", "fleet", True)
        found = checks(refused.value)
        assert found["release-declares-flag"] == ("node3",)
        assert found["scope-converged"] == ("node3",)
        with db.session() as session:
            assert session.query(FlagValue).count() == 0

    def test_a_scope_on_one_release_is_accepted(self, db: Database, clock: VirtualClock) -> None:
        """group:east runs NEW only: set, version raised, node1 and node2 told, none acked yet."""
        plan = set_value(db, clock, "rlp", "group:east", True)
        assert [node for node, _ in plan.messages] == ["node1", "node2"]
        assert plan.messages[0][1].values["rlp"].value is True
        with db.session() as session:
            change = session.get_one(FlagChange, plan.change_id)
            assert change_acks(session, change) == ([], ["node1", "node2"])
            session.get_one(Node, "node1").flags_version = plan.version
        with db.session() as session:
            change = session.get_one(FlagChange, plan.change_id)
            assert change_acks(session, change) == (["node1"], ["node2"])

    def test_every_reason_is_listed(self, db: Database, clock: VirtualClock) -> None:
        """Disconnected, halted and drifted nodes in scope: each reason names its node."""
        with db.session() as session:
            session.get_one(Node, "node1").connected = False
            node2 = session.get_one(Node, "node2")
            node2.halted, node2.drift_state = True, "drifted"
        with pytest.raises(PolicyRefusedError) as refused:
            set_value(db, clock, "rlp", "group:east", True)
        found = checks(refused.value)
        assert found["nodes-connected"] == ("node1",)
        assert found["nodes-not-halted"] == ("node2",)
        assert found["no-drift"] == ("node2",)

    def test_drift_outside_the_scope_does_not_refuse(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """node3 (group west) drifted: group:east may still change; the fleet may not."""
        with db.session() as session:
            session.get_one(Node, "node3").drift_state = "drifted"
        set_value(db, clock, "rlp", "group:east", True)
        with pytest.raises(PolicyRefusedError) as refused:
            set_value(db, clock, "smars.halt", "fleet", True)
        assert checks(refused.value)["no-drift"] == ("node3",)

    def test_a_kill_flag_to_its_safe_side_is_never_blocked(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """The kill flag back to its default goes through a mixed fleet; the other way does not."""
        set_value(db, clock, "smars.halt", "fleet", False)
        with pytest.raises(PolicyRefusedError):
            set_value(db, clock, "smars.halt", "fleet", True)

    def test_a_wrong_type_or_scope_is_refused(self, db: Database, clock: VirtualClock) -> None:
        """A string for a boolean, an unknown scope or node: refused before the policy."""
        with pytest.raises(InvalidInputError, match="not a boolean"):
            set_value(db, clock, "rlp", "group:east", "yes")
        with pytest.raises(InvalidInputError, match="not a flag scope"):
            set_value(db, clock, "rlp", "galaxy", True)
        with pytest.raises(InvalidInputError, match="no enrolled node"):
            set_value(db, clock, "rlp", "node:node9", True)
        with pytest.raises(NotFoundError):
            set_value(db, clock, "nope", "fleet", True)

    def test_the_narrowest_scope_wins(self, db: Database, clock: VirtualClock) -> None:
        """group:east true, node:node2 false: node1 sees true (group), node2 false (node)."""
        set_value(db, clock, "rlp", "group:east", True)
        set_value(db, clock, "rlp", "node:node2", False)
        with db.session() as session:
            one = values_for_node(session, session.get_one(Node, "node1"))
            two = values_for_node(session, session.get_one(Node, "node2"))
        assert (one.values["rlp"].value, one.values["rlp"].source) == (True, "group:east")
        assert (two.values["rlp"].value, two.values["rlp"].source) == (False, "node:node2")
        assert one.version == two.version == 2


class TestLifetimes:
    def test_stale_flags_say_why(self, db: Database, clock: VirtualClock) -> None:
        """41 days on: rlp is past a release flag's 40 days; the kill flag never ages."""
        clock.advance(timedelta(days=41).total_seconds())
        with db.session() as session:
            rows = {
                r["name"]: r["reasons"]
                for r in stale_flags(
                    session, clock.now(), constant_days=30, lifetimes=parse_lifetimes("")
                )
            }
        assert any("past its expected lifetime" in r for r in rows["rlp"])
        assert not any("lifetime" in r for r in rows["smars.halt"])
        assert "never evaluated" in rows["smars.halt"]

    def test_lifetimes_are_configurable(self) -> None:
        """release=10,kill=never over the defaults; nonsense refused."""
        lifetimes = parse_lifetimes("release=10,ops=never")
        assert lifetimes[FlagKind.RELEASE] == timedelta(days=10)
        assert lifetimes[FlagKind.OPS] is None
        assert lifetimes[FlagKind.EXPERIMENT] == timedelta(days=40)
        with pytest.raises(InvalidInputError):
            parse_lifetimes("forever=1")


def test_values_parse_by_type() -> None:
    """Command-line values parse by the flag's type; NaN, huge and NUL refused."""
    assert parse_value("true", FlagType.BOOLEAN) is True
    assert parse_value("3", FlagType.FLOAT) == 3.0
    assert parse_value("true", FlagType.STRING) == "true"
    for text, kind in (
        ("NaN", FlagType.FLOAT),
        ("1e999", FlagType.FLOAT),
        (str(2**64), FlagType.INTEGER),
        ("1", FlagType.BOOLEAN),
    ):
        with pytest.raises(InvalidInputError):
            parse_value(text, kind)
    with pytest.raises(InvalidInputError):
        parse_value("a\x00b", FlagType.STRING)
    assert str(Scope.parse("group:east")) == "group:east"


def test_concurrent_changes_take_distinct_versions(db: Database, clock: VirtualClock) -> None:
    """A change made while another is uncommitted waits for it: versions 1 and 2, never 1 twice."""
    second: list[int] = []
    errors: list[BaseException] = []

    def change() -> None:
        try:
            second.append(set_value(db, clock, "rlp", "node:node2", True).version)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=change)
    with db.session() as session:
        first = set_flag_value(
            session, "rlp", "node:node1", True, actor="ops", reason="", at=clock.now()
        )
        thread.start()
        thread.join(1.0)  # it must wait for this transaction, not read its version
        assert thread.is_alive() or errors, "the second change did not wait for the first"
    thread.join(30)
    assert errors == []
    assert (first.version, second) == (1, [2])
