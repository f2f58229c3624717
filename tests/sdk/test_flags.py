"""The flag SDK: typed lookups, fail-closed safe defaults, change detection, evaluation counts.

Every test works on real files in tmp_path written the way the agent writes
them (temp file, rename); the helpers here are shared with test_openfeature.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import knightwatch.sdk
from knightwatch.sdk import (
    FlagDetails,
    FlagError,
    FlagNotDeclaredError,
    Flags,
    FlagTypeError,
)

flags_module = sys.modules["knightwatch.sdk.flags"]
SDK_DIR = Path(knightwatch.sdk.__file__).parent

DIGEST = "a" * 64
OTHER_DIGEST = "b" * 64

DECLARED: dict[str, dict[str, Any]] = {
    "rlp": {"kind": "release", "type": "boolean", "default": False},
    "batch-size": {"kind": "ops", "type": "integer", "default": 10},
    "ratio": {"kind": "experiment", "type": "float", "default": 0.5},
    "mode": {"kind": "ops", "type": "string", "default": "safe"},
    "kill.payments": {"kind": "kill", "type": "boolean", "default": True},
}

DEFAULTS = {name: spec["default"] for name, spec in DECLARED.items()}


def entry(name: str, value: Any, source: str = "fleet") -> dict[str, Any]:
    """One flag of flags.json: the declaration of ``name`` with ``value`` from ``source``."""
    return {**DECLARED[name], "value": value, "source": source}


def document(
    version: int = 42, release: str | None = DIGEST, **values: tuple[Any, str]
) -> dict[str, Any]:
    """A valid format-1 document; flags not in ``values`` are at their default."""
    overrides = {name.replace("_", "-"): spec for name, spec in values.items()}
    flags = {
        name: entry(name, *overrides.get(name, (spec["default"], "default")))
        for name, spec in DECLARED.items()
    }
    return {
        "format": 1,
        "node": "node3",
        "release": release,
        "version": version,
        "written_at": "2026-12-04T22:10:00Z",
        "flags": flags,
    }


VALID = document(
    rlp=(True, "fleet"),
    batch_size=(25, "group:canary"),
    ratio=(1, "node:node3"),
    mode=("fast", "fleet"),
)
"""rlp on for the fleet, batch-size 25 for a group, ratio 1 (written as an int) for the node."""


def write(path: Path, content: dict[str, Any] | bytes) -> None:
    """Replace ``path`` as the agent does: a temp file renamed over it."""
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No KNIGHTWATCH_* variable leaks from the environment running the tests."""
    for name in list(os.environ):
        if name.startswith("KNIGHTWATCH_"):
            monkeypatch.delenv(name)


@pytest.fixture
def flags_file(tmp_path: Path) -> Path:
    """A flags.json holding VALID."""
    path = tmp_path / "root" / "flags.json"
    path.parent.mkdir()
    write(path, VALID)
    return path


MakeFlags = Callable[..., Flags]


@pytest.fixture
def make_flags(flags_file: Path) -> Iterator[MakeFlags]:
    """Build Flags (declared=DECLARED, release=DIGEST unless given); all closed at teardown."""
    made: list[Flags] = []

    def make(**kwargs: Any) -> Flags:
        kwargs.setdefault("path", flags_file)
        kwargs.setdefault("declared", DECLARED)
        kwargs.setdefault("release", DIGEST)
        flags = Flags(**kwargs)
        made.append(flags)
        return flags

    yield make
    for flags in made:
        flags.close()


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; return whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


class TestLookups:
    def test_typed_getters_return_the_values_in_force(self, make_flags: MakeFlags) -> None:
        flags = make_flags()
        assert flags.is_enabled("rlp") is True
        assert flags.get_bool("kill.payments") is True
        assert flags.get_int("batch-size") == 25
        ratio = flags.get_float("ratio")
        assert ratio == 1.0
        assert type(ratio) is float
        assert flags.get_str("mode") == "fast"
        assert flags.get("batch-size") == 25
        assert flags.problem is None
        assert flags.version == 42

    def test_details_say_where_the_value_came_from(self, make_flags: MakeFlags) -> None:
        flags = make_flags()
        found = flags.details("batch-size")
        assert found == FlagDetails(
            name="batch-size",
            value=25,
            default=10,
            kind="ops",
            type="integer",
            source="group:canary",
            problem=None,
        )
        assert flags.details("kill.payments").source == "default"
        with pytest.raises(dataclasses.FrozenInstanceError):
            found.value = 1  # type: ignore[misc]

    def test_snapshot_maps_every_declared_flag(self, make_flags: MakeFlags) -> None:
        snapshot = make_flags().snapshot()
        assert dict(snapshot) == {
            **DEFAULTS,
            "rlp": True,
            "batch-size": 25,
            "ratio": 1.0,
            "mode": "fast",
        }

    def test_an_undeclared_flag_always_raises(self, make_flags: MakeFlags) -> None:
        flags = make_flags()
        with pytest.raises(FlagNotDeclaredError, match=r"'nope'.*does not declare it"):
            flags.is_enabled("nope")
        with pytest.raises(FlagError):
            flags.get("nope")

    def test_a_typed_getter_on_another_type_raises(self, make_flags: MakeFlags) -> None:
        flags = make_flags()
        with pytest.raises(FlagTypeError, match="'mode' is a string flag, not a boolean flag"):
            flags.is_enabled("mode")
        with pytest.raises(FlagTypeError):
            flags.get_int("rlp")
        with pytest.raises(FlagTypeError):
            flags.get_float("batch-size")
        with pytest.raises(FlagTypeError):
            flags.get_str("ratio")

    def test_invalid_explicit_declarations_are_refused(self, flags_file: Path) -> None:
        with pytest.raises(FlagError, match="invalid flag declarations"):
            Flags(flags_file, declared={"Bad Name": DECLARED["rlp"]})
        with pytest.raises(FlagError, match="not a valid boolean"):
            Flags(flags_file, declared={"x": {"kind": "ops", "type": "boolean", "default": 1}})


class TestSafeDefaults:
    def assert_defaults(self, flags: Flags, reason: str) -> None:
        """Every declared flag is at its default and ``problem`` says ``reason``."""
        assert flags.problem is not None
        assert reason in flags.problem
        assert "\n" not in flags.problem
        assert dict(flags.snapshot()) == DEFAULTS
        for name, default in DEFAULTS.items():
            found = flags.details(name)
            assert (found.value, found.source, found.problem) == (default, "default", flags.problem)
        assert flags.is_enabled("rlp") is False
        assert flags.version is None

    def test_a_truncated_file(self, make_flags: MakeFlags, flags_file: Path) -> None:
        write(flags_file, flags_file.read_bytes()[:50])
        self.assert_defaults(make_flags(), "is not valid JSON")

    def test_a_file_for_another_release(self, make_flags: MakeFlags, flags_file: Path) -> None:
        write(flags_file, {**VALID, "release": OTHER_DIGEST})
        self.assert_defaults(make_flags(), "written for release bbbbbbbbbbbb")

    def test_a_missing_file(self, make_flags: MakeFlags, tmp_path: Path) -> None:
        self.assert_defaults(make_flags(path=tmp_path / "absent.json"), "does not exist")

    def test_no_file_variable(self, make_flags: MakeFlags) -> None:
        flags = Flags(declared=DECLARED, release=DIGEST)
        try:
            self.assert_defaults(flags, "KNIGHTWATCH_FLAGS_FILE is not set")
        finally:
            flags.close()

    def test_the_empty_object_before_any_release(
        self, make_flags: MakeFlags, flags_file: Path
    ) -> None:
        write(flags_file, {})
        self.assert_defaults(make_flags(), "no release's flags")

    def test_a_type_the_release_does_not_declare(
        self, make_flags: MakeFlags, flags_file: Path
    ) -> None:
        doc = document()
        doc["flags"]["rlp"] = {
            "kind": "release",
            "type": "integer",
            "default": 0,
            "value": 1,
            "source": "fleet",
        }
        write(flags_file, doc)
        self.assert_defaults(make_flags(), "declares boolean")

    def test_a_fifo_in_place_of_the_file_does_not_hang(
        self, make_flags: MakeFlags, tmp_path: Path
    ) -> None:
        fifo = tmp_path / "fifo.json"
        os.mkfifo(fifo)
        self.assert_defaults(make_flags(path=fifo), "not a regular file")

    def test_a_flag_missing_from_the_file_is_at_its_default(
        self, make_flags: MakeFlags, flags_file: Path
    ) -> None:
        doc = document(rlp=(True, "fleet"))
        del doc["flags"]["mode"]
        write(flags_file, doc)
        flags = make_flags()
        assert flags.problem is None
        assert flags.is_enabled("rlp") is True
        assert flags.details("mode").problem == "flags.json does not list flag mode"
        assert flags.get_str("mode") == "safe"

    def test_each_distinct_problem_is_logged_once(
        self, make_flags: MakeFlags, flags_file: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        write(flags_file, b"{")
        caplog.set_level(logging.WARNING, logger="knightwatch.sdk")
        flags = make_flags()
        for _ in range(5):
            flags.is_enabled("rlp")
        write(flags_file, b"[")
        for _ in range(5):
            flags.is_enabled("rlp")
        warnings = [r for r in caplog.records if r.name == "knightwatch.sdk"]
        assert len(warnings) == 2
        assert all("declared safe default" in r.getMessage() for r in warnings)

    def test_the_file_comes_back_after_a_problem(
        self, make_flags: MakeFlags, flags_file: Path
    ) -> None:
        write(flags_file, b"garbage")
        flags = make_flags()
        assert flags.is_enabled("rlp") is False
        write(flags_file, VALID)
        assert flags.is_enabled("rlp") is True
        assert flags.problem is None


HOSTILE: dict[str, bytes] = {
    "nul in a name": json.dumps(
        {**VALID, "flags": {**VALID["flags"], "rl\u0000p": entry("rlp", True)}}
    ).encode(),
    "10 KB name": json.dumps(
        {**VALID, "flags": {**VALID["flags"], "a" * 10240: entry("rlp", True)}}
    ).encode(),
    "wrong-type value": json.dumps(document(rlp=("yes", "fleet"))).encode(),
    "bool for an integer": json.dumps(document(batch_size=(True, "fleet"))).encode(),
    "string for a float": json.dumps(document(ratio=("0.5", "fleet"))).encode(),
    "list": b"[1, 2, 3]",
    "string": b'"flags"',
    "number": b"42",
    "null": b"null",
    "empty file": b"",
    "not utf-8": b'{"format": 1, "node": "\xff\xfe"}',
    "huge version": json.dumps({**VALID, "version": 10**30}).encode(),
    "negative version": json.dumps({**VALID, "version": -1}).encode(),
    "huge integer": json.dumps(document(batch_size=(10**30, "fleet"))).encode(),
    "5000-digit integer": json.dumps(VALID)
    .replace('"version": 42', '"version": ' + "9" * 5000)
    .encode(),
    "float overflow": json.dumps(VALID).replace('"value": 1,', '"value": 1e400,').encode(),
    "NaN": json.dumps(VALID).replace('"value": 1,', '"value": NaN,').encode(),
    "Infinity": json.dumps(VALID).replace('"value": 1,', '"value": -Infinity,').encode(),
    "duplicate key": json.dumps(VALID).replace('"format": 1', '"format": 1, "format": 1').encode(),
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "format 2": json.dumps({**VALID, "format": 2}).encode(),
    "format true": json.dumps({**VALID, "format": True}).encode(),
    "format string": json.dumps({**VALID, "format": "1"}).encode(),
    "unknown key": json.dumps({**VALID, "extra": 1}).encode(),
    "missing key": json.dumps({k: v for k, v in VALID.items() if k != "node"}).encode(),
    "bad release": json.dumps({**VALID, "release": "A" * 64}).encode(),
    "bad time": json.dumps({**VALID, "written_at": "yesterday"}).encode(),
    "bad source": json.dumps(document(rlp=(True, "everyone"))).encode(),
    "bad kind": json.dumps(
        {**VALID, "flags": {**VALID["flags"], "rlp": {**entry("rlp", True), "kind": "evil"}}}
    ).encode(),
    "flags not an object": json.dumps({**VALID, "flags": [1]}).encode(),
    "entry not an object": json.dumps({**VALID, "flags": {"rlp": True}}).encode(),
    "long string value": json.dumps(document(mode=("x" * 70_000, "fleet"))).encode(),
}


@pytest.mark.parametrize("content", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_files_give_safe_defaults_and_a_problem(
    make_flags: MakeFlags, flags_file: Path, content: bytes
) -> None:
    write(flags_file, content)
    flags = make_flags()
    assert flags.problem is not None
    assert len(flags.problem) < 400
    assert dict(flags.snapshot()) == DEFAULTS
    assert flags.is_enabled("rlp") is False
    assert flags.get_int("batch-size") == 10
    assert flags.get_float("ratio") == 0.5
    assert flags.get_str("mode") == "safe"


def test_schema_accepts_the_fixtures_and_refuses_hostile_files() -> None:
    schema = json.loads((SDK_DIR / "flags.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    for valid in (VALID, document(release=None), {}):
        validator.validate(valid)
    for name, content in HOSTILE.items():
        try:
            doc = json.loads(content)
        except (ValueError, RecursionError):
            continue  # not JSON at all
        if name in ("NaN", "Infinity", "duplicate key", "float overflow"):
            continue  # beyond what JSON Schema can see (the reader refuses them)
        assert not validator.is_valid(doc), name


class TestEnvironment:
    def set_env(self, monkeypatch: pytest.MonkeyPatch, flags_file: Path, **extra: str) -> None:
        monkeypatch.setenv("KNIGHTWATCH_FLAGS_FILE", str(flags_file))
        monkeypatch.setenv("KNIGHTWATCH_FLAG_DEFAULTS", json.dumps(DECLARED))
        monkeypatch.setenv("KNIGHTWATCH_RELEASE_DIGEST", DIGEST)
        for name, value in extra.items():
            monkeypatch.setenv(name, value)

    def test_everything_comes_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch, flags_file: Path
    ) -> None:
        self.set_env(monkeypatch, flags_file)
        with Flags() as flags:
            assert flags.path == flags_file
            assert flags.is_enabled("rlp") is True
            monkeypatch.setenv("KNIGHTWATCH_RELEASE_DIGEST", OTHER_DIGEST)
        with Flags() as flags:
            assert flags.is_enabled("rlp") is False
            assert "written for release" in (flags.problem or "")

    def test_the_release_the_process_runs_wins(
        self, monkeypatch: pytest.MonkeyPatch, flags_file: Path
    ) -> None:
        doc = document(rlp=(True, "fleet"))
        doc["flags"]["newer"] = {**entry("rlp", True), "kind": "ops"}
        write(flags_file, doc)
        only_rlp = {"rlp": {**DECLARED["rlp"], "default": True}}
        self.set_env(monkeypatch, flags_file, KNIGHTWATCH_FLAG_DEFAULTS=json.dumps(only_rlp))
        with Flags() as flags:
            assert flags.is_enabled("rlp") is True
            assert flags.details("rlp").default is True
            with pytest.raises(FlagNotDeclaredError):
                flags.is_enabled("newer")
            with pytest.raises(FlagNotDeclaredError):
                flags.get_int("batch-size")

    def test_without_declared_defaults_the_file_declares(
        self, monkeypatch: pytest.MonkeyPatch, flags_file: Path
    ) -> None:
        monkeypatch.setenv("KNIGHTWATCH_FLAGS_FILE", str(flags_file))
        with Flags() as flags:
            assert flags.get_int("batch-size") == 25
            write(flags_file, b"{truncated")
            # declarations of the last usable file stay: their defaults, not an error
            assert flags.get_int("batch-size") == 10
            assert flags.problem is not None

    def test_nothing_declared_when_the_file_is_unusable_too(
        self, monkeypatch: pytest.MonkeyPatch, flags_file: Path
    ) -> None:
        write(flags_file, b"\x00\x01")
        monkeypatch.setenv("KNIGHTWATCH_FLAGS_FILE", str(flags_file))
        with Flags() as flags:
            with pytest.raises(FlagNotDeclaredError):
                flags.is_enabled("rlp")
            assert flags.snapshot() == {}

    def test_unusable_declared_defaults_are_logged(
        self, monkeypatch: pytest.MonkeyPatch, flags_file: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        self.set_env(monkeypatch, flags_file, KNIGHTWATCH_FLAG_DEFAULTS="{not json")
        caplog.set_level(logging.WARNING, logger="knightwatch.sdk")
        with Flags() as flags:
            assert flags.is_enabled("rlp") is True
        assert any("KNIGHTWATCH_FLAG_DEFAULTS" in r.getMessage() for r in caplog.records)

    def test_the_package_default_is_built_lazily(
        self, monkeypatch: pytest.MonkeyPatch, flags_file: Path
    ) -> None:
        monkeypatch.setattr(flags_module, "_default", None)
        from knightwatch.sdk import flags  # noqa: PLC0415 (the documented usage)

        self.set_env(monkeypatch, flags_file)
        try:
            assert flags.is_enabled("rlp") is True
            assert flags.get_int("batch-size") == 25
            assert flags_module.default_flags() is flags_module.default_flags()
        finally:
            flags_module.default_flags().close()


class TestChanges:
    def test_a_replaced_file_is_seen_by_the_next_evaluation(
        self, make_flags: MakeFlags, flags_file: Path
    ) -> None:
        flags = make_flags()
        assert flags.is_enabled("rlp") is True
        write(flags_file, document(version=43, rlp=(False, "node:node3")))
        assert flags.is_enabled("rlp") is False
        assert flags.details("rlp").source == "node:node3"
        assert flags.version == 43

    def test_on_change_fires_through_inotify(self, make_flags: MakeFlags, flags_file: Path) -> None:
        flags = make_flags()
        changes: queue.Queue[frozenset[str]] = queue.Queue()
        flags.on_change(changes.put)
        watcher = flags._watcher
        assert watcher is not None
        assert watcher.uses_inotify
        write(
            flags_file,
            document(
                version=43,
                rlp=(False, "fleet"),
                batch_size=(25, "group:canary"),
                ratio=(1, "node:node3"),
                mode=("fast", "fleet"),
            ),
        )
        assert changes.get(timeout=20) == {"rlp"}
        # not evaluated by this thread: the watcher reloaded on its own
        assert flags.is_enabled("rlp") is False
        write(flags_file, b"broken")
        # rlp keeps its value but now comes from the default: a change of source
        assert changes.get(timeout=20) == {"rlp", "batch-size", "ratio", "mode"}

    def test_a_change_seen_by_an_evaluation_still_reaches_callbacks(
        self, make_flags: MakeFlags, flags_file: Path
    ) -> None:
        flags = make_flags()
        changes: queue.Queue[frozenset[str]] = queue.Queue()
        flags.on_change(changes.put)
        write(flags_file, document(mode=("slow", "fleet")))
        flags.get_str("mode")
        assert changes.get(timeout=20) >= {"mode"}

    def test_without_inotify_a_thread_polls(
        self, make_flags: MakeFlags, flags_file: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(flags_module, "_inotify_open", lambda _directory: None)
        monkeypatch.setattr(flags_module, "POLL_INTERVAL_S", 0.02)
        flags = make_flags()
        changes: queue.Queue[frozenset[str]] = queue.Queue()
        flags.on_change(changes.put)
        watcher = flags._watcher
        assert watcher is not None
        assert not watcher.uses_inotify
        write(flags_file, {**VALID, "release": OTHER_DIGEST})
        assert changes.get(timeout=20) == {"rlp", "batch-size", "ratio", "mode"}

    def test_a_failing_callback_does_not_stop_the_others(
        self, make_flags: MakeFlags, flags_file: Path
    ) -> None:
        flags = make_flags()
        changes: queue.Queue[frozenset[str]] = queue.Queue()

        def broken(_names: frozenset[str]) -> None:
            raise RuntimeError("callback bug")

        flags.on_change(broken)
        flags.on_change(changes.put)
        write(flags_file, document())
        assert "rlp" in changes.get(timeout=20)
        flags.remove_on_change(broken)

    def test_a_callback_may_close_its_flags(self, make_flags: MakeFlags, flags_file: Path) -> None:
        flags = make_flags()
        closed = threading.Event()

        def close_now(_names: frozenset[str]) -> None:
            flags.close()
            closed.set()

        flags.on_change(close_now)
        watcher = flags._watcher
        assert watcher is not None
        write(flags_file, document())
        assert closed.wait(timeout=20)
        watcher._thread.join(timeout=20)
        assert not watcher._thread.is_alive()
        assert watcher._inotify is None

    def test_watch_true_starts_the_watcher_and_close_stops_it(self, make_flags: MakeFlags) -> None:
        flags = make_flags(watch=True)
        watcher = flags._watcher
        assert watcher is not None
        thread = watcher._thread
        assert thread.is_alive()
        assert thread.daemon
        flags.close()
        assert not thread.is_alive()
        assert flags._watcher is None
        flags.close()


class TestEvaluationCounts:
    def read_counts(self, path: Path) -> dict[str, Any] | None:
        try:
            loaded: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return loaded

    def test_counts_are_written_and_summed(
        self, make_flags: MakeFlags, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(flags_module, "FLUSH_DELAY_S", 0.05)
        directory = tmp_path / "evaluations"
        directory.mkdir()
        flags = make_flags(evaluations_dir=directory)
        target = directory / f"{os.getpid()}.json"

        def evaluate() -> None:
            for _ in range(250):
                flags.is_enabled("rlp")
                with pytest.raises(FlagNotDeclaredError):
                    flags.is_enabled("nope")

        threads = [threading.Thread(target=evaluate) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        flags.get_int("batch-size")
        with pytest.raises(FlagTypeError):
            flags.get_int("rlp")
        expected = {"rlp": 2001, "nope": 2000, "batch-size": 1}
        assert flags.evaluation_counts() == expected
        assert wait_for(lambda: (self.read_counts(target) or {}).get("counts") == expected)
        assert self.read_counts(target) == {
            "format": 1,
            "pid": os.getpid(),
            "release": DIGEST,
            "counts": expected,
        }
        assert [p.name for p in directory.iterdir()] == [target.name]

    def test_close_writes_the_last_counts(self, make_flags: MakeFlags, tmp_path: Path) -> None:
        flags = make_flags(evaluations_dir=tmp_path)
        flags.snapshot()  # not an evaluation
        flags.is_enabled("rlp")
        flags.close()
        assert self.read_counts(tmp_path / f"{os.getpid()}.json") == {
            "format": 1,
            "pid": os.getpid(),
            "release": DIGEST,
            "counts": {"rlp": 1},
        }

    def test_an_unwritable_directory_keeps_counts_in_memory(
        self, make_flags: MakeFlags, tmp_path: Path
    ) -> None:
        flags = make_flags(evaluations_dir=tmp_path / "absent")
        flags.is_enabled("rlp")
        flags.close()
        assert flags.evaluation_counts() == {"rlp": 1}
        assert not (tmp_path / "absent").exists()

    def test_no_directory_no_file_and_no_timer(self, make_flags: MakeFlags) -> None:
        flags = make_flags()
        flags.is_enabled("rlp")
        assert flags._counter._timer is None
        assert flags.evaluation_counts() == {"rlp": 1}


def test_flags_module_imports_only_the_standard_library() -> None:
    tree = ast.parse((SDK_DIR / "flags.py").read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import reaches outside the file"
            assert node.module is not None
            imported.add(node.module.split(".")[0])
    assert imported
    assert imported - {"__future__"} <= sys.stdlib_module_names, imported - sys.stdlib_module_names
