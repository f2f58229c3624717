"""The agent's side of flags: flags.json for the running release, counts, the SDK copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema

from knightwatch.agent.flagfile import NodeFlags, declared_defaults
from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.sdkcopy import install_sdk, sdk_path
from knightwatch.bundle.spec import FlagSpec
from knightwatch.protocol import FlagSetting, FlagValues
from knightwatch.sdk.flags import Flags

DIGEST = "d" * 64
SPECS = [
    FlagSpec(name="rlp", kind="release", description="RLP", default=False),
    FlagSpec(name="ratio", kind="ops", description="share", default=0.5),
    FlagSpec(name="venue", kind="ops", description="where", default="NYSE"),
]


def manifest() -> Any:
    return SimpleNamespace(digest=DIGEST, spec=SimpleNamespace(flag=SPECS))


def layout(tmp_path: Path) -> NodeLayout:
    nodes = NodeLayout(tmp_path / "root")
    nodes.ensure()
    return nodes


def test_flags_json_holds_the_release_flags_with_values_or_defaults(tmp_path: Path) -> None:
    """Values the plane sent for declared flags; defaults for the rest; wrong types ignored."""
    nodes = layout(tmp_path)
    flags = NodeFlags(nodes, "node1")
    values = FlagValues(
        version=7,
        values={
            "rlp": FlagSetting(value=True, source="fleet"),
            "ratio": FlagSetting(value=1, source="node:node1"),  # an int for a float: 1.0
            "venue": FlagSetting(value=3, source="fleet"),  # the wrong type: the default stays
            "other": FlagSetting(value=True, source="fleet"),  # not declared: not written
        },
    )
    flags.receive(values, manifest())
    written = json.loads(nodes.flags_file.read_text())
    schema = json.loads(
        resources.files("knightwatch.sdk").joinpath("flags.schema.json").read_text()
    )
    jsonschema.validate(written, schema)  # the documented format, as other languages read it
    assert written["version"] == 7 and written["release"] == DIGEST
    assert written["flags"]["rlp"]["value"] is True
    assert written["flags"]["ratio"] == {
        "kind": "ops",
        "type": "float",
        "default": 0.5,
        "value": 1.0,
        "source": "node:node1",
    }
    assert written["flags"]["venue"]["value"] == "NYSE"
    assert set(written["flags"]) == {"rlp", "ratio", "venue"}
    sdk = Flags(
        path=nodes.flags_file,
        declared=declared_defaults(SPECS),
        release=DIGEST,
        evaluations_dir=None,
    )
    with sdk:
        assert sdk.is_enabled("rlp") and sdk.get_float("ratio") == 1.0
    again = NodeFlags(nodes, "node1")  # a restarted agent reads what it kept
    assert again.version == 7


def test_evaluation_counts_of_the_release_are_summed(tmp_path: Path) -> None:
    """Per-process files of the running release add up; another release's and junk do not."""
    nodes = layout(tmp_path)
    nodes.evaluations_dir.mkdir()
    for pid, release, counts in (
        (10, DIGEST, {"rlp": 3}),
        (11, DIGEST, {"rlp": 2, "x": 1}),
        (12, "e" * 64, {"rlp": 100}),
    ):
        (nodes.evaluations_dir / f"{pid}.json").write_text(
            json.dumps({"format": 1, "pid": pid, "release": release, "counts": counts})
        )
    (nodes.evaluations_dir / "13.json").write_text("{truncated")
    assert NodeFlags(nodes, "n").evaluations(DIGEST) == {"rlp": 5, "x": 1}


def test_the_sdk_copy_imports_with_nothing_installed(tmp_path: Path) -> None:
    """ROOT/sdk alone on the path (no site-packages): `from knightwatch.sdk import flags` works."""
    nodes = layout(tmp_path)
    install_sdk(nodes)
    code = (
        "from knightwatch.sdk import flags, Flags; import knightwatch.sdk as s; print(s.__file__)"
    )
    env = {"PYTHONPATH": str(sdk_path(nodes)), "PATH": os.environ.get("PATH", "")}
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(sdk_path(nodes)))
