"""Finding the feature flags a release's code reads, before it ships.

A pure scan of a source tree: Python files are parsed with :mod:`ast` (calls
of the knightwatch SDK and OpenFeature getters with a literal name), every
other text file — and a Python file that does not parse — is searched with
regular expressions (:data:`DEFAULT_PATTERNS` plus the user's own). The reads
are then checked against the flags ``knightwatch.toml`` declares and the ones
that were retired (:func:`check_reads`).

Nothing is executed and nothing is written; binary files, files over
:data:`MAX_SCAN_BYTES`, non-regular files and symlinks that leave the tree are
skipped.
"""

from __future__ import annotations

import ast
import bisect
import os
import re
import stat
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from knightwatch.errors import InvalidInputError, SourceTreeError
from knightwatch.text import visible

__all__ = [
    "DEFAULT_PATTERNS",
    "FLAG_NAME",
    "MAX_SCAN_BYTES",
    "Finding",
    "FlagRead",
    "ScanReport",
    "check_reads",
    "scan_tree",
]

FLAG_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,126}")
"""A valid flag name (use ``fullmatch``), the same rule as ``[[flag]] name``."""
MAX_SCAN_BYTES = 2 * 1024 * 1024
"""Files larger than this are skipped."""
_SNIFF_BYTES = 8 * 1024
_SHOWN_CHARS = 60
_SKIPPED_DIRS = frozenset({".git"})
_SPEC_FILENAME = "knightwatch.toml"

_SDK_GETTERS = ("is_enabled", "get_bool", "get_int", "get_float", "get_str", "get", "details")
_OPENFEATURE_KINDS = ("boolean", "string", "integer", "float", "object")
_OPENFEATURE_GETTERS = tuple(
    f"get_{kind}_{what}" for kind in _OPENFEATURE_KINDS for what in ("value", "details")
)
_GENERIC_GETTERS = frozenset({"get", "details"})
"""Names too common to trust on any object: only on the SDK's ``flags``."""
_ANY_RECEIVER = frozenset(_SDK_GETTERS) - _GENERIC_GETTERS | frozenset(_OPENFEATURE_GETTERS)
_SDK_MODULE = "knightwatch.sdk"
_KEY_KEYWORDS = ("flag_key", "name")

Severity = Literal["error", "warning"]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _alternatives(names: Iterable[str]) -> str:
    variants: set[str] = set()
    for name in names:
        camel = _camel(name)
        variants.update({name, camel, camel[0].upper() + camel[1:]})
    return "|".join(sorted(variants, key=lambda v: (-len(v), v)))


_QUOTED = (
    r'"((?:[^"\\\n]|\\.)*)"',
    r"'((?:[^'\\\n]|\\.)*)'",
    r"`((?:[^`$\\\n]|\\.)*)`",
)
_SDK_CALL = rf"\b[Ff]lags\s*\.\s*(?:{_alternatives(_SDK_GETTERS)})\s*\(\s*"
_OF_NAMES = _alternatives((*_OPENFEATURE_GETTERS, "get_number_value", "get_number_details"))
_OF_CALL = rf"(?<![\w$])(?:{_OF_NAMES}|get_double_value|getDoubleValue|getDoubleDetails)"
_OF_CALL += r"(?:Async)?\s*\(\s*"
_GO_CALL = r"\.\s*(?:Boolean|String|Int|Float|Object)Value(?:Details)?\s*\(\s*"
_GO_CALL += r"[A-Za-z_][\w.]*(?:\(\))?\s*,\s*"

DEFAULT_PATTERNS: tuple[str, ...] = tuple(
    prefix + quoted for prefix in (_SDK_CALL, _OF_CALL, _GO_CALL) for quoted in _QUOTED
)
"""Regular expressions, one capture group each (the flag name), for flag reads in any text:
the knightwatch SDK (``flags.is_enabled("x")``, ``flags.get_bool('x')``, … and their
camelCase forms) and OpenFeature clients (``get_boolean_value("x"``, ``getBooleanValue("x"``,
``GetBooleanValueAsync("x"``, Go's ``client.BooleanValue(ctx, "x"``, … and ``*_details``)."""


@dataclass(frozen=True)
class FlagRead:
    """One place a file reads a flag."""

    name: str
    """The flag name as written; for a dynamic read, the expression that computes it."""
    path: str
    """Relative POSIX path of the file."""
    line: int
    dynamic: bool = False
    """True when the name is computed at run time, so the scan cannot check it."""


@dataclass(frozen=True)
class Finding:
    """One problem (or notice) about the flags of a release."""

    severity: Severity
    code: str
    """``undeclared``, ``unread``, ``retired``, ``bad-name`` or ``dynamic-name``."""
    flag: str
    path: str | None
    line: int | None
    message: str


@dataclass(frozen=True)
class ScanReport:
    """What :func:`check_reads` found, errors first."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        """The findings that must stop the release."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """The findings worth a look that do not stop the release."""
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors


# --- scanning -------------------------------------------------------------------------


def scan_tree(
    root: Path,
    files: Iterable[str] | None = None,
    *,
    patterns: Sequence[str] = (),
    include_defaults: bool = True,
) -> list[FlagRead]:
    """Return every flag read in the text files below ``root``, sorted by path and line.

    ``files`` restricts the scan to these relative paths (a bundle's file list);
    otherwise the tree is walked (``.git`` and the root ``knightwatch.toml`` are
    left out). ``patterns`` are extra regular expressions with one capture group
    each; one that does not compile or has another number of groups is refused
    with :class:`InvalidInputError`. ``include_defaults=False`` turns off the
    built-in detection (Python AST and :data:`DEFAULT_PATTERNS`), leaving only
    ``patterns``. Raise :class:`InvalidInputError` if ``root`` is not a directory and
    :class:`SourceTreeError` if a listed file cannot be read.
    """
    user = [compile_user_pattern(p) for p in patterns]
    defaults = [re.compile(p) for p in DEFAULT_PATTERNS] if include_defaults else []
    root_real = os.path.realpath(root)
    if not os.path.isdir(root_real):
        raise InvalidInputError(f"{visible(str(root))}: not a directory, nothing to scan for flags")
    rels = _walk(root_real) if files is None else sorted(set(files))
    reads: set[FlagRead] = set()
    parents: dict[str, str | None] = {}
    for rel in rels:
        data = _read_candidate(root_real, rel, parents)
        if data is not None:
            text = data.decode("utf-8", errors="replace")
            reads.update(_scan_text(text, rel, defaults, user, python=include_defaults))
    return sorted(reads, key=lambda r: (r.path, r.line, r.name, r.dynamic))


def compile_user_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a user's flag pattern; InvalidInputError unless it has exactly one group."""
    shown = visible(repr(_shorten(pattern, 200)))
    hint = "fix the flag pattern: one capture group around the flag name, (?:...) elsewhere"
    try:
        compiled = re.compile(pattern)
    except (re.error, OverflowError, RecursionError, TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"flag pattern {shown} is not a valid regular expression: {exc}", hint=hint
        ) from None
    if compiled.groups != 1:
        raise InvalidInputError(
            f"flag pattern {shown} has {compiled.groups} capture groups; "
            "it needs exactly one, around the flag name",
            hint=hint,
        )
    return compiled


def _walk(root: str) -> Iterator[str]:
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        rel_dir = os.path.relpath(directory, root)
        for name in sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            rel = rel.replace(os.sep, "/")
            if rel != _SPEC_FILENAME and _is_utf8(rel):
                yield rel


def _is_utf8(rel: str) -> bool:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_candidate(root: str, rel: str, parents: dict[str, str | None]) -> bytes | None:
    """The bytes of a text file inside ``root``, or None if the scan skips it.

    ``parents`` caches each directory's real path (None: outside ``root``), so
    a tree of thousands of files costs one ``realpath`` per directory, not per
    file; only a file that is itself a symlink is resolved on its own.
    """
    try:
        path = _regular_file_inside(root, rel, parents)
        if path is None:
            return None
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
            if b"\0" in head:
                return None  # binary: not read any further
            data = head + handle.read(MAX_SCAN_BYTES + 1 - len(head))
    except FileNotFoundError:
        if os.path.islink(os.path.join(root, rel)):
            return None
        raise SourceTreeError(rel, "is listed for the flag scan but does not exist") from None
    except OSError as exc:
        raise SourceTreeError(rel, f"cannot be read for the flag scan: {exc.strerror}") from None
    return data if len(data) <= MAX_SCAN_BYTES else None


def _regular_file_inside(root: str, rel: str, parents: dict[str, str | None]) -> str | None:
    """The real path of ``rel`` if it is a regular file inside ``root`` small enough to scan."""
    parent, _, name = rel.rpartition("/")
    if parent not in parents:
        resolved = os.path.realpath(os.path.join(root, parent))
        parents[parent] = resolved if _inside(root, resolved) else None
    real_parent = parents[parent]
    if real_parent is None:
        return None
    path = os.path.join(real_parent, name)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        path = os.path.realpath(path)
        if not _inside(root, path):
            return None
        st = os.stat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SCAN_BYTES:
        return None
    return path


def _inside(root: str, real: str) -> bool:
    return os.path.commonpath([root, real]) == root


def _scan_text(
    text: str,
    rel: str,
    defaults: Sequence[re.Pattern[str]],
    user: Sequence[re.Pattern[str]],
    *,
    python: bool,
) -> list[FlagRead]:
    reads: list[FlagRead] = []
    tree = _parse_python(text) if python and rel.endswith(".py") else None
    if tree is not None:
        reads.extend(_ast_reads(tree, rel))
    else:
        reads.extend(_regex_reads(text, rel, defaults))
    reads.extend(_regex_reads(text, rel, user))
    return reads


def _regex_reads(text: str, rel: str, patterns: Sequence[re.Pattern[str]]) -> list[FlagRead]:
    reads: list[FlagRead] = []
    newlines: list[int] | None = None
    for pattern in patterns:
        for match in pattern.finditer(text):
            name = match.group(1)
            if name is None:
                continue
            if newlines is None:
                newlines = [m.start() for m in re.finditer("\n", text)]
            line = bisect.bisect_left(newlines, match.start(1)) + 1
            reads.append(FlagRead(name, rel, line))
    return reads


# --- Python ---------------------------------------------------------------------------


def _parse_python(text: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


@dataclass(frozen=True)
class _Aliases:
    """What the module's imports bind: names for the SDK's ``flags`` and its functions."""

    receivers: frozenset[str]
    functions: Mapping[str, str]


def _aliases(tree: ast.Module) -> _Aliases:
    receivers: set[str] = set()
    functions: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _in_sdk(alias.name) and alias.asname:
                    receivers.add(alias.asname)
        elif isinstance(node, ast.ImportFrom) and _in_sdk(node.module or ""):
            for alias in node.names:
                bound = alias.asname or alias.name
                if alias.name in _SDK_GETTERS:
                    functions[bound] = alias.name
                else:
                    receivers.add(bound)
    return _Aliases(frozenset(receivers), functions)


def _in_sdk(module: str) -> bool:
    return module == _SDK_MODULE or module.startswith(_SDK_MODULE + ".")


def _ast_reads(tree: ast.Module, rel: str) -> list[FlagRead]:
    aliases = _aliases(tree)
    reads: list[FlagRead] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_getter(node.func, aliases):
            read = _call_read(node, rel)
            if read is not None:
                reads.append(read)
    return reads


def _is_getter(func: ast.expr, aliases: _Aliases) -> bool:
    if isinstance(func, ast.Name):
        return func.id in aliases.functions or func.id in _ANY_RECEIVER
    if isinstance(func, ast.Attribute):
        if func.attr in _ANY_RECEIVER:
            return True
        return func.attr in _GENERIC_GETTERS and _is_flags_object(func.value, aliases)
    return False


def _is_flags_object(node: ast.expr, aliases: _Aliases) -> bool:
    """True for ``flags``, ``self.flags``, ``sdk.flags`` or a name imported from the SDK."""
    if isinstance(node, ast.Name):
        return node.id == "flags" or node.id in aliases.receivers
    return isinstance(node, ast.Attribute) and node.attr == "flags"


def _call_read(call: ast.Call, rel: str) -> FlagRead | None:
    arg = _key_argument(call)
    if arg is None:
        return None
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return FlagRead(arg.value, rel, arg.lineno)
    return FlagRead(_source_of(arg), rel, arg.lineno, dynamic=True)


def _key_argument(call: ast.Call) -> ast.expr | None:
    if call.args:
        return call.args[0]
    named = [k for k in call.keywords if k.arg in _KEY_KEYWORDS]
    spread = [k for k in call.keywords if k.arg is None]
    return (named or spread)[0].value if named or spread else None


def _source_of(node: ast.expr) -> str:
    if isinstance(node, ast.Starred):
        node = node.value
    try:
        text = ast.unparse(node)
    except (RecursionError, ValueError):
        text = type(node).__name__
    return _shorten(text, _SHOWN_CHARS)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- checking -------------------------------------------------------------------------


def check_reads(
    reads: Sequence[FlagRead],
    declared: Iterable[str],
    retired: Mapping[str, str] | None = None,
) -> ScanReport:
    """Check the reads against the declared flags and the retired ones.

    A flag read but not declared is an ``undeclared`` error; a retired flag still
    read, a ``retired`` error; a name that is not a valid flag name, a
    ``bad-name`` error; a name computed at run time, a ``dynamic-name`` warning;
    a declared flag nobody reads, an ``unread`` warning.
    """
    declared_names = set(declared)
    retired = retired or {}
    findings: dict[tuple[str, str, str | None, int | None], Finding] = {}
    for read in reads:
        finding = _check_read(read, declared_names, retired)
        if finding is not None:
            findings.setdefault(_key(finding), finding)
    dynamic = sum(1 for r in reads if r.dynamic)
    read_names = {r.name for r in reads if not r.dynamic}
    for name in sorted(declared_names - read_names):
        finding = _unread(name, dynamic)
        findings.setdefault(_key(finding), finding)
    return ScanReport(sorted(findings.values(), key=_order))


def _key(finding: Finding) -> tuple[str, str, str | None, int | None]:
    return (finding.code, finding.flag, finding.path, finding.line)


def _order(finding: Finding) -> tuple[int, str, int, str]:
    rank = 0 if finding.severity == "error" else 1
    return (rank, finding.path or "", finding.line or 0, finding.flag)


def _check_read(read: FlagRead, declared: set[str], retired: Mapping[str, str]) -> Finding | None:
    where = f"{visible(read.path)}:{read.line}"
    if read.dynamic:
        return _dynamic(read, where)
    if FLAG_NAME.fullmatch(read.name) is None:
        return _bad_name(read, where)
    if read.name in retired:
        return _retired(read, where, retired[read.name])
    if read.name not in declared:
        return _undeclared(read, where)
    return None


def _dynamic(read: FlagRead, where: str) -> Finding:
    message = (
        f"{where}: reads a flag whose name is computed at run time ({visible(read.name)}); "
        "the scan cannot check it — use a literal flag name"
    )
    return Finding("warning", "dynamic-name", read.name, read.path, read.line, message)


def _bad_name(read: FlagRead, where: str) -> Finding:
    shown = visible(repr(_shorten(read.name, _SHOWN_CHARS)))
    message = (
        f"{where}: {shown} is not a valid flag name (a lowercase letter, then up to 126 of "
        "a-z 0-9 _ . -)"
    )
    return Finding("error", "bad-name", shown, read.path, read.line, message)


def _retired(read: FlagRead, where: str, why: str) -> Finding:
    message = (
        f"{where}: reads flag {read.name!r}, which is retired ({visible(_shorten(why, 200))}); "
        "dead code found before it ships — remove the read"
    )
    return Finding("error", "retired", read.name, read.path, read.line, message)


def _undeclared(read: FlagRead, where: str) -> Finding:
    message = (
        f"{where}: reads flag {read.name!r}, which is not declared; "
        "declare it in knightwatch.toml with a [[flag]] table (name, kind, description, default)"
    )
    return Finding("error", "undeclared", read.name, read.path, read.line, message)


def _unread(name: str, dynamic: int) -> Finding:
    message = (
        f"flag {name!r} is declared in knightwatch.toml but no scanned file reads it; "
        "remove its [[flag]] table if the code no longer uses it"
    )
    if dynamic:
        message += f" ({dynamic} read(s) with a computed name could not be checked)"
    return Finding("warning", "unread", name, None, None, message)
