"""The one precision scheme of csrc/ and kernels/ (described in csrc/real.h), checked on the
source text: every templated entry point is in real_api.h's X-macro list under both full names
(so grep finds its declaration), no per-element body is written twice for float and double, and
the CUDA kernels call the shared element templates without overload shims. Text checks, no build.
"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
KERNELS = ROOT / "kernels"


def _core_files(pattern):
    """csrc files outside the Python binding (csrc/python/)."""
    return sorted(p for p in CSRC.rglob(pattern) if "python" not in p.relative_to(CSRC).parts)


def _templated_entry_points():
    """Names of the non-static RSM_T(name) functions defined in the *_real.c templates."""
    names = set()
    for path in _core_files("*_real.c"):
        text = path.read_text()
        # a definition: return type alone on its line (not static), then RSM_T(name)( on the next
        for m in re.finditer(r"^(?!static)([A-Za-z_][A-Za-z0-9_ ]*)\n(RSM_T\((\w+)\))\(", text,
                             re.M):
            names.add(m.group(3))
    return names


def test_every_templated_entry_point_is_listed_under_both_full_names():
    names = _templated_entry_points()
    assert len(names) >= 20, f"the entry-point scan found only {sorted(names)}"
    api = (CSRC / "real_api.h").read_text()
    missing = [n for n in sorted(names)
               if not re.search(rf"P\(rsm_{n}_f32, rsm_{n}_f64\)", api)]
    assert not missing, f"templated entry points missing from csrc/real_api.h's list: {missing}"


def test_a_grep_for_a_precision_name_finds_its_declaration():
    api = (CSRC / "real_api.h").read_text()
    for name in ("rsm_sample_f32", "rsm_sample_f64", "rsm_mlp_forward_f32", "rsm_objective_f64"):
        assert name in api, name


def test_no_hand_written_prototype_pairs_outside_the_list():
    """An entry point declared by hand (`rsm_status rsm_x_f32(...);`) instead of by the list."""
    names = _templated_entry_points()
    offenders = []
    for path in _core_files("*.[ch]"):
        if path.name in ("real_api.h",) or path.name.endswith("_real.c"):
            continue
        for n in names:
            if re.search(rf"^\w[\w ]*\brsm_{n}_f(32|64)\(", path.read_text(), re.M):
                offenders.append(f"{path.relative_to(ROOT)}: rsm_{n}_f32/_f64")
    assert not offenders, offenders


def test_element_headers_write_each_body_once():
    """csrc/ops/*.h: no function defined per precision by hand (rsm_x_f32 next to rsm_x_f64)."""
    offenders = []
    for path in sorted((CSRC / "ops").glob("*.h")):
        defined = set(re.findall(r"^(rsm_\w+?)_f(?:32|64)\(", path.read_text(), re.M))
        offenders += [f"{path.name}: {d}" for d in sorted(defined)]
    assert not offenders, f"per-precision copies of an element body: {offenders}"


def test_kernels_call_the_shared_templates_without_overload_shims():
    """A kernel that calls rsm_x_f32 / rsm_x_f64 wraps the CPU's per-precision names in
    overloads; the element templates are instantiated as rsm_x<real> instead."""
    offenders = []
    for path in sorted(KERNELS.glob("*.c*")) + sorted(KERNELS.glob("*.cuh")):
        for m in re.finditer(r"\brsm_\w+_f(?:32|64)\s*\(", path.read_text()):
            offenders.append(f"{path.name}: {m.group(0)}")
    assert not offenders, offenders


def test_core_dtype_dispatch_goes_through_rsm_real_call():
    """`if (dtype == RSM_F32) rsm_x_f32(...) else rsm_x_f64(...)` by hand in the core (the binding
    is csrc/python/, outside this check)."""
    offenders = []
    for path in _core_files("*.c"):
        text = path.read_text()
        for m in re.finditer(r"==\s*RSM_F32\)?\s*(?:return\s+|\w+\s*=\s*)?\(?\s*rsm_\w+_f32\(",
                             text):
            offenders.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert not offenders, offenders
