"""The physical audit's comparison of a tree with its manifest, path by path."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from knightwatch.agent.releaseindex import ReleaseIndex
from knightwatch.agent.treecompare import inspect_paths, inspect_tree
from knightwatch.bundle.manifest import FileEntry, Manifest, SourceInfo
from knightwatch.bundle.spec import parse_spec
from knightwatch.protocol.audit import FindingKind, Severity

FILES = {
    "app/main.py": b"print('main')\n",
    "app/lib.py": b"def f():\n    return 1\n",
    "bin/run": b"#!/bin/sh\nexec python3 app/main.py\n",
    "config/settings.toml": b"mode = 'live'\n",
}
SPEC = """
[release]
name = "demo"
version = "1.0.0"

[[component]]
name = "all"
version = "1.0.0"
paths = ["**"]

[service]
command = ["bin/run"]
data_dirs = ["var"]
"""


def _manifest() -> Manifest:
    entries = [
        FileEntry(
            path=path,
            size=len(data),
            executable=path.startswith("bin/"),
            digest=hashlib.sha256(data).hexdigest(),
            component=None,
        )
        for path, data in sorted(FILES.items())
    ]
    entries.append(
        FileEntry(
            path="app/current.py",
            size=0,
            executable=False,
            digest=None,
            component=None,
            symlink="main.py",
        )
    )
    return Manifest(
        name="demo",
        version="1.0.0",
        source=SourceInfo(build_time="2012-08-01T13:30:00Z", build_time_source="SOURCE_DATE_EPOCH"),
        spec=parse_spec(SPEC),
        files=sorted(entries, key=lambda e: e.path),
    )


@pytest.fixture
def release(tmp_path: Path) -> tuple[Path, ReleaseIndex]:
    """An exact tree of the demo release, with its data link into a data directory."""
    tree = tmp_path / "tree"
    for path, data in FILES.items():
        target = tree / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(0o555 if path.startswith("bin/") else 0o444)
    (tree / "app" / "current.py").symlink_to("main.py")
    (tmp_path / "data" / "var").mkdir(parents=True)
    (tree / "var").symlink_to("../data/var")
    return tree, ReleaseIndex(_manifest(), {"var": "../data/var"})


def _kinds(tree: Path, index: ReleaseIndex) -> dict[str, tuple[FindingKind, Severity]]:
    found = inspect_tree(tree, index).all_findings()
    return {f.path or "": (f.kind, f.severity) for f in found}


def test_an_exact_tree_has_no_findings(release: tuple[Path, ReleaseIndex]) -> None:
    """The tree as staged is clean, and writes below the data link are not audited."""
    tree, index = release
    (tree / "var" / "orders.log").write_text("order 1\n")
    inspection = inspect_tree(tree, index)
    assert inspection.all_findings() == []
    assert inspection.files_hashed == len(FILES)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("app/extra.py", Severity.CRITICAL),
        ("app/extra.pth", Severity.CRITICAL),
        ("lib/native.so", Severity.CRITICAL),
        ("lib/native.so.1", Severity.CRITICAL),
        ("app/__pycache__/main.cpython-311.pyc", Severity.CRITICAL),
        ("README.txt", Severity.WARNING),
    ],
)
def test_unmanaged_files_get_their_severity(
    release: tuple[Path, ReleaseIndex], name: str, expected: Severity
) -> None:
    """Extra code is critical; an extra plain file is a warning."""
    tree, index = release
    target = tree / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("x\n")
    assert _kinds(tree, index)[name] == (FindingKind.UNMANAGED, expected)


def test_an_extra_executable_is_critical(release: tuple[Path, ReleaseIndex]) -> None:
    """An extra file with an execute bit is critical, whatever its name."""
    tree, index = release
    (tree / "helper").write_text("#!/bin/sh\n")
    (tree / "helper").chmod(0o755)
    assert _kinds(tree, index)["helper"] == (FindingKind.UNMANAGED, Severity.CRITICAL)


def test_pth_with_import_line_says_it_runs_code(release: tuple[Path, ReleaseIndex]) -> None:
    """A .pth whose line starts with ``import`` is named as code run by every interpreter."""
    tree, index = release
    (tree / "hook.pth").write_text("import os\n")
    [finding] = inspect_tree(tree, index).all_findings()
    assert "every interpreter" in finding.detail


def test_changes_are_named(release: tuple[Path, ReleaseIndex]) -> None:
    """Modified, missing, mode, type and symlink changes each get their kind."""
    tree, index = release
    os.chmod(tree / "app" / "main.py", 0o644)
    (tree / "app" / "main.py").write_bytes(b"print('evil')\n")
    (tree / "config" / "settings.toml").unlink()
    os.chmod(tree / "app" / "lib.py", 0o555)
    (tree / "bin" / "run").unlink()
    (tree / "bin" / "run").symlink_to("/bin/sh")
    (tree / "app" / "current.py").unlink()
    (tree / "app" / "current.py").symlink_to("lib.py")
    kinds = _kinds(tree, index)
    assert kinds["app/main.py"][0] in (FindingKind.MODIFIED, FindingKind.MODE)
    assert kinds["config/settings.toml"] == (FindingKind.MISSING, Severity.CRITICAL)
    assert kinds["app/lib.py"] == (FindingKind.MODE, Severity.CRITICAL)
    assert kinds["bin/run"] == (FindingKind.TYPE, Severity.CRITICAL)
    assert kinds["app/current.py"] == (FindingKind.SYMLINK, Severity.CRITICAL)


def test_a_modified_file_carries_both_digests(release: tuple[Path, ReleaseIndex]) -> None:
    """Same size, other bytes: the finding names the expected and the actual digest."""
    tree, index = release
    path = tree / "config" / "settings.toml"
    os.chmod(path, 0o644)
    path.write_bytes(b"mode = 'test'\n")
    os.chmod(path, 0o444)
    [finding] = inspect_tree(tree, index).all_findings()
    assert finding.kind is FindingKind.MODIFIED
    assert finding.expected == hashlib.sha256(FILES["config/settings.toml"]).hexdigest()
    assert finding.actual == hashlib.sha256(b"mode = 'test'\n").hexdigest()


def test_paths_limit_the_look_to_what_changed(release: tuple[Path, ReleaseIndex]) -> None:
    """inspect_paths looks only at the named paths and below them (missing ones included)."""
    tree, index = release
    (tree / "config" / "settings.toml").unlink()
    (tree / "app" / "extra.py").write_text("x\n")
    only_app = inspect_paths(tree, index, ["app"])
    assert {f.path for f in only_app.all_findings()} == {"app/extra.py"}
    assert "config/settings.toml" not in only_app.checked
    gone = inspect_paths(tree, index, ["config/settings.toml"])
    assert [f.kind for f in gone.all_findings()] == [FindingKind.MISSING]


def test_paths_below_the_data_link_are_skipped(release: tuple[Path, ReleaseIndex]) -> None:
    """A watcher event below a data_dirs link is not audited at all."""
    tree, index = release
    (tree / "var" / "x.py").write_text("data, not code\n")
    assert inspect_paths(tree, index, ["var/x.py"]).checked == set()
