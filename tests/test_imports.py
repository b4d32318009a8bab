"""The import structure of python/rsm (issue 12): no import circles, and no module imports from a
layer above its own.

The layers, lowest first (a module may import from its own layer and the ones below):

  base          the C extension (rsm._C, rsm._cuda) and what every module may use: the build
                and version (_build), argument checks (_args), the Reward type (_reward),
                safetensors I/O (io) and the validate-then-commit checks of loaded files
                (_validate)
  numerics      paths, models and backbones, samplers, training (pretraining, AdamW), the
                objective, KL, trees, batch geometry, estimators, rewards, data sets, metrics,
                the CUDA wrappers
  methods       rsm.methods and its modules: presets, batches, rollouts, estimates, coefficient
                rules, pathwise methods, update blocks, influence
  loop          the fine-tuning loop: rsm.trainer (Trainer, finetune), rsm.auxiliary
                (AuxTrainer), the compatibility module rsm.finetune
  facade        the package itself (rsm/__init__.py), which re-exports the public names; nothing
                inside the package imports it (import the defining module instead)
  applications  the command line (__main__), the image demo, plots, the experiments: they use
                the public API (`import rsm`)

Every module, function-level imports included, is parsed with `ast`; an import of a name from a
package counts as an import of that package (of the submodule when the name is one). A new
module must be given a layer in LAYERS below. docs/ARCHITECTURE.md describes the same layers."""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")

LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["rsm._C", "rsm._cuda", "rsm._device", "rsm._cpu", "rsm._build", "rsm._build_config", "rsm._args",
              "rsm._reward", "rsm.io", "rsm._validate"]),
    ("numerics", ["rsm.paths", "rsm.models", "rsm.dit", "rsm.guidance", "rsm.sampling",
                  "rsm.training", "rsm.kl", "rsm.objective", "rsm.tree", "rsm.conventions", "rsm.geometry",
                  "rsm.estimators", "rsm.cuda", "rsm.rewards", "rsm.image_rewards", "rsm.datasets",
                  "rsm.image_datasets", "rsm.metrics", "rsm.guards", "rsm.display", "rsm.loggers",
                  "rsm.distributed", "rsm.ray_pool", "rsm.external", "rsm.jax_model"]),
    ("methods", ["rsm.methods", "rsm.methods.*"]),
    ("loop", ["rsm.trainer", "rsm.auxiliary", "rsm.finetune", "rsm.runs", "rsm.dp_finetune",
              "rsm.torch_model"]),
    ("facade", ["rsm"]),
    ("applications", ["rsm.__main__", "rsm.image_demo", "rsm.plot", "rsm.config", "rsm.experiments",
                      "rsm.experiments.*"]),
]
EXTENSIONS = {"rsm._C", "rsm._cuda", "rsm._build_config"}   # not Python source in the tree


def layer_of(module: str) -> int | None:
    for index, (_, patterns) in enumerate(LAYERS):
        for p in patterns:
            if module == p or (p.endswith(".*") and module.startswith(p[:-1])):
                return index
    return None


def modules() -> dict[str, tuple[str, bool]]:
    """{module name: (file, is_package)} of every .py file under python/rsm."""
    found = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "rsm")):
        for f in files:
            if f.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].split(os.sep)
                is_package = parts[-1] == "__init__"
                found[".".join(parts[:-1] if is_package else parts)] = (os.path.join(folder, f), is_package)
    return found


def imports(name: str, file: str, is_package: bool, known: set[str]) -> list[tuple[str, int]]:
    """(imported rsm module, line) of every import statement in `file`, at any depth."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(open(file, encoding="utf-8").read(), file)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "rsm"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "rsm":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((sub if sub in known else target, node.lineno))
    return out


def graph() -> dict[str, set[tuple[str, int]]]:
    mods = modules()
    known = set(mods) | EXTENSIONS
    return {name: {(t, line) for t, line in imports(name, file, pkg, known) if t != name}
            for name, (file, pkg) in mods.items()}


def test_every_module_has_a_layer():
    missing = sorted(m for m in graph() if layer_of(m) is None)
    assert not missing, f"give these modules a layer in tests/test_imports.py LAYERS: {missing}"


def test_no_upward_imports():
    upward = []
    for module, edges in graph().items():
        mine = layer_of(module)
        for target, line in edges:
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{module}:{line} ({LAYERS[mine][0]}) imports {target} "
                              f"({LAYERS[theirs][0]})")
    assert not upward, "imports from a higher layer:\n  " + "\n  ".join(sorted(upward))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a list of nodes, or None (iterative depth-first search)."""
    state: dict[str, int] = {}   # 1: on the stack, 2: done
    for start in sorted(edges):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(edges.get(start, ()))))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(edges.get(child, ())))))
    return None


def test_no_import_circles():
    edges = {m: {t for t, _ in e} for m, e in graph().items()}
    cycle = find_cycle(edges)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("edges, circular", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"a2"}, "a2": set(), "b": {"b"}}, True),
])
def test_the_cycle_finder_finds_cycles(edges, circular):
    assert (find_cycle(edges) is not None) == circular


def test_the_parser_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "rsm" / "sub"
    pkg.mkdir(parents=True)
    f = pkg / "mod.py"
    f.write_text("from .. import paths\nfrom . import other\n\ndef g():\n    from ..models import MLP\n"
                 "    import rsm.kl\n")
    got = {t for t, _ in imports("rsm.sub.mod", str(f), False,
                                 {"rsm.paths", "rsm.sub.other", "rsm.models", "rsm.kl"})}
    assert got == {"rsm.paths", "rsm.sub.other", "rsm.models", "rsm.kl"}
