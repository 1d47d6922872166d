"""Modules imported when first used, not when netapply starts.

Each command needs a part of netapply: `validate` reads a spec and touches no
kernel, `completion` prints a script. Importing the rest at start-up (the
Docker SDK, Graphviz, icmplib, the planner and observer) cost a one-shot
command about 0.2 s. A module given here is made by importlib's LazyLoader:
its code runs at the first attribute looked up on it.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def module(name: str) -> ModuleType:
    """The module `name`, imported at its first use (already imported: itself).
    Raises ModuleNotFoundError now when there is no such module."""
    found = sys.modules.get(name)
    if found is not None:
        return found
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    made = importlib.util.module_from_spec(spec)
    sys.modules[name] = made
    loader.exec_module(made)
    return made
