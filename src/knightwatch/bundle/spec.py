"""The release spec: ``knightwatch.toml`` at the root of a source tree.

Every table is a strict pydantic model (unknown keys refused, sizes bounded),
so a careless or hostile spec is refused with the file, the key and the
expected form before anything is built.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from knightwatch.bundle.argv import Argv
from knightwatch.bundle.flagscan import compile_user_pattern
from knightwatch.bundle.globs import compile_glob
from knightwatch.bundle.guards import check_cel
from knightwatch.bundle.spec_messages import KeyedError, spec_error
from knightwatch.errors import InvalidInputError, SpecError

__all__ = [
    "SPEC_FILENAME",
    "ComponentSpec",
    "FlagScanSpec",
    "FlagSpec",
    "GuardSpec",
    "HaltSpec",
    "HealthCheck",
    "LimitsSpec",
    "LogPattern",
    "MetricsSpec",
    "ReleaseInfo",
    "ReleaseSpec",
    "ServiceSpec",
    "SmokeCheck",
    "load_spec",
    "parse_spec",
]

SPEC_FILENAME = "knightwatch.toml"
MAX_SPEC_BYTES = 1024 * 1024
DEFAULT_MAX_FILE_SIZE = 1024 * 1024 * 1024

Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
FlagName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,126}$")]
Version = Annotated[str, Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z._-]{0,62}$")]
ShortText = Annotated[str, Field(max_length=4096)]
Glob = Annotated[str, Field(min_length=1, max_length=1024)]


Url = Annotated[str, Field(pattern=r"^https?://[^\s]{1,2040}$")]
Seconds = Annotated[float, Field(gt=0, le=86_400)]
SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ReleaseInfo(_Strict):
    """``[release]``: what the release is called and how it is built."""

    name: Name
    version: Version
    description: ShortText = ""
    allow_symlinks: bool = False
    max_file_size: Annotated[int, Field(gt=0, le=64 * 1024**3)] = DEFAULT_MAX_FILE_SIZE
    exclude: Annotated[list[Glob], Field(max_length=1000)] = []

    @field_validator("exclude")
    @classmethod
    def _globs_compile(cls, globs: list[str]) -> list[str]:
        for glob in globs:
            compile_glob(glob)
        return globs


class ComponentSpec(_Strict):
    """``[[component]]``: a named part of the release that owns some files."""

    name: Name
    version: Version
    paths: Annotated[list[Glob], Field(min_length=1, max_length=1000)]
    depends_on: Annotated[list[Name], Field(max_length=1000)] = []
    description: ShortText = ""

    @field_validator("paths")
    @classmethod
    def _globs_compile(cls, globs: list[str]) -> list[str]:
        for glob in globs:
            compile_glob(glob)
        return globs


class HealthCheck(_Strict):
    """A check of the running service: an HTTP GET or a command, not both."""

    name: Name = "health"
    http: Url | None = None
    command: Argv | None = None
    expect_status: Annotated[int, Field(ge=100, le=599)] = 200
    timeout_s: Seconds = 5.0

    @model_validator(mode="after")
    def _exactly_one_probe(self) -> HealthCheck:
        if (self.http is None) == (self.command is None):
            raise ValueError("give exactly one of 'http' (a URL) or 'command' (an argv list)")
        return self


class SmokeCheck(HealthCheck):
    """``[[service.smoke]]``: a check run once after every switch."""

    expect_body: Annotated[str, Field(max_length=4096)] | None = None


class HaltSpec(_Strict):
    """``[service.halt]``: how the service is stopped, including by the kill switch."""

    signal: Literal[SIGNALS] = "SIGTERM"  # type: ignore[valid-type]
    grace_s: Seconds = 10.0
    hook: Argv | None = None


class LimitsSpec(_Strict):
    """``[service.limits]``: what the service's cgroup allows it (unset: no limit)."""

    memory: Annotated[int, Field(ge=4 * 1024 * 1024, le=1 << 50)] | None = None
    """Most bytes of memory the service's processes may use together (at least 4 MiB)."""
    cpu: Annotated[float, Field(gt=0, le=1024)] | None = None
    """A CPU quota in cores (``0.5`` is half of one core)."""
    cpu_weight: Annotated[int, Field(ge=1, le=10000)] | None = None
    """A CPU share relative to other groups (100 is the default weight)."""
    pids: Annotated[int, Field(ge=1, le=4194304)] | None = None
    """Most processes and threads the service may have at once."""


class MetricsSpec(_Strict):
    """``[service.metrics]``: the Prometheus endpoint the agent scrapes."""

    endpoint: Url
    scrape_interval_s: Annotated[float, Field(ge=0.01, le=3600)] = 0.1


class LogPattern(_Strict):
    """``[[service.log_pattern]]``: a regular expression over the service's output."""

    name: Name
    regex: Annotated[str, Field(min_length=1, max_length=1024)]
    severity: Literal["info", "warning", "critical"] = "warning"

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, regex: str) -> str:
        try:
            re.compile(regex)
        except (re.error, OverflowError, RecursionError) as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return regex


class ServiceSpec(_Strict):
    """``[service]``: how the agent runs, checks and stops the release's service."""

    command: Argv
    env: Annotated[
        dict[
            Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")],
            Annotated[str, Field(max_length=32768)],
        ],
        Field(max_length=256),
    ] = {}
    data_dirs: Annotated[list[Glob], Field(max_length=256)] = []
    health: HealthCheck | None = None
    smoke: Annotated[list[SmokeCheck], Field(max_length=256)] = []
    halt: HaltSpec = HaltSpec()
    limits: LimitsSpec | None = None
    metrics: MetricsSpec | None = None
    version_url: Url | None = None
    """GET returns the version the service reports about itself (else its env is used)."""
    log_pattern: Annotated[list[LogPattern], Field(max_length=256)] = []

    @field_validator("data_dirs")
    @classmethod
    def _relative_dirs(cls, dirs: list[str]) -> list[str]:
        for entry in dirs:
            parts = entry.split("/")
            if entry.startswith("/") or ".." in parts or entry.strip("/") in ("", "."):
                raise ValueError(
                    f"data_dirs entry {entry!r} must be a relative path inside the release "
                    "(a directory below its root)"
                )
        return dirs


FlagValue = bool | int | float | str


class FlagSpec(_Strict):
    """``[[flag]]``: a flag this release's code reads."""

    name: FlagName
    kind: Literal["release", "ops", "kill", "experiment"]
    description: Annotated[str, Field(min_length=1, max_length=4096)]
    default: FlagValue

    @field_validator("default")
    @classmethod
    def _bounded_default(cls, value: FlagValue) -> FlagValue:
        if isinstance(value, str) and len(value) > 4096:
            raise ValueError("a string default may hold at most 4096 characters")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("a default must be a finite number")
        return value


class GuardSpec(_Strict):
    """``[[guard]]``: a CEL rule over the service's metrics (evaluated by the agent)."""

    name: Name
    rule: Annotated[str, Field(min_length=1, max_length=4096)]
    severity: Literal["info", "warning", "critical"] = "warning"
    action: Literal["alert", "halt_node", "halt_fleet"] = "alert"

    @field_validator("rule")
    @classmethod
    def _rule_is_cel(cls, rule: str) -> str:
        check_cel(rule)
        return rule


class FlagScanSpec(_Strict):
    """``[flag_scan]``: extra patterns ``bundle build`` and ``flags scan`` find flag reads with.

    Build-time only: it is not part of the manifest, so it never changes a
    release's digest.
    """

    patterns: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=1024)]], Field(max_length=100)
    ] = []
    """Regular expressions with one capture group around the flag name."""

    @field_validator("patterns")
    @classmethod
    def _one_group_each(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                compile_user_pattern(pattern)
            except InvalidInputError as exc:
                raise ValueError(exc.message) from None
        return patterns


class ReleaseSpec(_Strict):
    """The whole parsed ``knightwatch.toml``."""

    release: ReleaseInfo
    component: Annotated[list[ComponentSpec], Field(min_length=1, max_length=1000)]
    service: ServiceSpec | None = None
    flag: Annotated[list[FlagSpec], Field(max_length=10_000)] = []
    guard: Annotated[list[GuardSpec], Field(max_length=1000)] = []
    flag_scan: FlagScanSpec = Field(default_factory=FlagScanSpec, exclude=True)

    @model_validator(mode="after")
    def _references_resolve(self) -> ReleaseSpec:
        _refuse_duplicates("component", [c.name for c in self.component])
        _refuse_duplicates("flag", [f.name for f in self.flag])
        _refuse_duplicates("guard", [g.name for g in self.guard])
        known = {c.name for c in self.component}
        for index, component in enumerate(self.component):
            for dep_index, dep in enumerate(component.depends_on):
                if dep not in known:
                    raise KeyedError(
                        f"component[{index}].depends_on[{dep_index}]",
                        f"unknown component {dep!r} (expected one of: {', '.join(sorted(known))})",
                    )
                if dep in component.depends_on[:dep_index]:
                    raise KeyedError(
                        f"component[{index}].depends_on[{dep_index}]",
                        f"{dep!r} is listed twice",
                    )
                if dep == component.name:
                    raise KeyedError(
                        f"component[{index}].depends_on[{dep_index}]",
                        "a component cannot depend on itself",
                    )
        _refuse_cycles(self.component)
        return self

    def to_json(self) -> dict[str, Any]:
        """Return the spec as plain JSON data, defaults filled in."""
        return self.model_dump(mode="json")


def _refuse_duplicates(table: str, names: list[str]) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            raise KeyedError(f"{table}[{index}].name", f"duplicate {table} name {name!r}")
        seen.add(name)


def _refuse_cycles(components: list[ComponentSpec]) -> None:
    graph = {c.name: list(c.depends_on) for c in components}
    done: set[str] = set()
    for start, deps in graph.items():
        if start in done:
            continue
        trail: list[str] = [start]
        on_trail = {start}
        stack = [iter(deps)]
        while stack:
            dep = next(stack[-1], None)
            if dep is None:
                stack.pop()
                finished = trail.pop()
                on_trail.discard(finished)
                done.add(finished)
            elif dep in on_trail:
                cycle = " -> ".join([*trail[trail.index(dep) :], dep])
                raise KeyedError("component", f"depends_on forms a cycle: {cycle}")
            elif dep not in done:
                trail.append(dep)
                on_trail.add(dep)
                stack.append(iter(graph[dep]))


def parse_spec(text: str, *, file: str = SPEC_FILENAME) -> ReleaseSpec:
    """Parse and validate spec text; raise :class:`SpecError` naming file and key."""
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise SpecError(
            "not valid TOML: nested too deeply",
            file=file,
            hint="flatten the nested arrays or tables",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(
            f"not valid TOML: {exc}",
            file=file,
            hint="check quoting and brackets near the position given",
        ) from exc
    try:
        return ReleaseSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_error(exc, file) from None


def load_spec(source: Path) -> ReleaseSpec:
    """Read ``SOURCE/knightwatch.toml`` and return the validated spec."""
    path = source / SPEC_FILENAME
    file = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise SpecError("not a regular file", file=file)
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(
            "no release spec here",
            file=file,
            hint=f"create {SPEC_FILENAME} at the root of the source tree",
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpecError("is a symlink, not a regular file", file=file) from None
        raise SpecError(f"cannot read: {exc.strerror}", file=file) from exc
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"larger than {MAX_SPEC_BYTES} bytes", file=file)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"not UTF-8 text (byte {exc.start})", file=file) from exc
    return parse_spec(text, file=file)
