"""What the agent runs: a release's service with its environment and ``${KNIGHTWATCH_*}``.

The agent defines these variables for every service it starts, puts them in
the service's environment and substitutes ``${NAME}`` for them in the
service's argv, its env values, its halt hook, and every check URL or
command of the spec:

=============================  ===============================================
``KNIGHTWATCH_RELEASE_ID``     ``name@version+hex12`` of the running release
``KNIGHTWATCH_RELEASE_DIGEST`` the release digest (SHA-256 of its manifest)
``KNIGHTWATCH_RELEASE_DIR``    the release tree (``ROOT/releases/<digest>``)
``KNIGHTWATCH_NODE``           this node's name
``KNIGHTWATCH_FLAGS_FILE``     ``ROOT/flags.json``
``KNIGHTWATCH_FLAG_DEFAULTS``  the flags the release declares (JSON: kind, type, default)
``KNIGHTWATCH_FLAG_EVALUATIONS_DIR`` where the SDK reports its evaluation counts
``KNIGHTWATCH_DATA_DIR``       ``ROOT/data`` (what the tree's data_dirs link to)
``KNIGHTWATCH_SERVICE_PORT``   the port given with ``--service-port`` (if any)
=============================  ===============================================

A reference to a variable the agent does not define is an error naming it,
never an empty string.

``PYTHONPATH`` starts with ``ROOT/sdk``, a copy of the flag SDK
(``from knightwatch.sdk import flags``), so a Python service can read its
flags with nothing installed; a release may set its own.

``PYTHONPYCACHEPREFIX`` defaults to ``ROOT/cache/pycache``: a Python service
run as root would otherwise write ``__pycache__`` into its read-only release
tree, and bytecode the release did not ship is drift (a release may set it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from knightwatch.agent.errors import ServiceError
from knightwatch.agent.flagfile import declared_defaults
from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.sdkcopy import sdk_path
from knightwatch.bundle.manifest import Manifest
from knightwatch.bundle.spec import ServiceSpec

__all__ = ["ServiceLaunch", "launch_for"]

_VARIABLE = re.compile(r"\$\{(KNIGHTWATCH_[A-Z0-9_]+)\}")


@dataclass(frozen=True)
class ServiceLaunch:
    """Everything needed to start, check and stop one release's service."""

    digest: str
    release_id: str
    release_dir: Path
    spec: ServiceSpec
    variables: Mapping[str, str]
    defaults: Mapping[str, str] = field(default_factory=dict)
    """Environment defaults the release's own env may override."""

    def expand(self, text: str) -> str:
        """Substitute ``${KNIGHTWATCH_*}`` in ``text``; ServiceError names an unknown one."""

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.variables:
                hint = " (start the agent with --service-port N)" if "PORT" in name else ""
                raise ServiceError(
                    f"service spec of {self.release_id} uses ${{{name}}}, "
                    f"which this agent does not define{hint}"
                )
            return self.variables[name]

        return _VARIABLE.sub(value, text)

    def argv(self, argv: list[str]) -> list[str]:
        """Return ``argv`` with every variable substituted."""
        return [self.expand(arg) for arg in argv]

    def environment(self) -> dict[str, str]:
        """Return the service's environment: the agent's, the spec's, then ours."""
        env = dict(os.environ)
        env.update(self.defaults)
        env.update({key: self.expand(value) for key, value in self.spec.env.items()})
        env.update(self.variables)
        return env


def launch_for(
    layout: NodeLayout, manifest: Manifest, *, node: str, service_port: int | None
) -> ServiceLaunch | None:
    """Return how to run ``manifest``'s service from its tree, or None if it has none."""
    spec = manifest.spec.service
    if spec is None:
        return None
    digest = manifest.digest
    release_dir = Path(os.path.realpath(layout.release_dir(digest)))
    variables = {
        "KNIGHTWATCH_RELEASE_ID": manifest.release_id,
        "KNIGHTWATCH_RELEASE_DIGEST": digest,
        "KNIGHTWATCH_RELEASE_DIR": os.fspath(release_dir),
        "KNIGHTWATCH_NODE": node,
        "KNIGHTWATCH_FLAGS_FILE": os.fspath(layout.flags_file.absolute()),
        "KNIGHTWATCH_FLAG_DEFAULTS": json.dumps(declared_defaults(manifest.spec.flag)),
        "KNIGHTWATCH_FLAG_EVALUATIONS_DIR": os.fspath(
            (layout.root / "flag-evaluations").absolute()
        ),
        "KNIGHTWATCH_DATA_DIR": os.fspath(layout.data_dir.absolute()),
    }
    if service_port is not None:
        variables["KNIGHTWATCH_SERVICE_PORT"] = str(service_port)
    defaults = {
        "PYTHONPYCACHEPREFIX": os.fspath((layout.root / "cache" / "pycache").absolute()),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [os.fspath(sdk_path(layout)), os.environ.get("PYTHONPATH")])
        ),
    }
    return ServiceLaunch(digest, manifest.release_id, release_dir, spec, variables, defaults)
