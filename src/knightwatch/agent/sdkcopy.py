"""A copy of the flag SDK under ``ROOT/sdk`` that any Python service can import.

The service's ``PYTHONPATH`` starts with ``ROOT/sdk`` (see ``runenv``), so
``from knightwatch.sdk import flags`` works in a service whose own
environment has no knightwatch installed. The copy holds only the SDK's
standard-library modules; its ``knightwatch/__init__.py`` extends the
package path, so where knightwatch *is* installed its other modules still
import.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from knightwatch.agent.layout import NodeLayout, atomic_write

__all__ = ["install_sdk", "sdk_path"]

_SDK_MODULES = ("__init__.py", "flags.py")
_PACKAGE_INIT = b'''"""knightwatch (the flag SDK the agent provides; see knightwatch.sdk)."""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
'''


def sdk_path(layout: NodeLayout) -> Path:
    """The directory a service's ``PYTHONPATH`` starts with."""
    return (layout.root / "sdk").absolute()


def install_sdk(layout: NodeLayout) -> None:
    """Write (or refresh) the SDK copy; files already identical are left alone."""
    package = sdk_path(layout) / "knightwatch"
    (package / "sdk").mkdir(parents=True, exist_ok=True)
    _write_if_changed(package / "__init__.py", _PACKAGE_INIT)
    source = resources.files("knightwatch.sdk")
    for name in _SDK_MODULES:
        _write_if_changed(package / "sdk" / name, source.joinpath(name).read_bytes())


def _write_if_changed(path: Path, data: bytes) -> None:
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write(path, data)
