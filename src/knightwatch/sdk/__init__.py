"""The flag SDK services use: ``from knightwatch.sdk import flags; flags.is_enabled("rlp")``.

``flags`` is the process-wide :class:`Flags`, built from the environment the
agent gives the service the first time it is used. Build your own
``Flags(path, declared, ...)`` for tests or for several files. The
OpenFeature provider lives in :mod:`knightwatch.sdk.openfeature` (it needs
the ``openfeature-sdk`` package; this package itself needs only the
standard library).
"""

from __future__ import annotations

from typing import Any, cast

from knightwatch.sdk.flags import (
    ChangeCallback,
    FlagDetails,
    FlagError,
    FlagNotDeclaredError,
    Flags,
    FlagTypeError,
    FlagValue,
    default_flags,
)

__all__ = [
    "ChangeCallback",
    "FlagDetails",
    "FlagError",
    "FlagNotDeclaredError",
    "FlagTypeError",
    "FlagValue",
    "Flags",
    "default_flags",
    "flags",
]


class _DefaultFlags:
    """Stands for :func:`default_flags` so importing the package reads no environment."""

    def __getattr__(self, name: str) -> Any:
        return getattr(default_flags(), name)

    def __repr__(self) -> str:
        return "<knightwatch.sdk.flags: the process-wide Flags, built on first use>"


# Assigned after the import above, this name shadows the submodule of the same
# name: import the module itself as ``from knightwatch.sdk.flags import Flags``.
flags: Flags = cast("Flags", _DefaultFlags())
