"""Paper-reproduction experiments (issue 4): each one command, each writing PNG plots and a
CSV/markdown table under a results folder.

An experiment is a module in this package that defines

    NAME: str                      # the command-line name, e.g. "fig2-estimators"
    TITLE: str                     # one line: what it reproduces
    def run(out: pathlib.Path, quick: bool = False, seed: int = 0) -> dict

`run` writes its files under `out` and returns a summary dict (the numbers the report quotes and
the quick-mode tests assert on). Modules are discovered automatically, so adding an experiment
touches no shared file.

    python -m rsm.experiments list
    python -m rsm.experiments <name> [--quick] [--out results/<name>] [--seed 0]
"""
from __future__ import annotations

import importlib
import pkgutil
import types

__all__ = ["names", "get", "run"]


def _modules() -> dict[str, types.ModuleType]:
    found: dict[str, types.ModuleType] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        name = getattr(module, "NAME", None)
        if name is None or not callable(getattr(module, "run", None)):
            continue
        if name in found:
            raise RuntimeError(f"two experiment modules are named {name!r}")
        found[name] = module
    return found


def names() -> list[str]:
    """The experiments' command-line names, sorted."""
    return sorted(_modules())


def get(name: str) -> types.ModuleType:
    modules = _modules()
    if name not in modules:
        raise ValueError(f"experiment: unknown name {name!r}; expected one of {sorted(modules)}")
    return modules[name]


def run(name: str, out: str | None = None, quick: bool = False, seed: int = 0) -> dict:
    """Run one experiment; files go to `out` (default results/<name>[-quick])."""
    import pathlib

    module = get(name)
    folder = pathlib.Path(out) if out is not None else pathlib.Path("results") / (name + ("-quick" if quick else ""))
    folder.mkdir(parents=True, exist_ok=True)
    return module.run(folder, quick=quick, seed=seed)
