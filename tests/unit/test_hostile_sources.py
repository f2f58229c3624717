"""A corpus of hostile source trees: each is refused and the store is left exactly as it was.

Every refusal is a SourceTreeError or SpecError (InvalidInputError, exit code
2) whose message names the offending path and the rule. "Unchanged" means the
sorted list of every path under the store (directories included) is the same
before and after, or the store still does not exist. Comments marked
``Regression`` name a bug these tests once caught, so it stays fixed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from knightwatch.bundle import (
    ReleaseStore,
    SigningKey,
    build_release,
    plan_build,
)
from knightwatch.errors import InvalidInputError, SourceTreeError, SpecError

CLI = Path(sys.executable).parent / "knightwatch"
NOBODY = 65534

SPEC = """\
[release]
name = "hostile"
version = "1.0.0"
{release}

[[component]]
name = "app"
version = "1.0.0"
paths = ["app/**"]
{components}
"""
MAIN = b"print('hi')\n"


def write_tree(root: Path, *, release: str = "", components: str = "") -> Path:
    """Write a minimal valid tree (spec + app/main.py) at ``root`` and return it."""
    (root / "app").mkdir(parents=True, exist_ok=True)
    (root / "knightwatch.toml").write_text(SPEC.format(release=release, components=components))
    (root / "app" / "main.py").write_bytes(MAIN)
    return root


def snapshot(store: Path) -> list[str] | None:
    """Every path under ``store`` (directories included), sorted; None if it does not exist."""
    if not os.path.lexists(store):
        return None
    found: list[str] = []
    for directory, dirs, files in os.walk(store):
        rel = os.path.relpath(directory, store)
        found.extend(os.path.normpath(os.path.join(rel, name)) for name in [*dirs, *files])
    return sorted(found)


# --- the corpus --------------------------------------------------------------------------------


def _symlink_not_allowed(root: Path) -> None:
    write_tree(root)
    os.symlink("main.py", root / "app" / "link")


def _symlink_absolute(root: Path) -> None:
    write_tree(root, release="allow_symlinks = true")
    os.symlink("/etc/passwd", root / "app" / "link")


def _symlink_dotdot(root: Path) -> None:
    write_tree(root, release="allow_symlinks = true")
    os.symlink("../../outside.txt", root / "app" / "link")


def _symlink_dotdot_from_subdir(root: Path) -> None:
    write_tree(root, release="allow_symlinks = true")
    (root / "app" / "sub").mkdir()
    os.symlink("../main.py/../../../etc", root / "app" / "sub" / "link")


def _symlink_escape_via_inner_symlink(root: Path) -> None:
    # app/self -> "." stays inside, but app/up -> "self/../.." resolves to the
    # parent of the tree: lexically "app/self/../.." is ".", really it is "..".
    write_tree(root, release="allow_symlinks = true")
    os.symlink(".", root / "app" / "self")
    os.symlink("self/../..", root / "app" / "up")


def _fifo(root: Path) -> None:
    write_tree(root)
    os.mkfifo(root / "app" / "pipe")


def _socket(root: Path) -> None:
    write_tree(root)
    # bind by a relative name: the absolute tmp path may exceed AF_UNIX's 108 bytes
    with contextlib.chdir(root / "app"), socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")


def _device(root: Path) -> None:
    write_tree(root)
    try:
        os.mknod(root / "app" / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device file needs CAP_MKNOD")


def _name_not_utf8(root: Path) -> None:
    write_tree(root)
    fd = os.open(os.fsencode(root / "app") + b"/bad\xff.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)


def _nfc_collision(root: Path) -> None:
    write_tree(root)
    (root / "app" / "caf\u00e9.txt").write_bytes(b"precomposed\n")
    (root / "app" / "cafe\u0301.txt").write_bytes(b"decomposed\n")


def _too_large(root: Path) -> None:
    write_tree(root, release="max_file_size = 16")
    (root / "app" / "big.bin").write_bytes(b"x" * 17)


def _no_component(root: Path) -> None:
    write_tree(root)
    (root / "stray.txt").write_bytes(b"who owns me?\n")


def _two_components(root: Path) -> None:
    write_tree(
        root,
        components='[[component]]\nname = "shared"\nversion = "1.0.0"\npaths = ["app/*.py"]\n',
    )


def _reserved_dir(root: Path) -> None:
    write_tree(root)
    (root / ".knightwatch").mkdir()
    (root / ".knightwatch" / "release.json").write_text('{"name": "forged"}\n')


def _reserved_file(root: Path) -> None:
    write_tree(root)
    (root / ".knightwatch").write_text("forged\n")


def _component_without_files(root: Path) -> None:
    write_tree(
        root, components='[[component]]\nname = "docs"\nversion = "1.0.0"\npaths = ["docs/**"]\n'
    )


def _spec_unknown_key(root: Path) -> None:
    write_tree(root, release="allow_symlink = true")


def _spec_not_utf8(root: Path) -> None:
    write_tree(root)
    (root / "knightwatch.toml").write_bytes(b'[release]\nname = "caf\xe9"\n')


@dataclass(frozen=True)
class Hostile:
    """One hostile tree: how to make it, and what the refusal must name."""

    make: Callable[[Path], None]
    path: str
    rule: str
    error: type[InvalidInputError] = SourceTreeError


CORPUS: dict[str, Hostile] = {
    "symlink-not-allowed": Hostile(_symlink_not_allowed, "app/link", "allow_symlinks"),
    "symlink-absolute": Hostile(_symlink_absolute, "app/link", "leaves the source tree"),
    "symlink-dotdot": Hostile(_symlink_dotdot, "app/link", "leaves the source tree"),
    "symlink-dotdot-subdir": Hostile(
        _symlink_dotdot_from_subdir, "app/sub/link", "leaves the source tree"
    ),
    # Regression: once accepted (the check was lexical and ignored in-tree symlinks).
    "symlink-escape-via-inner-link": Hostile(
        _symlink_escape_via_inner_symlink, "app/up", "leaves the source tree"
    ),
    "fifo": Hostile(_fifo, "app/pipe", "is a FIFO"),
    "socket": Hostile(_socket, "app/sock", "is a socket"),
    "device": Hostile(_device, "app/null", "is a device file"),
    "name-not-utf8": Hostile(_name_not_utf8, "app/bad\\xff.txt", "not valid UTF-8"),
    "nfc-collision": Hostile(
        _nfc_collision, "app/caf\u00e9.txt", "after Unicode NFC normalisation"
    ),
    "over-max-file-size": Hostile(_too_large, "app/big.bin", "release.max_file_size"),
    "no-component": Hostile(_no_component, "stray.txt", "matches no component"),
    "two-components": Hostile(
        _two_components, "app/main.py", "matches several components (app, shared)"
    ),
    "reserved-dir": Hostile(_reserved_dir, ".knightwatch/release.json", "reserved"),
    "reserved-file": Hostile(_reserved_file, ".knightwatch", "reserved"),
    "component-without-files": Hostile(
        _component_without_files, "component[1].paths", "match no file", SpecError
    ),
    "spec-unknown-key": Hostile(
        _spec_unknown_key, "release.allow_symlink", "unknown key", SpecError
    ),
    "spec-not-utf8": Hostile(_spec_not_utf8, "knightwatch.toml", "not UTF-8", SpecError),
}


@pytest.fixture
def good_store(tmp_path: Path, signing_key: SigningKey) -> Path:
    """A store already holding one release built from a good tree."""
    store = tmp_path / "populated-store"
    good = write_tree(tmp_path / "good")
    (good / "app" / "data.txt").write_bytes(b"good data\n")
    result = build_release(good, store, signing_key)
    assert result.created
    return store


def assert_refusal(error: InvalidInputError, case: Hostile) -> None:
    """Assert ``error`` is the refusal ``case`` expects, naming path and rule."""
    assert type(error) is case.error, repr(error)
    assert error.exit_code == 2
    assert case.path in error.message, error.message
    assert case.rule in error.message, error.message
    if isinstance(error, SourceTreeError):
        assert error.path == case.path
    if isinstance(error, SpecError):
        assert error.file.endswith("knightwatch.toml")


class TestHostileTrees:
    """build_release refuses each hostile tree, names path and rule, and leaves the store."""

    @pytest.mark.parametrize("case_id", list(CORPUS))
    @pytest.mark.parametrize("store_state", ["absent", "populated"])
    def test_refused_store_unchanged(
        self,
        case_id: str,
        store_state: str,
        tmp_path: Path,
        signing_key: SigningKey,
        request: pytest.FixtureRequest,
    ) -> None:
        """The build is refused with path and rule, and the store's paths are unchanged."""
        case = CORPUS[case_id]
        if store_state == "populated":
            store: Path = request.getfixturevalue("good_store")
        else:
            store = tmp_path / "new-store"
        before = snapshot(store)
        source = tmp_path / "hostile"
        source.mkdir()
        case.make(source)
        with pytest.raises(InvalidInputError) as info:
            build_release(source, store, signing_key)
        assert_refusal(info.value, case)
        assert snapshot(store) == before
        if store_state == "populated":
            assert len(ReleaseStore(store).digests()) == 1

    @pytest.mark.parametrize("case_id", list(CORPUS))
    def test_plan_build_refuses(self, case_id: str, tmp_path: Path) -> None:
        """plan_build (validation alone, no store) refuses the same tree the same way."""
        case = CORPUS[case_id]
        case.make(tmp_path)
        with pytest.raises(InvalidInputError) as info:
            plan_build(tmp_path)
        assert_refusal(info.value, case)

    def test_all_problems_counted(self, tmp_path: Path, signing_key: SigningKey) -> None:
        """A tree with several problems names the first and lists the others."""
        write_tree(tmp_path, release="max_file_size = 16")
        os.mkfifo(tmp_path / "app" / "pipe")
        (tmp_path / "app" / "big.bin").write_bytes(b"x" * 100)
        (tmp_path / "stray.txt").write_bytes(b"?\n")
        with pytest.raises(SourceTreeError) as info:
            build_release(tmp_path, tmp_path / "store", signing_key)
        message = info.value.message
        assert message.startswith("app/big.bin: ")
        assert "2 more problem(s)" in message
        assert "app/pipe: is a FIFO" in message
        assert "stray.txt: matches no component" in message
        assert not (tmp_path / "store").exists()

    def test_spec_fifo_does_not_block(self, tmp_path: Path, signing_key: SigningKey) -> None:
        """A FIFO named knightwatch.toml is refused at once instead of blocking the build."""
        source = write_tree(tmp_path / "src")
        spec = source / "knightwatch.toml"
        spec.unlink()
        os.mkfifo(spec)
        store = tmp_path / "store"
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                build_release(source, store, signing_key)
            except BaseException as exc:  # handed to the test thread
                outcome.append(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(10)
        if worker.is_alive():
            # unblock the reader (it sees EOF) so the thread ends, then fail
            os.close(os.open(spec, os.O_WRONLY | os.O_NONBLOCK))
            worker.join(10)
            # Regression: load_spec once opened knightwatch.toml with a blocking open(2)
            # and followed symlinks, so a FIFO there hung the build forever.
            pytest.fail("build_release blocked opening a FIFO named knightwatch.toml")
        assert len(outcome) == 1
        error = outcome[0]
        assert isinstance(error, SpecError), repr(error)
        assert "knightwatch.toml" in error.message
        assert "regular file" in error.message
        assert not store.exists()


class TestAllowedTrees:
    """What the rules allow builds, and the manifest records it faithfully."""

    def test_symlink_inside_tree(self, tmp_path: Path, signing_key: SigningKey) -> None:
        """With allow_symlinks, an in-tree symlink builds and the manifest records its target."""
        source = write_tree(tmp_path / "src", release="allow_symlinks = true")
        (source / "app" / "sub").mkdir()
        os.symlink("main.py", source / "app" / "link")
        os.symlink("../main.py", source / "app" / "sub" / "up")
        store = tmp_path / "store"
        result = build_release(source, store, signing_key)
        manifest = ReleaseStore(store).load(result.digest).manifest
        by_path = {f.path: f for f in manifest.files}
        for path, target in [("app/link", "main.py"), ("app/sub/up", "../main.py")]:
            entry = by_path[path]
            assert entry.symlink == target
            assert entry.digest is None
            assert entry.size == 0
            assert entry.component == "app"
            assert entry.executable is False
        assert by_path["app/main.py"].symlink is None
        assert by_path["app/main.py"].digest is not None

    def test_hostile_paths_excluded(self, tmp_path: Path, signing_key: SigningKey) -> None:
        """Paths matched by release.exclude are never examined, so a FIFO there is fine."""
        source = write_tree(tmp_path / "src", release='exclude = ["app/tmp/**", "*.sock"]')
        (source / "app" / "tmp").mkdir()
        os.mkfifo(source / "app" / "tmp" / "pipe")
        os.mkfifo(source / "x.sock")
        store = tmp_path / "store"
        result = build_release(source, store, signing_key)
        paths = [f.path for f in ReleaseStore(store).load(result.digest).manifest.files]
        assert paths == [".knightwatch/release.json", "app/main.py"]

    def test_file_at_max_size(self, tmp_path: Path, signing_key: SigningKey) -> None:
        """A file exactly max_file_size bytes long is accepted."""
        source = write_tree(tmp_path / "src", release="max_file_size = 16")
        (source / "app" / "edge.bin").write_bytes(b"x" * 16)
        result = build_release(source, tmp_path / "store", signing_key)
        assert result.files == 3


# --- unreadable files: the build must run without root's DAC override ------------------------


def _unprivileged_prefix() -> tuple[list[str], bool] | None:
    """Return (argv prefix, runs-as-nobody) for running the CLI without DAC override.

    Prefer uid 65534 (nobody); when nobody cannot run the venv's interpreter
    (e.g. it lives under a 0700 /root), run as root with CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH dropped from the bounding set, which makes file modes
    bind root too. None if neither works.
    """
    probe = [os.fspath(CLI), "version"]
    with contextlib.suppress(OSError):
        done = subprocess.run(
            probe, user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, check=False
        )
        if done.returncode == 0:
            return [], True
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        prefix = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
        done = subprocess.run([*prefix, *probe], capture_output=True, check=False)
        if done.returncode == 0:
            return prefix, False
    return None


@pytest.fixture(scope="module")
def unprivileged() -> tuple[list[str], bool]:
    """How to run the CLI so that file permissions stop reads (skip if impossible)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges for the build")
    found = _unprivileged_prefix()
    if found is None:
        pytest.skip("cannot run the CLI as nobody nor without CAP_DAC_OVERRIDE")
    return found


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A short, world-traversable work directory (tmp_path's parents are 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="kw-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def _unreadable_file(root: Path) -> None:
    write_tree(root)
    (root / "app" / "secret.txt").write_bytes(b"secret\n")
    (root / "app" / "secret.txt").chmod(0o000)


def _unreadable_file_among_many(root: Path) -> None:
    # over 64 files: hashing runs in worker processes
    _unreadable_file(root)
    for index in range(100):
        (root / "app" / f"f{index:03}.txt").write_text(f"{index}\n")


def _unreadable_dir(root: Path) -> None:
    write_tree(root)
    (root / "app" / "private").mkdir()
    (root / "app" / "private" / "x.txt").write_bytes(b"x\n")
    (root / "app" / "private").chmod(0o000)


def _unsearchable_dir(root: Path) -> None:
    # readable but not searchable: names can be listed, entries cannot be stat'ed
    write_tree(root)
    (root / "app" / "private").mkdir()
    (root / "app" / "private" / "x.txt").write_bytes(b"x\n")
    (root / "app" / "private").chmod(0o644)


UNREADABLE: dict[str, Hostile] = {
    "file": Hostile(_unreadable_file, "app/secret.txt", "cannot be read"),
    "file-among-many": Hostile(_unreadable_file_among_many, "app/secret.txt", "cannot be read"),
    "directory": Hostile(_unreadable_dir, "app/private", "cannot be read"),
    # Regression: os.lstat in source._walk once raised PermissionError (traceback).
    "unsearchable-directory": Hostile(_unsearchable_dir, "app/private", "cannot be"),
}


def _open_up(directory: Path) -> None:
    """Make every directory under ``directory`` writable by anyone (for nobody)."""
    directory.chmod(0o777)
    for parent, dirs, _files in os.walk(directory):
        for name in dirs:
            Path(parent, name).chmod(0o777)


def _run_cli(prefix: list[str], as_nobody: bool, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, os.fspath(CLI), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
        check=False,
        user=NOBODY if as_nobody else None,
        group=NOBODY if as_nobody else None,
        extra_groups=[] if as_nobody else None,
    )


class TestUnreadable:
    """Files and directories the builder cannot read are refused, store unchanged."""

    @pytest.mark.parametrize("case_id", list(UNREADABLE))
    @pytest.mark.parametrize("store_state", ["absent", "populated"])
    def test_refused_store_unchanged(
        self,
        case_id: str,
        store_state: str,
        open_dir: Path,
        key_dir: Path,
        signing_key: SigningKey,
        unprivileged: tuple[list[str], bool],
    ) -> None:
        """The CLI exits 2 naming the path and 'cannot be read'; the store is unchanged."""
        prefix, as_nobody = unprivileged
        case = UNREADABLE[case_id]
        key = open_dir / "release.key"
        shutil.copyfile(key_dir / "release.key", key)
        key.chmod(0o644)
        store = open_dir / "store"
        if store_state == "populated":
            build_release(write_tree(open_dir / "good"), store, signing_key)
            if as_nobody:
                _open_up(store)
        elif as_nobody:
            open_dir.chmod(0o777)
        source = open_dir / "src"
        source.mkdir(mode=0o755)
        case.make(source)
        before = snapshot(store)
        done = _run_cli(
            prefix,
            as_nobody,
            "bundle",
            "build",
            os.fspath(source),
            "--store",
            os.fspath(store),
            "--key",
            os.fspath(key),
        )
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.startswith(f"error: {case.path}"), done.stderr
        assert case.rule in done.stderr
        assert snapshot(store) == before

    def test_missing_store_parents_not_left_behind(
        self,
        open_dir: Path,
        key_dir: Path,
        unprivileged: tuple[list[str], bool],
    ) -> None:
        """A refused build into STORE whose parents did not exist leaves no directories."""
        prefix, as_nobody = unprivileged
        key = open_dir / "release.key"
        shutil.copyfile(key_dir / "release.key", key)
        key.chmod(0o644)
        stores = open_dir / "stores"
        stores.mkdir(mode=0o777)
        stores.chmod(0o777)
        source = open_dir / "src"
        source.mkdir(mode=0o755)
        _unreadable_file(source)
        done = _run_cli(
            prefix,
            as_nobody,
            "bundle",
            "build",
            os.fspath(source),
            "--store",
            os.fspath(stores / "a" / "b" / "store"),
            "--key",
            os.fspath(key),
        )
        assert done.returncode == 2, done.stderr
        assert "app/secret.txt: cannot be read" in done.stderr
        # Regression: StagingArea once created a/ and a/b/ but recorded (and so
        # removed) only the store directory itself.
        assert snapshot(stores) == []


# --- the CLI's refusal output ----------------------------------------------------------------


def _fifo_named(rel: str) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        write_tree(root)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)

    return make


def _stray_named(rel: str) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        write_tree(root)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"?\n")

    return make


LONG = "app/" + "very-long-directory-name/" * 4 + "pipe"
CLI_CASES: dict[str, Hostile] = {
    "fifo": Hostile(_fifo, "app/pipe", "is a FIFO; a release holds only regular files"),
    "no-component": Hostile(
        _no_component, "stray.txt", "every file must belong to exactly one [[component]]"
    ),
    # Regression (this and below): fail() once put the message into Rich markup
    # unescaped, and the stderr console wrapped it at 80 columns.
    "markup-in-name": Hostile(_fifo_named("app/[bold]pipe"), "app/[bold]pipe", "is a FIFO"),
    "closing-tag-name": Hostile(_stray_named("[/]"), "[/]", "matches no component"),
    "long-path": Hostile(_fifo_named(LONG), LONG, "is a FIFO"),
}


class TestCliRefusal:
    """``knightwatch bundle build`` turns a refusal into one error line and a hint, exit 2."""

    @pytest.mark.parametrize("case_id", list(CLI_CASES))
    def test_short_error(self, case_id: str, tmp_path: Path, key_dir: Path) -> None:
        """Exit 2; stderr is 'error: PATH: RULE' then 'hint: …', no traceback, store untouched."""
        case = CLI_CASES[case_id]
        source = tmp_path / "src"
        source.mkdir()
        case.make(source)
        store = tmp_path / "store"
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        done = subprocess.run(
            [
                os.fspath(CLI),
                "bundle",
                "build",
                os.fspath(source),
                "--store",
                os.fspath(store),
                "--key",
                os.fspath(key_dir / "release.key"),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode == 2, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) <= 3, done.stderr
        assert lines[0].startswith("error: "), done.stderr
        assert any(line.startswith("hint: ") for line in lines[1:]), done.stderr
        assert lines[0].startswith(f"error: {case.path}: "), done.stderr
        assert case.rule in lines[0], done.stderr
        assert done.stdout == ""
        assert not store.exists()
