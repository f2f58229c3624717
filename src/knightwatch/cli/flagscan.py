"""The flag scan as the command line runs it: ``flags scan`` and the check in ``bundle build``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from knightwatch.bundle.flagscan import ScanReport, check_reads, scan_tree
from knightwatch.bundle.spec import ReleaseSpec, load_spec
from knightwatch.cli.output import err, out, print_json, shown
from knightwatch.errors import KnightwatchError, SourceTreeError

__all__ = ["FlagScanError", "report_scan", "scan_release"]


class FlagScanError(SourceTreeError):
    """The code reads a flag it does not declare, or a retired one."""


def scan_release(
    source: Path,
    spec: ReleaseSpec,
    *,
    files: Iterable[str] | None = None,
    patterns: list[str] | None = None,
    retired: list[str] | None = None,
) -> ScanReport:
    """Scan ``source`` for flag reads and check them against ``spec``'s declarations."""
    reads = scan_tree(source, files, patterns=[*spec.flag_scan.patterns, *(patterns or [])])
    known_retired = dict.fromkeys(retired or [], "retired (--retired)")
    known_retired.update(_retired_on_server())
    return check_reads(reads, [f.name for f in spec.flag], known_retired)


def _retired_on_server() -> dict[str, str]:
    """Retired flags from the control plane when KNIGHTWATCH_SERVER names one (else none)."""
    if not os.environ.get("KNIGHTWATCH_SERVER"):
        return {}
    from knightwatch.cli.options import connect

    try:
        flags = connect(timeout=10).get("/flags")
    except KnightwatchError as exc:
        err.print(f"[yellow]warning:[/] retired flags not checked: {exc.message}")
        return {}
    return {
        f["name"]: f"retired on {str(f['retired_at'])[:10]}: {f['retire_reason']}"
        for f in flags
        if f["state"] == "retired"
    }


def report_scan(
    source: Path, patterns: list[str], retired: list[str], *, json_output: bool
) -> None:
    """``flags scan``: print the findings; raise FlagScanError (exit 2) on an error."""
    report = scan_release(source, load_spec(source), patterns=patterns, retired=retired)
    if json_output:
        print_json([finding.__dict__ for finding in report.findings])
    else:
        print_findings(report)
    refuse_errors(report)


def print_findings(report: ScanReport, *, quiet_when_clean: bool = False) -> None:
    """One line per finding (errors first), or one line when there is none."""
    if not report.findings:
        if not quiet_when_clean:
            out.print("[green]✓[/] every flag read in the code is declared, none is retired")
        return
    console = err if report.errors else out
    for f in report.findings:
        colour = "red" if f.severity == "error" else "yellow"
        console.print(f"[{colour}]{f.severity}[/] {shown(f.message)} ({shown(f.code)})")


def refuse_errors(report: ScanReport) -> None:
    """Raise FlagScanError naming the first error's file and line, if there is an error."""
    if report.errors:
        first = report.errors[0]
        where = f"{first.path}:{first.line}" if first.path else "knightwatch.toml"
        rule = first.message.removeprefix(f"{where}: ")
        raise FlagScanError(
            where,
            f"{rule} ({len(report.errors)} flag error(s) in all)",
            hint="declare the flag in knightwatch.toml ([[flag]]) or remove the read",
        )
