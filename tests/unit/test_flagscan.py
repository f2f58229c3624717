"""The flag scanner: which flags a release's code reads, checked against the spec."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from knightwatch.bundle.flagscan import (
    DEFAULT_PATTERNS,
    MAX_SCAN_BYTES,
    FlagRead,
    ScanReport,
    check_reads,
    scan_tree,
)
from knightwatch.errors import InvalidInputError, SourceTreeError


def write(root: Path, rel: str, text: str | bytes) -> Path:
    """Write ``text`` at ``root/rel``, making the directories."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def triples(reads: list[FlagRead]) -> list[tuple[str, str, int]]:
    """The reads as (name, path, line), the static ones only."""
    return [(r.name, r.path, r.line) for r in reads if not r.dynamic]


def codes(report: ScanReport) -> list[tuple[str, str, str | None, int | None]]:
    """The findings as (code, flag, path, line)."""
    return [(f.code, f.flag, f.path, f.line) for f in report.findings]


class TestDefaultPatterns:
    def test_each_has_exactly_one_group(self) -> None:
        """Every built-in pattern compiles with one capture group, the flag name."""
        assert DEFAULT_PATTERNS
        for pattern in DEFAULT_PATTERNS:
            assert re.compile(pattern).groups == 1, pattern


class TestPython:
    def test_sdk_calls_with_line_numbers(self, tmp_path: Path) -> None:
        """Every SDK getter with a literal name is a read at the literal's line."""
        write(
            tmp_path,
            "app/main.py",
            "from knightwatch.sdk import flags\n"
            "\n"
            "if flags.is_enabled('new-checkout'):\n"
            '    n = flags.get_int( "batch.size" )\n'
            '    x = flags.get_bool("b") or flags.get_float("c") or flags.get_str("d")\n'
            '    y = flags.get("e"), flags.details("f")\n'
            "    z = flags.is_enabled(\n"
            '        "multi_line"\n'
            "    )\n"
            "    k = flags.get_bool(name='by-keyword')\n",
        )
        assert triples(scan_tree(tmp_path)) == [
            ("new-checkout", "app/main.py", 3),
            ("batch.size", "app/main.py", 4),
            ("b", "app/main.py", 5),
            ("c", "app/main.py", 5),
            ("d", "app/main.py", 5),
            ("e", "app/main.py", 6),
            ("f", "app/main.py", 6),
            ("multi_line", "app/main.py", 8),
            ("by-keyword", "app/main.py", 10),
        ]

    def test_aliases(self, tmp_path: Path) -> None:
        """An aliased SDK module or function is still seen."""
        write(
            tmp_path,
            "a.py",
            "from knightwatch.sdk import flags as f\n"
            "import knightwatch.sdk.flags as kf\n"
            "from knightwatch.sdk.flags import get as fget, is_enabled as on\n"
            'f.is_enabled("a")\n'
            'kf.get("b")\n'
            'fget("c")\n'
            'on("d")\n'
            'self.flags.details("e")\n',
        )
        assert [r.name for r in scan_tree(tmp_path)] == ["a", "b", "c", "d", "e"]

    def test_generic_names_on_other_objects_are_not_reads(self, tmp_path: Path) -> None:
        """``dict.get("x")`` is not a flag read; a docstring mentioning a call is not either."""
        write(
            tmp_path,
            "a.py",
            '"""Call flags.is_enabled("in-docstring") to check."""\n'
            'config = {}\nconfig.get("port")\nresult.details("x")\n'
            '# flags.is_enabled("in-comment")\n',
        )
        assert scan_tree(tmp_path) == []

    def test_openfeature_calls(self, tmp_path: Path) -> None:
        """Every OpenFeature getter (value and details) counts, and ``flag_key=`` too."""
        write(
            tmp_path,
            "of.py",
            "from openfeature import api\n"
            "client = api.get_client()\n"
            'client.get_boolean_value("of-bool", False)\n'
            'client.get_string_value("of-str", "")\n'
            'client.get_integer_value("of-int", 0)\n'
            'client.get_float_value("of-float", 0.0)\n'
            'client.get_object_value("of-obj", {})\n'
            'client.get_boolean_details(flag_key="of-details", default_value=False)\n',
        )
        assert [r.name for r in scan_tree(tmp_path)] == [
            "of-bool",
            "of-str",
            "of-int",
            "of-float",
            "of-obj",
            "of-details",
        ]

    def test_dynamic_names(self, tmp_path: Path) -> None:
        """A computed name is a dynamic read with its expression and line."""
        write(
            tmp_path,
            "d.py",
            'prefix = "x"\nflags.is_enabled(f"{prefix}-on")\nflags.get_bool(name)\n'
            "client.get_boolean_value(**options)\n",
        )
        reads = scan_tree(tmp_path)
        assert all(r.dynamic for r in reads)
        assert [(r.name, r.line) for r in reads] == [
            ("f'{prefix}-on'", 2),
            ("name", 3),
            ("options", 4),
        ]

    def test_a_file_that_does_not_parse_falls_back_to_regex(self, tmp_path: Path) -> None:
        """Broken Python (or Python 2) is still scanned, by the default patterns."""
        write(
            tmp_path,
            "old.py",
            'print "hello"\nif flags.is_enabled("legacy"):\n    pass\n'
            '# flags.get_bool("in-comment")\n',
        )
        assert triples(scan_tree(tmp_path)) == [
            ("legacy", "old.py", 2),
            ("in-comment", "old.py", 4),
        ]


class TestOtherLanguages:
    def test_javascript(self, tmp_path: Path) -> None:
        """JS/TS: camelCase SDK and OpenFeature calls, all three quote kinds."""
        write(
            tmp_path,
            "web/app.ts",
            "const on = flags.isEnabled('js-flag');\n"
            'const v = await client.getBooleanValue("of-js", false);\n'
            "const n = client.getNumberValue(`tpl`, 1);\n"
            "const d = client.getStringDetails('of-details', '');\n"
            "const t = client.getBooleanValue(`dyn-${x}`, false);\n",
        )
        assert triples(scan_tree(tmp_path)) == [
            ("js-flag", "web/app.ts", 1),
            ("of-js", "web/app.ts", 2),
            ("tpl", "web/app.ts", 3),
            ("of-details", "web/app.ts", 4),
        ]

    def test_go(self, tmp_path: Path) -> None:
        """Go: the SDK's ``flags.IsEnabled`` and OpenFeature's ``client.BooleanValue(ctx, …)``."""
        write(
            tmp_path,
            "cmd/main.go",
            "package main\n\n"
            "func main() {\n"
            '\tif flags.IsEnabled("go-flag") {}\n'
            '\tv, _ := client.BooleanValue(ctx, "go-of", false, evalCtx)\n'
            '\ts, _ := client.StringValueDetails(context.Background(), "go-details", "")\n'
            "}\n",
        )
        assert triples(scan_tree(tmp_path)) == [
            ("go-flag", "cmd/main.go", 4),
            ("go-of", "cmd/main.go", 5),
            ("go-details", "cmd/main.go", 6),
        ]


class TestUserPatterns:
    def test_user_pattern_applies_to_every_file(self, tmp_path: Path) -> None:
        """A configured pattern finds reads in Python and shell alike."""
        write(tmp_path, "a.py", 'import os\nif os.environ["FLAG_dark_mode"]:\n    pass\n')
        write(tmp_path, "run.sh", 'echo "$FLAG_fast_path"\n')
        pattern = r'os\.environ\["FLAG_(\w+)"\]'
        shell = r"\$\{?FLAG_([a-z0-9_]+)"
        reads = scan_tree(tmp_path, patterns=[pattern, shell])
        assert triples(reads) == [("dark_mode", "a.py", 2), ("fast_path", "run.sh", 1)]

    def test_without_defaults_only_user_patterns(self, tmp_path: Path) -> None:
        """``include_defaults=False`` leaves only the configured patterns."""
        write(tmp_path, "a.py", 'flags.is_enabled("sdk")\nFLAG("custom")\n')
        reads = scan_tree(tmp_path, patterns=[r'FLAG\("([^"]*)"\)'], include_defaults=False)
        assert triples(reads) == [("custom", "a.py", 2)]

    @pytest.mark.parametrize(
        ("pattern", "reason"),
        [
            (r"flag_(\w+", "not a valid regular expression"),
            (r"flag_\w+", "has 0 capture groups; it needs exactly one"),
            (r"(flag)_(\w+)", "has 2 capture groups; it needs exactly one"),
        ],
    )
    def test_bad_pattern_is_refused(self, tmp_path: Path, pattern: str, reason: str) -> None:
        """A pattern that does not compile or has the wrong groups is refused by name."""
        with pytest.raises(InvalidInputError) as caught:
            scan_tree(tmp_path, patterns=[pattern])
        assert repr(pattern) in caught.value.message
        assert reason in caught.value.message
        assert caught.value.exit_code == 2


class TestSkipped:
    def test_binary_huge_and_escaping_files_are_skipped(self, tmp_path: Path) -> None:
        """NUL in the first 8 KiB, over 2 MiB, or a symlink out of the tree: not scanned."""
        root = tmp_path / "src"
        write(root, "ok.js", 'flags.isEnabled("seen")\n')
        write(root, "blob.bin", b'\x00\x01flags.isEnabled("binary")\n')
        write(root, "huge.js", 'flags.isEnabled("huge")\n' + " " * MAX_SCAN_BYTES)
        outside = write(tmp_path, "outside.js", 'flags.isEnabled("outside")\n')
        os.symlink(outside, root / "link.js")
        os.symlink(root / "ok.js", root / "inside.js")
        os.symlink(root / "missing.js", root / "dangling.js")
        write(root, ".git/config.js", 'flags.isEnabled("git")\n')
        reads = scan_tree(root)
        assert triples(reads) == [("seen", "inside.js", 1), ("seen", "ok.js", 1)]

    def test_late_nul_is_still_text(self, tmp_path: Path) -> None:
        """Only the first 8 KiB decide whether a file is binary."""
        write(tmp_path, "a.js", 'flags.isEnabled("late")\n' + " " * 9000 + "\x00\n")
        assert [r.name for r in scan_tree(tmp_path)] == ["late"]

    def test_files_restricts_the_scan(self, tmp_path: Path) -> None:
        """Only the listed files are read; paths that leave the root are ignored."""
        write(tmp_path / "root", "a.js", 'flags.isEnabled("a")\n')
        write(tmp_path / "root", "b.js", 'flags.isEnabled("b")\n')
        write(tmp_path, "secret.js", 'flags.isEnabled("secret")\n')
        files = ["a.js", "../secret.js", str(tmp_path / "secret.js")]
        assert [r.name for r in scan_tree(tmp_path / "root", files)] == ["a"]

    def test_a_listed_file_that_is_missing_is_an_error(self, tmp_path: Path) -> None:
        """A bundle file list naming a file that is not there is refused with its path."""
        with pytest.raises(SourceTreeError) as caught:
            scan_tree(tmp_path, ["gone.py"])
        assert caught.value.path == "gone.py"

    def test_a_root_that_is_not_a_directory_is_refused(self, tmp_path: Path) -> None:
        """A mistyped source path is an error, not an empty scan."""
        with pytest.raises(InvalidInputError, match="not a directory"):
            scan_tree(tmp_path / "nope")

    def test_fifo_is_skipped(self, tmp_path: Path) -> None:
        """A FIFO is never opened (it would block)."""
        os.mkfifo(tmp_path / "pipe.js")
        assert scan_tree(tmp_path) == []


class TestCheck:
    def test_clean(self) -> None:
        """Every read declared and every declared flag read: no finding."""
        report = check_reads([FlagRead("a", "x.py", 1)], ["a"])
        assert report.ok
        assert report.findings == []

    def test_findings_with_file_and_line(self, tmp_path: Path) -> None:
        """Undeclared, retired, dynamic and unread, sorted errors first, then by path and line."""
        write(
            tmp_path,
            "svc/app.py",
            "from knightwatch.sdk import flags\n"
            'flags.is_enabled("declared")\n'
            'flags.is_enabled("new-thing")\n'
            'flags.is_enabled("old-thing")\n'
            "flags.get_bool(computed)\n",
        )
        write(tmp_path, "web/a.js", "flags.isEnabled('new-thing')\n")
        reads = scan_tree(tmp_path)
        report = check_reads(
            reads, ["declared", "never-read"], {"old-thing": "retired in 2.3, always on"}
        )
        assert codes(report) == [
            ("undeclared", "new-thing", "svc/app.py", 3),
            ("retired", "old-thing", "svc/app.py", 4),
            ("undeclared", "new-thing", "web/a.js", 1),
            ("unread", "never-read", None, None),
            ("dynamic-name", "computed", "svc/app.py", 5),
        ]
        assert not report.ok
        assert len(report.errors) == 3
        assert len(report.warnings) == 2
        undeclared, retired, _, unread, dynamic = report.findings
        assert "svc/app.py:3" in undeclared.message
        assert "knightwatch.toml" in undeclared.message
        assert "[[flag]]" in undeclared.message
        assert "retired in 2.3, always on" in retired.message
        assert "dead code" in retired.message
        assert "never-read" in unread.message
        assert "could not be checked" in unread.message
        assert "svc/app.py:5" in dynamic.message

    def test_one_finding_per_code_flag_path_line(self) -> None:
        """The same read twice is reported once."""
        read = FlagRead("x", "a.py", 3)
        report = check_reads([read, read, FlagRead("x", "a.py", 4)], [])
        assert codes(report) == [
            ("undeclared", "x", "a.py", 3),
            ("undeclared", "x", "a.py", 4),
        ]

    def test_warnings_alone_are_ok(self) -> None:
        """An unread flag is a warning: the report is still ok."""
        report = check_reads([], ["a"])
        assert report.ok
        assert [f.code for f in report.warnings] == ["unread"]


class TestHostile:
    def test_bad_names_in_python(self, tmp_path: Path) -> None:
        """A slash, a NUL, upper case or a 10 KB literal: ``bad-name``, shown safely."""
        long_name = "a" * 10_000
        write(
            tmp_path,
            "h.py",
            'flags.is_enabled("a/b")\n'
            'flags.is_enabled("a\\x00b")\n'
            'flags.is_enabled("\\x1b[31mRED")\n'
            f'flags.is_enabled("{long_name}")\n'
            'flags.is_enabled("")\n'
            'flags.is_enabled("ok\\n")\n',
        )
        report = check_reads(scan_tree(tmp_path), [])
        assert [(f.code, f.line) for f in report.findings] == [
            ("bad-name", 1),
            ("bad-name", 2),
            ("bad-name", 3),
            ("bad-name", 4),
            ("bad-name", 5),
            ("bad-name", 6),
        ]
        for finding in report.findings:
            assert "\x00" not in finding.message
            assert "\x1b" not in finding.message
            assert len(finding.message) < 300
            assert "is not a valid flag name" in finding.message

    def test_bad_names_in_text(self, tmp_path: Path) -> None:
        """The same through the regex path: escapes and long literals are bad names."""
        write(
            tmp_path,
            "h.js",
            'flags.isEnabled("a/b")\nflags.isEnabled("a\\u0000b")\n'
            f'flags.isEnabled("{"b" * 10_000}")\n',
        )
        report = check_reads(scan_tree(tmp_path), [])
        assert [(f.code, f.line) for f in report.findings] == [
            ("bad-name", 1),
            ("bad-name", 2),
            ("bad-name", 3),
        ]

    def test_deeply_nested_python_does_not_crash(self, tmp_path: Path) -> None:
        """A file too deep for the parser falls back to the regex scan."""
        deep = "x = " + "(" * 100_000 + ")" * 100_000 + '\nflags.is_enabled("deep")\n'
        write(tmp_path, "deep.py", deep)
        write(tmp_path, "nested.py", "flags.is_enabled(" + "[" * 150 + "]" * 150 + ")\n")
        write(tmp_path, "bad.py", b'flags.is_enabled("latin\xe9")\n')
        reads = scan_tree(tmp_path)
        dynamic = [r for r in reads if r.dynamic]
        assert [r.path for r in dynamic] == ["nested.py"]
        assert len(dynamic[0].name) <= 60
        assert triples(reads) == [("latin\ufffd", "bad.py", 1), ("deep", "deep.py", 2)]
        assert check_reads(reads, []).errors[0].code == "bad-name"

    def test_unclosed_literal_in_text(self, tmp_path: Path) -> None:
        """A quote that never closes on its line is not a read and does not hang."""
        write(tmp_path, "a.js", 'flags.isEnabled("' + "x" * 100_000 + "\n" + ")\n")
        assert scan_tree(tmp_path) == []
