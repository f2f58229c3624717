"""Component path globs."""

from __future__ import annotations

import pytest

from knightwatch.bundle.globs import compile_glob, glob_matches


class TestGlobs:
    @pytest.mark.parametrize(
        ("glob", "path", "expected"),
        [
            ("bin/*", "bin/router", True),
            ("bin/*", "bin/sub/router", False),
            ("smars/**", "smars/a/b/c.py", True),
            ("smars/**", "smars", False),
            ("**/*.py", "a.py", True),
            ("**/*.py", "x/y/a.py", True),
            ("**/*.py", "x/y/a.pyc", False),
            ("docs/", "docs/a/b.md", True),
            ("file?.txt", "file1.txt", True),
            ("file?.txt", "file12.txt", False),
            ("[ab].txt", "a.txt", True),
            ("[!ab].txt", "a.txt", False),
            ("a.b", "aXb", False),
        ],
    )
    def test_matching(self, glob: str, path: str, expected: bool) -> None:
        """``*`` stays in a segment, ``**`` spans segments, a trailing / means below."""
        assert glob_matches(glob, path) is expected

    @pytest.mark.parametrize("glob", ["/etc/*", "../x", "a/../b", "a[b"])
    def test_refused(self, glob: str) -> None:
        """Absolute globs, ``..`` and malformed brackets are refused."""
        with pytest.raises(ValueError):
            compile_glob(glob)
