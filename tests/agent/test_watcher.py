"""The inotify watcher: changed paths arrive relative to the tree; a flood counts as lost."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from knightwatch.agent.releaseindex import stat_key
from knightwatch.agent.treeaudit import changed_paths
from knightwatch.agent.watcher import WatchBatch, watch_tree


async def _first_batch(tree: Path, change: object, **options: int) -> WatchBatch:
    async def collect() -> WatchBatch:
        async for batch in watch_tree(tree, **options):
            return batch
        raise AssertionError("the watcher stopped")

    task = asyncio.create_task(collect())
    await asyncio.sleep(0.3)  # let inotify set up its watches
    await asyncio.to_thread(change)  # type: ignore[arg-type]
    return await asyncio.wait_for(task, timeout=30)


def test_a_change_arrives_as_a_relative_path(tmp_path: Path) -> None:
    """Writing one file yields its path relative to the tree, not lost."""
    (tmp_path / "app").mkdir()
    batch = asyncio.run(_first_batch(tmp_path, lambda: (tmp_path / "app" / "x.py").write_text("x")))
    assert "app/x.py" in batch.paths
    assert not batch.lost


def test_pycache_is_not_filtered_out(tmp_path: Path) -> None:
    """watchfiles' default filter hides __pycache__; the audit must see it."""
    cache = tmp_path / "__pycache__"
    batch = asyncio.run(
        _first_batch(tmp_path, lambda: cache.mkdir() or (cache / "m.pyc").write_bytes(b"\0"))
    )
    assert any(p.startswith("__pycache__") for p in batch.paths)


def test_a_flood_of_events_counts_as_lost(tmp_path: Path) -> None:
    """A batch of flood_paths or more paths may hide dropped events: it is marked lost."""

    def flood() -> None:
        for index in range(60):
            (tmp_path / f"f{index}").write_text("x")

    batch = asyncio.run(_first_batch(tmp_path, flood, flood_paths=20))
    assert batch.lost


def test_stat_sweep_finds_what_the_watcher_missed(tmp_path: Path) -> None:
    """Changed, new and vanished paths all differ from the recorded stat keys."""
    for name in ("a", "b", "c"):
        (tmp_path / name).write_text(name)
    known = {name: stat_key(os.lstat(tmp_path / name)) for name in ("a", "b", "c")}
    assert changed_paths(tmp_path, known) == []
    (tmp_path / "a").write_text("changed")
    (tmp_path / "b").unlink()
    (tmp_path / "d").write_text("new")
    os.chmod(tmp_path / "c", 0o755)
    assert sorted(changed_paths(tmp_path, known)) == ["a", "b", "c", "d"]
