"""The README and the code point only at files inside the repository, and every "THEORY.md §n"
they cite exists in docs/THEORY.md."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTSIDE = ("RSM-SPEC", "DESIGN.md", "DESIGN §", "shared/", "STYLE.md")
SCANNED = ("README.md", "python", "csrc", "kernels", "benchmarks", "docs", "examples", "setup.py",
           "Makefile", "pyproject.toml")
EXTS = (".py", ".c", ".h", ".cu", ".cuh", ".md", ".toml", ".yaml", ".yml", "Makefile")


def _files():
    for entry in SCANNED:
        path = os.path.join(ROOT, entry)
        if os.path.isfile(path):
            yield path
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in filenames:
                if name.endswith(EXTS):
                    yield os.path.join(dirpath, name)


def test_no_reference_outside_the_repository():
    bad = []
    for path in _files():
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if any(word in line for word in OUTSIDE):
                    bad.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()[:100]}")
    assert not bad, "references to files outside the repository:\n" + "\n".join(bad[:40])


def test_cited_theory_sections_exist():
    with open(os.path.join(ROOT, "docs", "THEORY.md"), encoding="utf-8") as f:
        text = f.read()
    sections = set(re.findall(r"^#+ (\d+(?:\.\d+)*)\.? ", text, flags=re.M))
    sections |= set(re.findall(r"^\* (\d+\.\d+\.\d+) ", text, flags=re.M))   # 6.3.x, 9.2.x items
    cited = set()
    for path in _files():
        with open(path, encoding="utf-8", errors="replace") as f:
            for m in re.finditer(r"THEORY\.md\)? ((?:§\d+(?:\.\d+)*(?:, )?)+)", f.read()):
                cited |= set(re.findall(r"§(\d+(?:\.\d+)*)", m.group(1)))
    missing = sorted(c for c in cited if c not in sections)
    assert cited and not missing, f"THEORY.md has no section {missing}"
