"""The SMARS router's release sources: one common tree and an overlay per release.

``assemble("2012.08", target)`` copies ``sources/common`` and then
``sources/2012.08`` over it into ``target``: a source tree with its
``knightwatch.toml``, ready for ``knightwatch bundle build``. The copy
leaves out bytecode and sets file modes as in the checkout
(:func:`knightwatch.shipped.copy_source_tree`), so an installed knightwatch
builds the same releases as a checkout.

* ``2012.07`` — production on 31 July 2012: still carries Power Peg, woken
  by ``power_peg``;
* ``2012.08`` — Power Peg removed, RLP behind the new flag ``rlp``;
* ``2012.08-reuse`` — what Knight shipped: RLP behind the old ``power_peg``
  flag with a new meaning (knightwatch refuses it at push).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from knightwatch.errors import InvalidInputError
from knightwatch.shipped import copy_source_tree

__all__ = ["LABELS", "SOURCES", "assemble"]

SOURCES = Path(__file__).resolve().parent / "sources"
LABELS = ("2012.07", "2012.08", "2012.08-reuse")


def assemble(label: str, target: Path) -> Path:
    """Write release ``label``'s source tree into ``target`` (replaced); return it."""
    if label not in LABELS:
        raise InvalidInputError(
            f"no SMARS release {label!r}", hint=f"the releases are: {', '.join(LABELS)}"
        )
    shutil.rmtree(target, ignore_errors=True)
    copy_source_tree(SOURCES / "common", target)
    copy_source_tree(SOURCES / label, target)
    return target
