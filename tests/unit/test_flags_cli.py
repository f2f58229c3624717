"""The flag scan as a user meets it: ``flags scan`` and ``bundle build`` refuse an undeclared
or retired flag read in the code, naming file and line; ``[flag_scan]`` patterns count; stages
are planned from the fleet's nodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from knightwatch.bundle.release_store import ReleaseStore
from knightwatch.cli.flagstages import plan_stages
from knightwatch.errors import InvalidInputError
from tests.helpers import SMALL_SPEC, MakeSource
from tests.unit.test_cli import kw

RLP = """
[[flag]]
name = "rlp"
kind = "release"
description = "Retail Liquidity Program"
default = false
"""
READS = {
    "core/book.py": b"from knightwatch.sdk import flags\n\nif flags.is_enabled('rlp'):\n    pass\n",
    "router/route.py": b"from knightwatch.sdk import flags\nX = flags.get_int('max_orders')\n",
    "bin/shop": b'#!/bin/sh\n[ "$FLAG_POWER_PEG" = 1 ] && echo peg\n',
    "docs/README.md": b"# shop\n",
}


def spec(extra: str = "") -> str:
    return SMALL_SPEC.format(name="shop", version="1.0.0") + RLP + extra


def test_scan_finds_an_undeclared_read_with_file_and_line(make_source: MakeSource) -> None:
    """max_orders is read in router/route.py line 2 and not declared: exit 2, named."""
    source = make_source(files=READS, spec=spec())
    done = kw("flags", "scan", source, "--json")
    assert done.returncode == 2, done.stderr
    findings = json.loads(done.stdout)
    undeclared = [f for f in findings if f["code"] == "undeclared"]
    assert [(f["flag"], f["path"], f["line"]) for f in undeclared] == [
        ("max_orders", "router/route.py", 2)
    ]
    assert "router/route.py:2" in done.stderr


def test_a_retired_flag_still_read_is_an_error(make_source: MakeSource) -> None:
    """--retired rlp: the read in core/book.py line 3 is dead code found before it ships."""
    source = make_source(files={"core/book.py": READS["core/book.py"]}, spec=spec())
    done = kw("flags", "scan", source, "--retired", "rlp")
    assert done.returncode == 2
    assert "core/book.py:3" in done.stderr and "retired" in done.stderr


def test_bundle_build_refuses_and_builds_nothing(
    make_source: MakeSource, tmp_path: Path, key_dir: Path
) -> None:
    """The build runs the scan first: exit 2 naming file and line; the store stays empty."""
    source = make_source(files=READS, spec=spec())
    store = tmp_path / "store"
    done = kw("bundle", "build", source, "--store", store, "--key", key_dir / "release.key")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "router/route.py:2" in done.stderr
    assert not store.exists()  # refused before the store was touched


def test_flag_scan_patterns_in_the_spec_count_and_stay_out_of_the_manifest(
    make_source: MakeSource, tmp_path: Path, key_dir: Path
) -> None:
    """[flag_scan] patterns find the shell read of power_peg; declared, the build succeeds and
    the manifest's spec has no flag_scan (digests never depend on it)."""
    power_peg = RLP.replace("rlp", "power_peg").replace("Retail Liquidity Program", "Power Peg")
    max_orders = RLP.replace('"rlp"', '"max_orders"').replace("default = false", "default = 10")
    patterns = "\n[flag_scan]\npatterns = ['FLAG_([A-Z_]+)']\n"
    source = make_source(files=READS, spec=spec(power_peg + max_orders + patterns))
    done = kw("flags", "scan", source, "--json")
    assert json.loads(done.stdout) and done.returncode == 2  # POWER_PEG: upper case, bad-name
    lower = spec(power_peg + max_orders + "\n[flag_scan]\npatterns = ['FLAG_([a-z_]+)']\n")
    (source / "knightwatch.toml").write_text(lower)
    (source / "bin" / "shop").write_text('#!/bin/sh\n[ "$FLAG_power_peg" = 1 ]\n')
    store = tmp_path / "store"
    done = kw(
        "bundle", "build", source, "--store", store, "--key", key_dir / "release.key", "--json"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    digest = json.loads(done.stdout)["digest"]
    manifest = ReleaseStore(store).load(digest).manifest
    assert manifest.spec.flag_scan.patterns == []  # not stored: it is build-time only
    assert "flag_scan" not in manifest.to_json()["spec"]


def test_a_bad_flag_scan_pattern_is_refused_where_it_is(make_source: MakeSource) -> None:
    """A pattern with no capture group: the spec error names flag_scan.patterns."""
    source = make_source(spec=spec("\n[flag_scan]\npatterns = ['FLAG_[a-z]+']\n"))
    done = kw("flags", "scan", source)
    assert done.returncode == 2
    assert "flag_scan" in done.stderr and "capture group" in done.stderr


NODES = [
    {"name": f"node{i}", "group": "east" if i <= 4 else "west", "status": "enrolled"}
    for i in range(1, 9)
] + [{"name": "old", "group": "east", "status": "retired"}]


def test_stages_grow_and_end_before_the_scope() -> None:
    """25% then group:west then node8: each stage only the nodes it adds; retired never."""
    plan = plan_stages(["25%", "group:west", "50%"], "fleet", NODES)
    assert plan == [["node:node1", "node:node2"], ["group:west"], ["node:node3", "node:node4"]]


@pytest.mark.parametrize("stage", ["0%", "101%", "x%", "node9", "group:west"])
def test_a_stage_that_adds_nothing_or_names_a_stranger_is_refused(stage: str) -> None:
    """Out-of-range shares, unknown nodes, and a stage adding no node of the scope."""
    with pytest.raises(InvalidInputError):
        plan_stages([stage], "group:east", NODES)
