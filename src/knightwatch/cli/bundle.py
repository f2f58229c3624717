"""``knightwatch bundle``: build, verify, show and diff release bundles."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from knightwatch.cli.options import JsonOpt
from knightwatch.cli.output import out, print_json, progress_bar, shown
from knightwatch.errors import InvalidInputError, VerificationError

if TYPE_CHECKING:
    from knightwatch.bundle.manifest import Manifest

app = typer.Typer(help="Build, verify, inspect and compare release bundles.", no_args_is_help=True)

StoreOpt = Annotated[Path, typer.Option("--store", help="Release store directory")]


@app.command(
    "build",
    epilog="Example: knightwatch bundle build examples/smars --store store/ --key keys/release.key",
)
def build(
    source: Annotated[Path, typer.Argument(help="Source tree with knightwatch.toml at its root")],
    store: StoreOpt,
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (PEM) to sign with")],
    workers: Annotated[int | None, typer.Option(help="Hashing processes (default: CPUs)")] = None,
    rehash: Annotated[
        bool,
        typer.Option(
            "--rehash",
            help="Hash every file; by default a file whose stat (size, inode, mtime, ctime) "
            "is unchanged since this store's last build of SOURCE keeps its digest",
        ),
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Hash, store, describe (SBOM) and sign the release in SOURCE."""
    from knightwatch.bundle import build_release, load_signing_key, plan_build
    from knightwatch.cli.flagscan import print_findings, refuse_errors, scan_release

    signing_key = load_signing_key(key)
    plan = plan_build(source)
    scan = scan_release(source, plan.spec, files=[e.path for e in plan.entries])
    if not json_output or scan.errors:
        print_findings(scan, quiet_when_clean=True)
    refuse_errors(scan)  # a flag read but not declared, or a retired one: nothing is built
    with progress_bar("hashing", plan.total_bytes, enabled=not json_output) as advance:
        result = build_release(
            source,
            store,
            signing_key,
            workers=workers,
            on_progress=advance,
            plan=plan,
            rehash=rehash,
        )
    if json_output:
        print_json(result.to_json())
        return
    verb = "built" if result.created else "already in the store (identical rebuild)"
    out.print(f"[green]✓[/] [bold]{shown(result.release_id)}[/] {verb}")
    table = _fact_table()
    table.add_row("digest", f"sha256:{result.digest}")
    table.add_row("files", f"{result.files:,} ({_size(result.total_bytes)})")
    table.add_row("blobs written", f"{result.blobs_written:,} ({_size(result.bytes_written)})")
    table.add_row("signed by key", shown(result.keyid))
    table.add_row("time", f"{result.seconds:.2f} s")
    out.print(table)


@app.command(
    "verify",
    epilog="Example: knightwatch bundle verify smars@2012.8.1 --store store/ "
    "--trust keys/release.pub",
)
def verify(
    release: Annotated[str, typer.Argument(help="Release ID, name@version or digest (prefix)")],
    store: StoreOpt,
    trust: Annotated[list[Path], typer.Option("--trust", help="Trusted public key (repeatable)")],
    workers: Annotated[int | None, typer.Option(help="Hashing processes (default: CPUs)")] = None,
    json_output: JsonOpt = False,
) -> None:
    """Re-hash every blob and check the manifest digest, SBOM and signature."""
    from knightwatch.bundle import load_trusted_key, verify_release

    trusted = [load_trusted_key(path) for path in trust]
    with progress_bar("verifying", 0, enabled=False) as advance:
        report = verify_release(store, release, trusted, workers=workers, on_progress=advance)
    if json_output:
        print_json(report.to_json())
    elif report.ok:
        out.print(
            f"[green]✓[/] [bold]{shown(report.release_id)}[/] verified: {report.files:,} files, "
            f"{report.blobs:,} blobs, {_size(report.bytes)} re-hashed; manifest, SBOM and "
            f"signature (key {shown(report.signed_by[0][:16])}…) match"
        )
    if not report.ok:  # the error lists the problems (once, on stderr)
        raise VerificationError(report.release_id or release, report.problems)


@app.command("show", epilog="Example: knightwatch bundle show smars@2012.8.1 --store store/")
def show(
    release: Annotated[str, typer.Argument(help="Release ID, name@version or digest (prefix)")],
    store: StoreOpt,
    files: Annotated[bool, typer.Option("--files", help="List every file too")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Show a stored release: identity, components, flags, guards and service."""
    from knightwatch.bundle import ReleaseStore

    manifest = ReleaseStore(store).find(release).manifest
    if json_output:
        print_json(
            {
                "release_id": manifest.release_id,
                "digest": manifest.digest,
                "manifest": manifest.to_json(),
            }
        )
        return
    _print_identity(manifest)
    out.print(_components_table(manifest))
    if manifest.spec.flag:
        table = Table("flag", "kind", "default", "description", title="flags")
        for flag in manifest.spec.flag:
            table.add_row(
                shown(flag.name),
                shown(flag.kind),
                shown(repr(flag.default)),
                shown(flag.description),
            )
        out.print(table)
    if manifest.spec.guard:
        table = Table("guard", "severity", "action", "rule", title="guards")
        for guard in manifest.spec.guard:
            table.add_row(
                shown(guard.name), shown(guard.severity), shown(guard.action), shown(guard.rule)
            )
        out.print(table)
    if files:
        table = Table("path", "component", "size", "exec", "digest", title="files")
        for entry in manifest.files:
            table.add_row(
                shown(entry.path),
                shown(entry.component or "(identity)"),
                _size(entry.size),
                "x" if entry.executable else "",
                (entry.digest or "")[:16],
            )
        out.print(table)


@app.command(
    "diff", epilog="Example: knightwatch bundle diff smars@2012.8.1 smars@2012.8.2 --store store/"
)
def diff(
    a: Annotated[str, typer.Argument(help="The older release")],
    b: Annotated[str, typer.Argument(help="The newer release")],
    store: StoreOpt,
    json_output: JsonOpt = False,
) -> None:
    """Files added, removed and changed; components changed; downstream impact."""
    from knightwatch.bundle import ReleaseStore, diff_releases

    releases = ReleaseStore(store)
    result = diff_releases(releases.find(a).manifest, releases.find(b).manifest)
    if json_output:
        print_json(result.to_json())
        return
    out.print(f"[bold]{shown(result.a)}[/] → [bold]{shown(result.b)}[/]")
    if result.identical:
        out.print("[green]identical[/]: no file and no component differs")
        return
    for label, paths, mark in (
        ("added", result.files_added, "[green]+[/]"),
        ("removed", result.files_removed, "[red]-[/]"),
        ("changed", result.files_changed, "[yellow]~[/]"),
    ):
        if paths:
            out.print(f"files {label} ({len(paths)}):")
            for path in paths:
                out.print(f"  {mark} {shown(path)}")
    table = Table("component", "change", title="components")
    for name in result.components_added:
        table.add_row(shown(name), "[green]added[/]")
    for name in result.components_removed:
        table.add_row(shown(name), "[red]removed[/]")
    for name in result.components_changed:
        table.add_row(shown(name), "[yellow]changed[/]")
    for name in result.downstream:
        table.add_row(shown(name), "[magenta]downstream[/] (depends on a changed component)")
    out.print(table)


def _print_identity(manifest: Manifest) -> None:
    src = manifest.source
    table = _fact_table(shown(manifest.release_id))
    table.add_row("digest", f"sha256:{manifest.digest}")
    table.add_row("description", shown(manifest.description or "-"))
    commit = f"{src.commit}{' (dirty)' if src.dirty else ''}" if src.commit else "not from git"
    table.add_row("source commit", shown(commit))
    table.add_row("build time", shown(f"{src.build_time} (from {src.build_time_source})"))
    table.add_row(
        "files", f"{len(manifest.files):,} ({_size(sum(f.size for f in manifest.files))})"
    )
    service = manifest.spec.service
    table.add_row("service", shown(" ".join(service.command) if service else "-"))
    out.print(table)


def _fact_table(title: str | None = None) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2), title=title)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    return table


def _components_table(manifest: Manifest) -> Table:
    from knightwatch.bundle.manifest import component_digest

    table = Table(
        "component", "version", "files", "size", "depends on", "sha256", title="components"
    )
    for spec in manifest.spec.component:
        owned = manifest.component_files(spec.name)
        table.add_row(
            shown(spec.name),
            shown(spec.version),
            str(len(owned)),
            _size(sum(f.size for f in owned)),
            shown(", ".join(spec.depends_on) or "-"),
            component_digest(owned)[:16],
        )
    return table


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise InvalidInputError("unreachable")
