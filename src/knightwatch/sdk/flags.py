"""Feature flags for services: read ``flags.json`` (format 1), fail closed, count evaluations.

The knightwatch agent replaces ``KNIGHTWATCH_FLAGS_FILE`` atomically whenever
a flag changes; this module reads it, checks it strictly, and answers
lookups. Whatever goes wrong with the file (missing, truncated, invalid,
written for another release), every flag the running release declares
(``KNIGHTWATCH_FLAG_DEFAULTS``) evaluates to its declared safe default and
:attr:`Flags.problem` says why. A name the release does not declare always
raises :class:`FlagNotDeclaredError`: there is no safe value to invent.

This module imports only the standard library, so a service may vendor a
copy of ``knightwatch/sdk`` alone. The format is documented in
``docs/flags-file.md`` and ``flags.schema.json`` beside this file.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import logging
import math
import os
import re
import secrets
import select
import stat
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeAlias

__all__ = [
    "ENV_DEFAULTS",
    "ENV_EVALUATIONS_DIR",
    "ENV_FLAGS_FILE",
    "ENV_RELEASE_DIGEST",
    "FORMAT",
    "ChangeCallback",
    "FlagDetails",
    "FlagError",
    "FlagNotDeclaredError",
    "FlagTypeError",
    "FlagValue",
    "Flags",
    "default_flags",
]

FORMAT: Final = 1
ENV_FLAGS_FILE: Final = "KNIGHTWATCH_FLAGS_FILE"
ENV_DEFAULTS: Final = "KNIGHTWATCH_FLAG_DEFAULTS"
ENV_RELEASE_DIGEST: Final = "KNIGHTWATCH_RELEASE_DIGEST"
ENV_EVALUATIONS_DIR: Final = "KNIGHTWATCH_FLAG_EVALUATIONS_DIR"

FlagValue: TypeAlias = bool | int | float | str
ChangeCallback: TypeAlias = Callable[[frozenset[str]], None]

logger = logging.getLogger("knightwatch.sdk")

MAX_FILE_BYTES: Final = 16 * 1024 * 1024
MAX_FLAGS: Final = 10_000
MAX_STRING: Final = 65_536
MAX_COUNTED_NAMES: Final = 10_000
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1
FLUSH_DELAY_S: Final = 1.0
POLL_INTERVAL_S: Final = 1.0

_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,126}")
_NODE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_SOURCE = re.compile(r"default|fleet|(?:group|node):[a-z0-9][a-z0-9._-]{0,62}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_WRITTEN_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?Z")
_KINDS = frozenset({"release", "ops", "kill", "experiment"})
_TYPES = ("boolean", "integer", "float", "string")
_TOP_KEYS = frozenset({"format", "node", "release", "version", "written_at", "flags"})
_ENTRY_KEYS = frozenset({"kind", "type", "default", "value", "source"})
_DECLARED_KEYS = frozenset({"kind", "type", "default"})

# Linux inotify(7) constants.
_IN_CLOEXEC = 0o2000000
_IN_NONBLOCK = 0o4000
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_IGNORED = 0x8000
_IN_WATCH_MASK = _IN_MOVED_TO | _IN_CLOSE_WRITE | _IN_CREATE | _IN_DELETE
_IN_EVENT = struct.Struct("iIII")

StatKey: TypeAlias = tuple[int, int, int, int] | None


class FlagError(Exception):
    """Base of every error the flag SDK raises."""


class FlagNotDeclaredError(FlagError, LookupError):
    """The running release does not declare this flag (always raised: fail closed)."""

    def __init__(self, name: object, release: str | None) -> None:
        self.name = name
        which = f"the running release ({release[:12]})" if release else "the running release"
        super().__init__(
            f"flag {_show(name)} is not declared: {which} does not declare it, "
            "so it has no safe default"
        )


class FlagTypeError(FlagError, TypeError):
    """A typed getter was used on a flag of another type."""

    def __init__(self, name: str, actual: str, wanted: str) -> None:
        self.name = name
        self.actual = actual
        self.wanted = wanted
        super().__init__(f"flag {_show(name)} is a {actual} flag, not a {wanted} flag")


@dataclass(frozen=True)
class FlagDetails:
    """One flag as evaluated: its value, where the value came from, and any problem."""

    name: str
    value: FlagValue
    default: FlagValue
    kind: str
    type: str
    source: str
    problem: str | None = None


@dataclass(frozen=True)
class _Declared:
    kind: str
    type: str
    default: FlagValue


@dataclass(frozen=True)
class _Entry:
    kind: str
    type: str
    default: FlagValue
    value: FlagValue
    source: str


@dataclass(frozen=True)
class _Document:
    """A valid flags.json; ``empty`` for ``{}`` (no release, no flags)."""

    empty: bool
    release: str | None = None
    version: int | None = None
    entries: Mapping[str, _Entry] = field(default_factory=dict)


class _InvalidError(ValueError):
    """A file or declaration that breaks the contract; the message is the one-line reason."""


def _show(value: object) -> str:
    """A short repr for messages: hostile names may be 10 KB long or hold NULs."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _strict_json(text: str) -> object:
    """``json.loads`` refusing NaN/Infinity and duplicate keys."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise ValueError(f"duplicate key {_show(key)}")
            result[key] = value
        return result

    def constant(name: str) -> object:
        raise ValueError(f"{name} is not a JSON number")

    return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)


def _check_keys(obj: Mapping[str, object], expected: frozenset[str], where: str) -> None:
    missing = sorted(expected - obj.keys())
    if missing:
        raise _InvalidError(f"{where} lacks {missing[0]!r}")
    extra = sorted(obj.keys() - expected)
    if extra:
        raise _InvalidError(f"{where} has an unknown key {_show(extra[0])}")


def _typed(value: object, type_: str, what: str) -> FlagValue:
    """Check ``value`` is of flag type ``type_``; floats come back as float."""
    if type_ == "boolean" and type(value) is bool:
        return value
    if type_ == "string" and type(value) is str and len(value) <= MAX_STRING:
        return value
    if type_ in ("integer", "float") and type(value) is int and INT_MIN <= value <= INT_MAX:
        return value if type_ == "integer" else float(value)
    if type_ == "float" and type(value) is float and math.isfinite(value):
        return value
    raise _InvalidError(f"{what} is {_show(value)[:40]}, not a valid {type_}")


def _check_flag_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _InvalidError(f"{where} has an invalid flag name {_show(name)[:40]}")
    return name


def _check_kind_and_type(obj: Mapping[str, object], name: str) -> tuple[str, str]:
    kind, type_ = obj["kind"], obj["type"]
    if not isinstance(kind, str) or kind not in _KINDS:
        raise _InvalidError(f"flag {name} has an unknown kind {_show(kind)[:40]}")
    if not isinstance(type_, str) or type_ not in _TYPES:
        raise _InvalidError(f"flag {name} has an unknown type {_show(type_)[:40]}")
    return kind, type_


def _check_entry(name: str, entry: object) -> _Entry:
    if not isinstance(entry, dict):
        raise _InvalidError(f"flag {name} is not a JSON object")
    _check_keys(entry, _ENTRY_KEYS, f"flag {name}")
    kind, type_ = _check_kind_and_type(entry, name)
    source = entry["source"]
    if not isinstance(source, str) or not _SOURCE.fullmatch(source):
        raise _InvalidError(f"flag {name} has an invalid source {_show(source)[:40]}")
    default = _typed(entry["default"], type_, f"the default of flag {name}")
    value = _typed(entry["value"], type_, f"the value of flag {name}")
    return _Entry(kind, type_, default, value, source)


def _check_declared(name: str, entry: object) -> _Declared:
    if not isinstance(entry, dict):
        raise _InvalidError(f"flag {name} is not a JSON object")
    _check_keys(entry, _DECLARED_KEYS, f"flag {name}")
    kind, type_ = _check_kind_and_type(entry, name)
    return _Declared(kind, type_, _typed(entry["default"], type_, f"the default of flag {name}"))


def _check_header(doc: Mapping[str, object]) -> tuple[str | None, int]:
    """Check every field but ``flags``; return the release and the version."""
    fmt = doc["format"]
    if type(fmt) is not int or fmt != FORMAT:
        raise _InvalidError(f"format {_show(fmt)[:40]} is not {FORMAT}")
    node = doc["node"]
    if not isinstance(node, str) or not _NODE.fullmatch(node):
        raise _InvalidError(f"node {_show(node)[:40]} is not a node name")
    release = doc["release"]
    if release is not None and (not isinstance(release, str) or not _DIGEST.fullmatch(release)):
        raise _InvalidError(f"release {_show(release)[:40]} is not a SHA-256 digest or null")
    version = doc["version"]
    if type(version) is not int or not 0 <= version <= INT_MAX:
        raise _InvalidError(f"version {_show(version)[:40]} is not an integer >= 0")
    written_at = doc["written_at"]
    if not isinstance(written_at, str) or not _WRITTEN_AT.fullmatch(written_at):
        raise _InvalidError(f"written_at {_show(written_at)[:40]} is not an RFC 3339 UTC time")
    return release, version


def _parse_document(data: bytes) -> _Document:
    """Parse and check the bytes of flags.json; _InvalidError says what is wrong."""
    try:
        doc = _strict_json(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise _InvalidError("it is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise _InvalidError(f"it is not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(doc, dict):
        raise _InvalidError("it does not hold a JSON object")
    if not doc:
        return _Document(empty=True)
    _check_keys(doc, _TOP_KEYS, "it")
    release, version = _check_header(doc)
    flags = doc["flags"]
    if not isinstance(flags, dict) or len(flags) > MAX_FLAGS:
        raise _InvalidError(f"'flags' is not a JSON object of at most {MAX_FLAGS} flags")
    entries = {
        _check_flag_name(name, "'flags'"): _check_entry(name, entry)
        for name, entry in flags.items()
    }
    return _Document(False, release, version, MappingProxyType(entries))


def _parse_declared(declared: Mapping[str, object]) -> dict[str, _Declared]:
    """Check a ``{name: {kind, type, default}}`` declaration (the env variable's form)."""
    if not isinstance(declared, Mapping) or len(declared) > MAX_FLAGS:
        raise _InvalidError(f"it is not a JSON object of at most {MAX_FLAGS} flags")
    return {
        _check_flag_name(name, "it"): _check_declared(name, entry)
        for name, entry in declared.items()
    }


def _stat_key(path: Path) -> StatKey:
    """The identity of the file now: a rename(2) or rewrite changes it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return (-1, exc.errno or 0, 0, 0)
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_dev)


def _read_file(path: Path) -> tuple[StatKey, bytes | None, str | None]:
    """Return the file's identity, its bytes (None if unreadable) and why it is unreadable."""
    try:
        # O_NONBLOCK: a FIFO put in the file's place must not hang the service.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, None, f"{path} does not exist"
    except OSError as exc:
        return _stat_key(path), None, f"cannot open {path}: {exc.strerror or exc}"
    try:
        st = os.fstat(fd)
        key = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_dev)
        if not stat.S_ISREG(st.st_mode):
            return key, None, f"{path} is not a regular file"
        if st.st_size > MAX_FILE_BYTES:
            return key, None, f"{path} is larger than {MAX_FILE_BYTES} bytes"
        return key, _read_all(fd), None
    except OSError as exc:
        return _stat_key(path), None, f"cannot read {path}: {exc.strerror or exc}"
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total <= MAX_FILE_BYTES:
        chunk = os.read(fd, 1024 * 1024)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _path_from(path: str | os.PathLike[str] | None) -> Path | None:
    if path is not None:
        return Path(path)
    from_env = os.environ.get(ENV_FLAGS_FILE)
    return Path(from_env) if from_env else None


class Flags:
    """The flags of the running release, from ``flags.json`` and the declared defaults.

    Every argument left as None comes from the environment the agent gives
    the service (``KNIGHTWATCH_FLAGS_FILE``, ``KNIGHTWATCH_FLAG_DEFAULTS``,
    ``KNIGHTWATCH_FLAG_EVALUATIONS_DIR``, ``KNIGHTWATCH_RELEASE_DIGEST``).
    ``declared`` maps names to ``{"kind", "type", "default"}``; an invalid one
    raises FlagError. Thread-safe; call :meth:`close` when done with it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        declared: Mapping[str, Mapping[str, object]] | None = None,
        evaluations_dir: str | os.PathLike[str] | None = None,
        release: str | None = None,
        *,
        watch: bool = False,
    ) -> None:
        self._lock = threading.RLock()
        self._path = _path_from(path)
        self._release = release if release is not None else os.environ.get(ENV_RELEASE_DIGEST)
        self._release = self._release or None
        self._warned: set[str] = set()
        self._fixed = self._declarations(declared)
        self._last_declared: dict[str, _Declared] = {}
        self._values: dict[str, FlagDetails] = {}
        self._stat: StatKey | str = "unread"
        self._problem: str | None = None
        self._version: int | None = None
        self._callbacks: list[ChangeCallback] = []
        self._pending: set[str] = set()
        self._watcher: _Watcher | None = None
        if evaluations_dir is None:
            evaluations_dir = os.environ.get(ENV_EVALUATIONS_DIR) or None
        self._counter = _counter_for(
            Path(evaluations_dir) if evaluations_dir is not None else None, self._release
        )
        with self._lock:
            self._reload()
        if watch:
            self._start_watcher()

    def _declarations(
        self, declared: Mapping[str, Mapping[str, object]] | None
    ) -> dict[str, _Declared] | None:
        """The fixed declared set (argument or env), or None to take it from the file."""
        if declared is not None:
            try:
                return _parse_declared(declared)
            except _InvalidError as exc:
                raise FlagError(f"invalid flag declarations: {exc}") from None
        text = os.environ.get(ENV_DEFAULTS)
        if text is None:
            return None
        try:
            parsed = _strict_json(text)
            if not isinstance(parsed, dict):
                raise _InvalidError("it is not a JSON object")
            return _parse_declared(parsed)
        except (ValueError, RecursionError) as exc:
            # The agent's bug, not the file's: the file's own declarations are the best left.
            self._warn(
                f"{ENV_DEFAULTS} is unusable ({str(exc)[:120]}); flags.json declares the flags"
            )
            return None

    # -- evaluation -------------------------------------------------------

    def details(self, name: str) -> FlagDetails:
        """Evaluate ``name``: value, default, kind, type, source and any problem.

        Raises FlagNotDeclaredError if the running release does not declare it.
        """
        self._counter.add(name)
        with self._lock:
            self._refresh()
            found = self._values.get(name) if isinstance(name, str) else None
        if found is None:
            raise FlagNotDeclaredError(name, self._release)
        return found

    def get(self, name: str) -> FlagValue:
        """Return the value of flag ``name``, whatever its type."""
        return self.details(name).value

    def is_enabled(self, name: str) -> bool:
        """Return whether boolean flag ``name`` is on (FlagTypeError for other types)."""
        return self.get_bool(name)

    def get_bool(self, name: str) -> bool:
        """Return boolean flag ``name``."""
        return bool(self._typed_value(name, "boolean"))

    def get_int(self, name: str) -> int:
        """Return integer flag ``name``."""
        return int(self._typed_value(name, "integer"))

    def get_float(self, name: str) -> float:
        """Return float flag ``name``."""
        return float(self._typed_value(name, "float"))

    def get_str(self, name: str) -> str:
        """Return string flag ``name``."""
        return str(self._typed_value(name, "string"))

    def _typed_value(self, name: str, type_: str) -> FlagValue:
        found = self.details(name)
        if found.type != type_:
            raise FlagTypeError(name, found.type, type_)
        return found.value

    def snapshot(self) -> Mapping[str, FlagValue]:
        """Return every declared flag's current value (not counted as evaluations)."""
        with self._lock:
            self._refresh()
            return MappingProxyType({name: d.value for name, d in self._values.items()})

    @property
    def problem(self) -> str | None:
        """None, or a one-line reason why every flag is at its declared safe default."""
        with self._lock:
            self._refresh()
            return self._problem

    @property
    def version(self) -> int | None:
        """The version of the flags.json in use, or None when none is in use."""
        with self._lock:
            self._refresh()
            return self._version

    @property
    def path(self) -> Path | None:
        """The flags.json this instance reads (None when none was given)."""
        return self._path

    def evaluation_counts(self) -> Mapping[str, int]:
        """Return how many times each name was evaluated (process-wide, per evaluations dir)."""
        return self._counter.counts()

    # -- reading ----------------------------------------------------------

    def _refresh(self) -> None:
        """Reload if the file's identity changed since the last read (lock held)."""
        if self._path is not None and _stat_key(self._path) != self._stat:
            self._reload()

    def _reload(self) -> None:
        """Read the file, recompute every flag, remember which changed (lock held)."""
        document, problem = self._load()
        declared = self._declared_for(document, problem)
        values = {name: self._resolve(name, d, document, problem) for name, d in declared.items()}
        changed = {
            name
            for name in values.keys() | self._values.keys()
            if _identity(values.get(name)) != _identity(self._values.get(name))
        }
        self._values = values
        self._problem = problem
        self._version = document.version if document is not None and problem is None else None
        if problem is not None:
            self._warn(f"{problem}; every flag has its declared safe default")
        for found in values.values():
            if found.problem is not None and found.problem != problem:
                self._warn(f"{found.problem}; it has its declared safe default")
        if changed and self._watcher is not None:
            self._pending |= changed
            self._watcher.poke()

    def _load(self) -> tuple[_Document | None, str | None]:
        """The document (None if unusable) and the file-wide problem, if any."""
        if self._path is None:
            self._stat = None
            return None, f"{ENV_FLAGS_FILE} is not set"
        key, data, problem = _read_file(self._path)
        self._stat = key
        if data is None:
            return None, problem
        try:
            document = _parse_document(data)
        except _InvalidError as exc:
            return None, f"{self._path} is invalid: {exc}"
        return document, self._mismatch(document)

    def _mismatch(self, document: _Document) -> str | None:
        """Why a valid document does not fit the running release, if it does not."""
        if document.empty:
            return "flags.json holds no release's flags yet" if self._fixed else None
        if document.release and self._release and document.release != self._release:
            return (
                f"flags.json was written for release {document.release[:12]}, "
                f"not the running release {self._release[:12]}"
            )
        for name, entry in document.entries.items():
            declared = (self._fixed or {}).get(name)
            if declared is not None and declared.type != entry.type:
                return (
                    f"flags.json gives flag {name} type {entry.type} "
                    f"but the running release declares {declared.type}"
                )
        return None

    def _declared_for(
        self, document: _Document | None, problem: str | None
    ) -> dict[str, _Declared]:
        """The declared set: the env's; else the last usable file's (its flags, their defaults)."""
        if self._fixed is not None:
            return self._fixed
        if document is not None and problem is None:
            self._last_declared = {
                name: _Declared(e.kind, e.type, e.default) for name, e in document.entries.items()
            }
        return self._last_declared

    @staticmethod
    def _resolve(
        name: str, declared: _Declared, document: _Document | None, problem: str | None
    ) -> FlagDetails:
        entry = document.entries.get(name) if document is not None and problem is None else None
        if entry is None:
            why = problem or f"flags.json does not list flag {name}"
            return FlagDetails(
                name,
                declared.default,
                declared.default,
                declared.kind,
                declared.type,
                "default",
                why,
            )
        return FlagDetails(
            name, entry.value, declared.default, declared.kind, declared.type, entry.source
        )

    def _warn(self, problem: str) -> None:
        if problem in self._warned or len(self._warned) >= 1000:
            return
        self._warned.add(problem)
        logger.warning("flags: %s", problem)

    # -- change notification ----------------------------------------------

    def on_change(self, callback: ChangeCallback) -> None:
        """Call ``callback(changed_names)`` from the watcher thread after each change.

        Registering the first callback starts the watcher (inotify on the
        file's directory; a once-a-second stat where inotify is unavailable).
        """
        with self._lock:
            self._callbacks.append(callback)
        self._start_watcher()

    def remove_on_change(self, callback: ChangeCallback) -> None:
        """Stop calling ``callback`` (nothing if it was not registered)."""
        with self._lock, contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    def _start_watcher(self) -> None:
        with self._lock:
            if self._watcher is not None or self._path is None:
                return
            self._watcher = _Watcher(self._path, self._watch_tick)
        self._watcher.start()

    def _watch_tick(self) -> None:
        """Run on the watcher thread: reload if needed, then deliver pending changes."""
        with self._lock:
            self._refresh()
            changed = frozenset(self._pending)
            self._pending.clear()
            callbacks = list(self._callbacks)
        if not changed:
            return
        for callback in callbacks:
            try:
                callback(changed)
            except Exception:
                logger.exception("a flag change callback failed")

    # -- lifetime ---------------------------------------------------------

    def close(self) -> None:
        """Stop the watcher thread and write the evaluation counts one last time."""
        with self._lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
        self._counter.settle()

    def __enter__(self) -> Flags:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _identity(found: FlagDetails | None) -> tuple[object, ...] | None:
    """What makes a flag "changed": True == 1 in Python, so the type is part of it."""
    if found is None:
        return None
    return (type(found.value), found.value, found.type, found.source)


_counters: dict[Path, _Counter] = {}
_counters_lock = threading.Lock()


def _counter_for(directory: Path | None, release: str | None) -> _Counter:
    """The process's counter for ``directory``: DIR/<pid>.json has one writer per process."""
    if directory is None:
        return _Counter(None, release)
    with _counters_lock:
        key = directory.absolute()
        if key not in _counters:
            _counters[key] = _Counter(directory, release)
        return _counters[key]


class _Counter:
    """Evaluation counts, written to DIR/<pid>.json at most about once a second."""

    def __init__(self, directory: Path | None, release: str | None) -> None:
        self._directory = directory
        self._release = release
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._pid = os.getpid()
        self._timer: threading.Timer | None = None
        self._warned = False
        if directory is not None:
            atexit.register(self.flush)

    def add(self, name: object) -> None:
        """Count one evaluation of ``name`` and arm the one-shot writer."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            return  # not a possible flag name: nothing the agent could report on
        with self._lock:
            if os.getpid() != self._pid:  # a forked child counts for itself
                self._pid, self._counts, self._timer = os.getpid(), {}, None
            if name in self._counts or len(self._counts) < MAX_COUNTED_NAMES:
                self._counts[name] = self._counts.get(name, 0) + 1
            if self._directory is None or self._timer is not None:
                return
            self._timer = threading.Timer(FLUSH_DELAY_S, self._timer_fired)
            self._timer.daemon = True
            self._timer.name = "knightwatch-flag-counts"
            self._timer.start()

    def counts(self) -> Mapping[str, int]:
        """A copy of the counts so far."""
        with self._lock:
            return MappingProxyType(dict(self._counts))

    def _timer_fired(self) -> None:
        with self._lock:
            self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write the cumulative counts now (nothing without a directory or evaluations)."""
        with self._lock:
            if self._directory is None or not self._counts:
                return
            directory, pid = self._directory, self._pid
            document = {
                "format": FORMAT,
                "pid": pid,
                "release": self._release,
                "counts": dict(sorted(self._counts.items())),
            }
        data = json.dumps(document, separators=(",", ":")).encode() + b"\n"
        with self._write_lock:
            try:
                _replace_file(directory / f"{pid}.json", data)
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "flags: cannot write evaluation counts in %s: %s", directory, exc
                    )

    def settle(self) -> None:
        """Write now instead of at the pending timer (a later evaluation arms a new one)."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            if timer is not threading.current_thread():
                timer.join()
        self.flush()


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path`` and rename it over ``path``."""
    temp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _inotify_open(directory: Path) -> int | None:
    """An inotify fd watching ``directory``, or None where inotify is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init, add = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return None
    init.argtypes, init.restype = [ctypes.c_int], ctypes.c_int
    add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    add.restype = ctypes.c_int
    fd = int(init(_IN_CLOEXEC | _IN_NONBLOCK))
    if fd < 0:
        _no_inotify(ctypes.get_errno(), "fs.inotify.max_user_instances")
        return None
    if add(fd, os.fsencode(directory), _IN_WATCH_MASK) < 0:
        _no_inotify(ctypes.get_errno(), "fs.inotify.max_user_watches")
        os.close(fd)
        return None
    return fd


def _no_inotify(errno: int, limit: str) -> None:
    """Say why changes will be seen by a once-a-second stat instead of inotify."""
    why = os.strerror(errno) if errno else "unknown error"
    hint = f" (raise the sysctl {limit})" if errno in (24, 28) else ""  # EMFILE, ENOSPC
    logger.warning(
        "flags: inotify unavailable: %s%s; checking the flags file once a second", why, hint
    )


class _Watcher:
    """A daemon thread that calls ``tick`` when the file may have changed, or when poked.

    It blocks in poll(2) on an inotify fd and a wake-up pipe, so it costs
    nothing while idle; without inotify it wakes once a second to stat.
    """

    def __init__(self, path: Path, tick: Callable[[], None]) -> None:
        self._tick = tick
        self._inotify = _inotify_open(path.parent)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = False
        self._stopped_from_inside = False
        self._thread = threading.Thread(
            target=self._run, name="knightwatch-flag-watcher", daemon=True
        )

    @property
    def uses_inotify(self) -> bool:
        """Whether changes are seen through inotify (else by polling)."""
        return self._inotify is not None

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def poke(self) -> None:
        """Wake the thread so it delivers pending changes."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")

    def stop(self) -> None:
        """Stop the thread and release its file descriptors."""
        self._stopping = True
        self.poke()
        if self._thread is threading.current_thread():
            self._stopped_from_inside = True  # a callback closed its Flags: _run closes the fds
            return
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if not self._thread.is_alive():  # never close fds a live thread may still poll
            self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._wake_r, self._wake_w, self._inotify):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._inotify = None

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            if self._stopped_from_inside:
                self._close_fds()

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self._inotify is not None:
            poller.register(self._inotify, select.POLLIN)
        while not self._stopping:
            timeout = None if self._inotify is not None else POLL_INTERVAL_S * 1000
            ready = {fd for fd, _ in poller.poll(timeout)}
            if self._stopping:
                return
            if self._wake_r in ready:
                self._drain(self._wake_r)
            if self._inotify is not None and self._inotify in ready:
                self._read_events(poller, self._inotify)
            # Every event leads to a stat; the reload happens only if the file's identity changed.
            try:
                self._tick()
            except Exception:
                logger.exception("flags: the watcher failed to reload")

    def _read_events(self, poller: select.poll, fd: int) -> None:
        """Consume inotify events; fall back to polling if the directory's watch is gone."""
        data = self._drain(fd)
        offset = 0
        while offset + _IN_EVENT.size <= len(data):
            _wd, mask, _cookie, length = _IN_EVENT.unpack_from(data, offset)
            offset += _IN_EVENT.size + length
            if mask & _IN_IGNORED:  # the directory was deleted or unmounted
                poller.unregister(fd)
                os.close(fd)
                self._inotify = None
                return

    @staticmethod
    def _drain(fd: int) -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


_default: Flags | None = None
_default_lock = threading.Lock()


def default_flags() -> Flags:
    """Return the process-wide :class:`Flags` built from the environment on first use."""
    global _default  # noqa: PLW0603  (one lazily built instance per process)
    with _default_lock:
        if _default is None:
            _default = Flags()
        return _default
