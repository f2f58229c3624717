"""Source trees shipped inside the package, copied out as their authors wrote them.

Two kinds of release sources ship in the wheel: the example release (the
checkout's ``examples/smars``, installed as ``knightwatch/examples/smars`` by
pyproject's ``force-include``) and the simulator's SMARS sources
(``knightwatch/sim/sources``). An installed copy differs from the checkout
in two ways that would change a release built from it, and
:func:`copy_source_tree` undoes both:

* the installer byte-compiles every ``.py`` file, leaving ``__pycache__``
  directories that no component of the release owns (a build refuses them);
* file modes follow the installer and its umask, not the checkout. The copy
  gives every file mode 0644 and every file in the tree's top-level ``bin/``
  0755, as in the checkout, so the executable bits a manifest records (and
  so the release digest) do not depend on how knightwatch was installed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from knightwatch.errors import InvalidInputError, KnightwatchError, StoreError

__all__ = ["EXAMPLES", "copy_source_tree", "example_source", "write_example"]

EXAMPLES = ("smars",)
"""The example releases ``knightwatch example NAME DIR`` writes out."""

_PACKAGE = Path(__file__).resolve().parent
_INSTALLED = _PACKAGE / "examples"  # in the wheel (pyproject: force-include)
_CHECKOUT = _PACKAGE.parent.parent / "examples"  # running from a source checkout (src/ layout)


def example_source(name: str) -> Path:
    """The directory holding example release ``name``'s sources (installed, else the checkout)."""
    if name not in EXAMPLES:
        raise InvalidInputError(
            f"no example release {name!r}", hint=f"the examples are: {', '.join(EXAMPLES)}"
        )
    for place in (_INSTALLED, _CHECKOUT):
        if (place / name / "knightwatch.toml").is_file():
            return place / name
    raise KnightwatchError(
        f"this installation of knightwatch lacks its example release {name!r} "
        f"(looked in {_INSTALLED / name})",
        hint="reinstall knightwatch from its wheel",
    )


def copy_source_tree(source: Path, target: Path) -> int:
    """Copy the files of ``source`` into ``target`` (created; files overwritten); return a count.

    Bytecode (``__pycache__``, ``*.pyc``) is left out; every file gets mode
    0644, or 0755 under the top-level ``bin/`` (see the module docstring).
    """
    copied = 0
    for directory, subdirectories, files in os.walk(source):
        subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
        relative = Path(directory).relative_to(source)
        (target / relative).mkdir(parents=True, exist_ok=True)
        for name in sorted(files):
            if name.endswith(".pyc"):
                continue
            destination = target / relative / name
            shutil.copyfile(Path(directory) / name, destination)
            destination.chmod(0o755 if relative.parts[:1] == ("bin",) else 0o644)
            copied += 1
    return copied


def write_example(name: str, target: Path) -> int:
    """Write example release ``name``'s sources into ``target``; return how many files.

    ``target`` must be a new or an empty directory: anything else is refused
    and left as it was, as is ``target`` when a copy fails half-way.
    """
    source = example_source(name)
    if target.exists() and not target.is_dir():
        raise InvalidInputError(
            f"{target} exists and is not a directory",
            hint="name a new or an empty directory for the example",
        )
    existed = target.is_dir()
    if existed and any(target.iterdir()):
        raise InvalidInputError(
            f"{target} is not empty: the example is written only into a new or an empty directory",
            hint=f"name a new directory, e.g. knightwatch example {name} {name}-release/",
        )
    try:
        return copy_source_tree(source, target)
    except OSError as exc:
        _clear(target, keep_directory=existed)
        raise StoreError(
            f"cannot write the example into {target}: {exc.strerror or exc}",
            hint="name a directory you can write to",
        ) from exc


def _clear(target: Path, *, keep_directory: bool) -> None:
    """Remove what a failed copy wrote: ``target`` itself, or only its contents."""
    if not keep_directory:
        shutil.rmtree(target, ignore_errors=True)
        return
    for child in target.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
