"""The #include graph of the C/CUDA sources (csrc/, kernels/) has the shape the layers promise.

- no include cycles;
- no .c file includes another .c file, except the precision instantiation files
  (csrc/precision_f32.c / csrc/precision_f64.c), which include the numeric templates (*_real.c)
  once per precision;
- Python.h only inside the binding (csrc/python/);
- the core (csrc/ outside csrc/python/) and the kernels never include a binding header.

Includes are resolved as the build resolves them (setup.py): relative to the including file, then
-Icsrc, then -Ikernels; an include found in none of them (<Python.h>, <stdint.h>,
"structmember.h", ...) is a system / Python header, outside the graph.
"""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DIRS = ("csrc", "kernels")
EXTENSIONS = (".c", ".h", ".cu", ".cuh")
INCLUDE_PATHS = ("csrc", "kernels")  # the -I directories of setup.py, in order
BINDING_DIR = "csrc/python/"
# The one allowed .c-includes-.c pattern: a precision instantiation file includes templates.
PRECISION_FILE = re.compile(r"(^|/)precision_[a-z0-9]+\.c$")
TEMPLATE_FILE = re.compile(r"_real\.c$")
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def _strip_comments(text):
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def source_files(root=ROOT):
    files = []
    for top in SOURCE_DIRS:
        for dirpath, _, names in os.walk(os.path.join(root, top)):
            for name in names:
                if name.endswith(EXTENSIONS):
                    files.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(files)


def include_graph(root=ROOT):
    """{file: [(spelled include, resolved repository path or None)]} for every source file."""
    graph = {}
    for f in source_files(root):
        with open(os.path.join(root, f), encoding="utf-8") as fh:
            text = _strip_comments(fh.read())
        edges = []
        for _, name in INCLUDE.findall(text):
            resolved = None
            for base in (os.path.dirname(f),) + INCLUDE_PATHS:
                cand = os.path.normpath(os.path.join(base, name)).replace(os.sep, "/")
                if os.path.isfile(os.path.join(root, cand)):
                    resolved = cand
                    break
            edges.append((name, resolved))
        graph[f] = edges
    return graph


def find_cycle(graph):
    """One include cycle as a list of files [a, b, ..., a], or None. graph: {file: [file]}."""
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@pytest.fixture(scope="module")
def graph():
    g = include_graph()
    assert len(g) > 50, "expected the C sources of csrc/ and kernels/"
    return g


def test_the_checks_can_fail():
    """The cycle finder finds a planted cycle, and the file patterns mean what they say."""
    assert find_cycle({"a.h": ["b.h"], "b.h": ["c.h"], "c.h": ["a.h"]}) == ["a.h", "b.h", "c.h", "a.h"]
    assert find_cycle({"a.h": ["b.h"], "b.h": [], "c.c": ["a.h", "b.h"]}) is None
    assert PRECISION_FILE.search("csrc/precision_f32.c") and not PRECISION_FILE.search("csrc/path.c")
    assert TEMPLATE_FILE.search("csrc/nn/mlp_real.c") and not TEMPLATE_FILE.search("csrc/nn/mlp.c")


def test_no_include_cycles(graph):
    edges = {f: [r for _, r in inc if r] for f, inc in graph.items()}
    cycle = find_cycle(edges)
    assert cycle is None, "include cycle: " + " -> ".join(cycle)


def test_no_c_file_includes_a_c_file(graph):
    bad = []
    for f, inc in graph.items():
        for name, resolved in inc:
            if not (resolved or name).endswith((".c", ".cu")):
                continue
            if PRECISION_FILE.search(f) and TEMPLATE_FILE.search(resolved or name):
                continue  # the precision instantiation of a numeric template
            bad.append(f"{f} includes {name}")
    assert not bad, "a .c file includes another .c file:\n" + "\n".join(bad)


def test_templates_are_only_included_by_the_precision_files(graph):
    includers = {}
    for f, inc in graph.items():
        for _, resolved in inc:
            if resolved and TEMPLATE_FILE.search(resolved):
                includers.setdefault(resolved, set()).add(f)
    assert includers, "expected numeric templates (*_real.c)"
    for template, files in includers.items():
        assert all(PRECISION_FILE.search(f) for f in files), (template, sorted(files))


def test_python_h_only_in_the_binding(graph):
    bad = [f for f, inc in graph.items() for name, _ in inc
           if os.path.basename(name) == "Python.h" and not f.startswith(BINDING_DIR)]
    assert not bad, "Python.h included outside csrc/python/: " + ", ".join(bad)


def test_core_and_kernels_never_include_the_binding(graph):
    bad = [f"{f} includes {name}" for f, inc in graph.items() for name, resolved in inc
           if resolved and resolved.startswith(BINDING_DIR) and not f.startswith(BINDING_DIR)]
    assert not bad, "the core includes a binding header:\n" + "\n".join(bad)


def test_binding_files_include_one_binding_header(graph):
    """Every binding source file shares declarations through binding.h only (no .c -> .c, no
    private headers that would let the files include each other in a circle)."""
    for f, inc in graph.items():
        if not f.startswith(BINDING_DIR) or f.endswith("cuda_module.c"):
            continue  # cuda_module.c is the separate rsm._cuda extension
        local = [r for _, r in inc if r and r.startswith(BINDING_DIR)]
        if f.endswith(".c"):
            assert local == [BINDING_DIR + "binding.h"], (f, local)
