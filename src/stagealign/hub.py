"""Is a model or dataset reference a local path or a Hugging Face hub name?

One rule for the whole package, so that the dry run, the pool loader, the policy loader and the
judges never disagree about the same string (a path that does not exist must fail as "no such
file", not turn into a confusing hub download error, and a hub name must never be looked for on
disk):

- a *local path* exists, or starts like a path (``.``, ``/``, ``~``), or has more than one slash
  or a backslash, or ends like a data file (``.jsonl``, ``.json``, ``.parquet``);
- anything else is a *hub name* when it has the form ``org/name``, or, for models only, a bare
  legacy name without an organisation (``gpt2``);
- what is neither (``a b``, ``org/-x``) is treated as a local path by the loaders (so it fails as
  a missing path); the dry run reports it as malformed.
"""

from __future__ import annotations

import os
import re

HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
#: Old hub model names without an organisation ('gpt2'); the pool loader does not accept them.
LEGACY_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")
#: Names ending like this are files, never hub names.
FILE_SUFFIXES: tuple[str, ...] = (".jsonl", ".json", ".parquet")


def looks_local(name: str | os.PathLike) -> bool:
    """A path rather than a hub name: exists, starts like a path, has more than one slash (or a
    backslash), or ends like a data file."""
    name = os.fspath(name)
    return (os.path.exists(os.path.expanduser(name)) or name.startswith((".", "/", "~"))
            or name.count("/") > 1 or "\\" in name or name.lower().endswith(FILE_SUFFIXES))


def is_hub_name(name: str | os.PathLike, *, legacy: bool = False) -> bool:
    """``org/name`` (with `legacy`, also a bare ``gpt2``) that is not a local path."""
    name = os.fspath(name)
    if looks_local(name):
        return False
    return bool(HUB_NAME.match(name) or (legacy and LEGACY_NAME.match(name)))


__all__ = ["FILE_SUFFIXES", "HUB_NAME", "LEGACY_NAME", "is_hub_name", "looks_local"]
