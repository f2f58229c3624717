"""``fleet up`` says when this machine's inotify limit is too low for the fleet asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from knightwatch.cli import fleet


@pytest.mark.parametrize(("limit", "nodes", "warned"), [(128, 64, True), (128, 8, False)])
def test_a_low_inotify_limit_is_named_with_the_fix(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    limit: int,
    nodes: int,
    warned: bool,
) -> None:
    """64 agents on a 128-instance machine: a warning with the sysctl to run; 8: silence."""
    limits = tmp_path / "max_user_instances"
    limits.write_text(f"{limit}\n")
    monkeypatch.setattr(fleet, "INOTIFY_INSTANCES", limits)
    fleet._warn_inotify(nodes)
    said = capsys.readouterr().err
    assert ("fs.inotify.max_user_instances=" in said) is warned
