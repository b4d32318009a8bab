"""Build of rsm: the C extension rsm._C and, when nvcc is found, the CUDA extension rsm._cuda.

Sources
  rsm._C     every csrc/**/*.c, compiled once, except the numeric templates (*_real.c, #included
             twice by csrc/precision_f32.c / csrc/precision_f64.c) and the CUDA host glue
             (csrc/python/cuda_module.c and csrc/cuda/**/*.c), which go into rsm._cuda.
  rsm._cuda  the CUDA host glue above plus kernels/*.cu compiled by nvcc; it links the CUDA
             runtime statically (libcudart_static) and cuBLAS with an rpath to the toolkit, and
             never libcuda. `import rsm` never loads it: rsm.cuda_available() does.

Environment knobs (all optional)
  RSM_CUDA=auto|1|0    auto (default): build rsm._cuda when nvcc is found (a failing nvcc build
                       then warns and leaves a CPU-only build); 1: require it, fail loudly;
                       0: never build it.
  RSM_NVCC=path        nvcc to use (only this one); else $CUDA_HOME/bin/nvcc, $CUDA_PATH/bin/nvcc, `which nvcc`,
                       /usr/local/cuda/bin/nvcc, in this order.
  RSM_CUDA_ARCHS       e.g. "90" or "80;86;90a" (also "8.6", "sm_90"); default: the GPUs that
                       nvidia-smi sees, else the fixed list DEFAULT_CUDA_ARCHS below.
  RSM_CUDA_PTX         virtual arch embedded as PTX (JIT for newer GPUs), e.g. "80", or "none";
                       default: the lowest arch of the list.
  RSM_NATIVE=1|0       1: -march=native, tuned for (and only runnable on) this machine's CPU;
                       0 (default): a portable build that runs on any x86-64 / aarch64 CPU,
                       which on x86-64 also carries copies of rsm._C compiled for x86-64-v3
                       (AVX2, FMA) and x86-64-v4 (AVX-512); `import rsm` loads the best one the
                       CPU supports (RSM_CPU_VARIANT=baseline|x86_64_v3|x86_64_v4 forces one).
                       Measured in benchmarks/RESULTS.md ("portable vs native").
  RSM_DISPATCH=0       build only the baseline rsm._C (no x86-64-v3/v4 copies; faster builds).
  RSM_MARCH=arch       -march=arch for a baseline of your choice (e.g. x86-64-v3); no copies.
  RSM_OPENMP=1|0       OpenMP when the compiler supports it (default 1).
  RSM_SANITIZE=1       AddressSanitizer + UBSan build (-O1 -g), objects in build/asan/.
  RSM_BUILD_JOBS=n     parallel compile jobs (default: the number of CPUs).

What the build found is printed as a short summary and written to rsm/_build_config.py, which
rsm.build_info() reports. Objects are rebuilt only when their source, a header they include or
their command line changed (gcc/nvcc -MMD dependency files).
"""
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Without a visible GPU: SASS for Ampere sm_80 (A100; the same SASS runs on sm_86 / sm_89, binary
# compatible within a major version) and Hopper sm_90 (H100/H200), plus PTX of the lowest
# (compute_80) that newer GPUs (Blackwell...) JIT-compile. Two SASS targets instead of four keep
# the CUDA part of a CI build (2 cores) near 17 s of compiler time instead of 28 s.
# sm_80 is also the floor that the kernels may assume (bf16, cp.async); nvcc 13 dropped < sm_75.
DEFAULT_CUDA_ARCHS = "80;90"

SANITIZE = os.environ.get("RSM_SANITIZE", "0") == "1"
# CPU-specific copies of rsm._C (same sources, another -march, their own object directory), built
# next to the portable baseline on x86-64 unless the build is native, sanitized or told not to
CPU_VARIANTS = {"x86_64_v3": "x86-64-v3", "x86_64_v4": "x86-64-v4"}


def cpu_variants():
    import platform

    if (platform.machine().lower() not in ("x86_64", "amd64") or SANITIZE
            or os.environ.get("RSM_NATIVE", "0") == "1" or os.environ.get("RSM_MARCH")
            or os.environ.get("RSM_DISPATCH", "1") == "0"):
        return []
    return list(CPU_VARIANTS)
VARIANT = "asan" if SANITIZE else "release"
CUDA_ONLY_C = ("csrc/python/cuda_module.c", "csrc/cuda/")


def _is_cuda_only(path):
    path = path.replace(os.sep, "/")
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in CUDA_ONLY_C)


def c_sources():
    files = sorted(glob.glob("csrc/**/*.c", recursive=True))
    return [f for f in files if not f.endswith("_real.c") and not _is_cuda_only(f)]


def cuda_c_sources():
    files = sorted(glob.glob("csrc/**/*.c", recursive=True))
    return [f for f in files if _is_cuda_only(f) and not f.endswith("_real.c")]


def header_depends():
    pats = ("csrc/**/*.h", "csrc/**/*_real.c", "kernels/**/*.h", "kernels/**/*.cuh")
    return sorted({f for p in pats for f in glob.glob(p, recursive=True)})


def _say(msg):
    print(msg, flush=True)
    sys.stderr.flush()


# ---- CUDA discovery -----------------------------------------------------------------------------


def _nvcc_search_path():
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append((var, os.path.join(os.environ[var], "bin", "nvcc")))
    which = shutil.which("nvcc")
    if which:
        candidates.append(("PATH", which))
    candidates.append(("default", "/usr/local/cuda/bin/nvcc"))
    return candidates


def find_nvcc():
    """(path, version, how) of the first nvcc that answers `nvcc --version`, or (None, None, why)."""
    candidates = []
    if os.environ.get("RSM_NVCC"):  # an explicit choice: no fallback to another nvcc
        candidates.append(("RSM_NVCC", os.environ["RSM_NVCC"]))
    else:
        candidates += _nvcc_search_path()
    tried = []
    for how, path in candidates:
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            tried.append(f"{path} ({how}): {type(exc).__name__}")
            continue
        m = re.search(r"release (\d+\.\d+)", out.stdout)
        if out.returncode == 0 and m:
            return os.path.abspath(path), m.group(1), how
        tried.append(f"{path} ({how}): exit {out.returncode}")
    return None, None, "; ".join(tried)


def _nvcc_list(nvcc, flag):
    try:
        out = subprocess.run([nvcc, flag], capture_output=True, text=True, timeout=60)
        return set(out.stdout.split()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _parse_archs(text):
    archs = []
    for tok in re.split(r"[;,\s]+", text.strip()):
        tok = tok.strip().lower()
        if not tok:
            continue
        tok = re.sub(r"^(sm_|compute_)", "", tok)
        m = re.fullmatch(r"(\d+)\.(\d+)", tok)
        if m:
            tok = m.group(1) + m.group(2)
        if not re.fullmatch(r"\d+[a-z]?", tok):
            raise ValueError(f"bad CUDA architecture {tok!r}")
        if tok not in archs:
            archs.append(tok)
    return archs


def _smi_archs():
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    try:
        return _parse_archs(out.stdout) or None
    except ValueError:
        return None


def _arch_num(a):
    return int(re.match(r"\d+", a).group(0))


def cuda_archs(nvcc):
    """(sass archs, ptx arch or None, source of the list); raises ValueError on a bad request."""
    if os.environ.get("RSM_CUDA_ARCHS", "").strip():
        archs, source, strict = _parse_archs(os.environ["RSM_CUDA_ARCHS"]), "RSM_CUDA_ARCHS", True
    else:
        smi = _smi_archs()
        if smi:
            archs, source, strict = smi, "nvidia-smi", False
        else:
            archs, source, strict = _parse_archs(DEFAULT_CUDA_ARCHS), "default list", False
    supported = _nvcc_list(nvcc, "--list-gpu-code")
    if supported is not None:
        # nvcc lists base archs only (sm_90, not sm_90a / sm_100f): check the number.
        bad = [a for a in archs if f"sm_{a}" not in supported and f"sm_{_arch_num(a)}" not in supported]
        if bad and strict:
            raise ValueError(f"nvcc does not support sm_{', sm_'.join(bad)} "
                             f"(it supports {' '.join(sorted(supported))})")
        if bad:
            _say(f"rsm: warning: nvcc does not support sm_{', sm_'.join(bad)}; skipped")
        archs = [a for a in archs if a not in bad]
    if not archs:
        raise ValueError("no CUDA architecture left to build for")
    ptx_env = os.environ.get("RSM_CUDA_PTX", "").strip().lower()
    if ptx_env in ("none", "0", "no", "off"):
        ptx = None
    elif ptx_env:
        ptx = _parse_archs(ptx_env)[0]
    else:
        ptx = min(archs, key=_arch_num)
    virtual = _nvcc_list(nvcc, "--list-gpu-arch")
    if (ptx is not None and virtual is not None and f"compute_{ptx}" not in virtual
            and f"compute_{_arch_num(ptx)}" not in virtual):
        raise ValueError(f"nvcc does not support compute_{ptx} for PTX")
    return archs, ptx, source


def cuda_lib_dir(nvcc):
    root = os.path.dirname(os.path.dirname(nvcc))
    for d in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
        if glob.glob(os.path.join(root, d, "libcudart_static.a")):
            return os.path.join(root, d)
    return os.path.join(root, "lib64")


# ---- incremental, parallel compilation ----------------------------------------------------------


def _stale(obj, cmd):
    """True unless `obj` exists, was built by `cmd` and is newer than every file it depends on."""
    cmd_file, dep_file = obj + ".cmd", obj + ".d"
    try:
        obj_mtime = os.path.getmtime(obj)
        with open(cmd_file) as f:
            if f.read() != cmd:
                return True
        with open(dep_file) as f:
            text = f.read().replace("\\\n", " ")
    except OSError:
        return True
    _, _, deps = text.partition(":")
    for dep in deps.split():
        try:
            if os.path.getmtime(dep) > obj_mtime:
                return True
        except OSError:
            return True
    return False


def _jobs():
    try:
        return max(1, int(os.environ.get("RSM_BUILD_JOBS", "0")) or os.cpu_count() or 1)
    except ValueError:
        return os.cpu_count() or 1


def _run_jobs(fn, items):
    if not items:
        return
    with ThreadPoolExecutor(min(_jobs(), len(items))) as pool:
        for _ in pool.map(fn, items):
            pass


def _install_parallel_compile(compiler):
    """Replace compiler.compile by one that compiles stale objects only, in parallel."""

    def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0,
                extra_preargs=None, extra_postargs=None, depends=None):
        macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs)
        cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)

        def one(obj):
            src, ext = build[obj]
            post = list(extra_postargs) + ["-MMD", "-MF", obj + ".d"]
            cmd = shlex.join(compiler.compiler_so + cc_args + [src] + post)
            if not _stale(obj, cmd):
                return
            os.makedirs(os.path.dirname(obj) or ".", exist_ok=True)
            compiler._compile(obj, src, ext, cc_args, post, pp_opts)
            with open(obj + ".cmd", "w") as f:
                f.write(cmd)

        _run_jobs(one, [o for o in objects if o in build])
        return objects

    compiler.compile = compile


# ---- build_ext ----------------------------------------------------------------------------------


class RsmBuildExt(build_ext):
    def finalize_options(self):
        super().finalize_options()
        # Objects live in build/<variant>/temp, also for editable installs (which would otherwise
        # use a fresh temporary directory each time), so that rebuilds are incremental.
        self.build_temp = os.path.join("build", VARIANT, "temp")
        # Relinking is cheap and avoids reusing an output of another variant; objects are
        # rebuilt only when stale (see _stale).
        self.force = True

    # -- configuration --

    def _check_openmp(self):
        if os.environ.get("RSM_OPENMP", "1") == "0":
            return False, "disabled by RSM_OPENMP=0"
        cc_cmd = []
        for tok in self.compiler.compiler_so:  # e.g. ["ccache", "gcc", "-pthread", ...]
            if tok.startswith("-"):
                break
            cc_cmd.append(tok)
        cc = " ".join(cc_cmd)
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "omp.c")
            with open(src, "w") as f:
                f.write("#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n")
            try:
                out = subprocess.run(cc_cmd + ["-fopenmp", src, "-o", os.path.join(tmp, "omp")],
                                     capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.SubprocessError) as exc:
                return False, f"{cc}: {exc}"
            if out.returncode != 0:
                return False, f"{cc} -fopenmp failed"
        return True, "-fopenmp"

    def _c_flags(self, openmp):
        flags = ["-std=gnu11", "-O3", "-fno-math-errno", "-Wall", "-Wextra",
                 "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
        if openmp:
            flags.append("-fopenmp")
        if os.environ.get("RSM_NATIVE", "0") == "1":
            flags.append("-march=native")
        elif os.environ.get("RSM_MARCH"):
            flags.append("-march=" + os.environ["RSM_MARCH"])
        if SANITIZE:
            flags = [f for f in flags if f != "-O3"] + [
                "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                "-fno-sanitize-recover=undefined", "-DRSM_SANITIZE=1"]
        return flags

    def _configure_cuda(self):
        """Decide about rsm._cuda; fills self.cfg. Raises SystemExit under RSM_CUDA=1."""
        policy = os.environ.get("RSM_CUDA", "auto").strip().lower() or "auto"
        if policy not in ("auto", "1", "0"):
            sys.exit(f"rsm: RSM_CUDA={policy!r}: expected auto, 1 or 0")
        cfg = self.cfg
        cfg.update(cuda_policy=policy, cuda_built=False, nvcc=None, nvcc_path=None,
                   cuda_archs=None, cuda_ptx=None, cuda_error=None)
        if policy == "0":
            cfg["cuda_error"] = "disabled by RSM_CUDA=0"
            self.summary.append("✗ CUDA disabled (RSM_CUDA=0): CPU only")
            return
        nvcc, version, how = find_nvcc()
        if nvcc is None:
            if policy == "1":
                sys.exit("rsm: RSM_CUDA=1 but nvcc was not found (tried: " + how + "). Set RSM_NVCC "
                         "or CUDA_HOME, or put nvcc on PATH; RSM_CUDA=0 builds for the CPU only.")
            cfg["cuda_error"] = f"nvcc not found: {how}"
            self.summary.append("✗ nvcc not found: CPU only; set RSM_CUDA=1 to require it")
            return
        cfg.update(nvcc=version, nvcc_path=nvcc)
        try:
            archs, ptx, source = cuda_archs(nvcc)
        except ValueError as exc:
            if policy == "1" or os.environ.get("RSM_CUDA_ARCHS"):
                sys.exit(f"rsm: CUDA architectures: {exc}")
            cfg["cuda_error"] = str(exc)
            self.summary.append(f"✗ nvcc {version} ({nvcc}): {exc}: CPU only")
            return
        cfg.update(cuda_archs=";".join(archs), cuda_ptx=ptx, cuda_archs_source=source)
        self.cuda = dict(nvcc=nvcc, version=version, archs=archs, ptx=ptx,
                         lib_dir=cuda_lib_dir(nvcc))

    def _nvcc_objects(self):
        """Compile kernels/*.cu with nvcc into build_temp (stale ones only); the object paths."""
        c = self.cuda
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in c["archs"]]
        if c["ptx"]:
            gencode.append(f"-gencode=arch=compute_{c['ptx']},code=compute_{c['ptx']}")
        # warnings on for nvcc and the host compiler (the .cu files build without any)
        # --extended-lambda: kernels/backend_cuda.cu launches its element-wise ops as __device__
        # lambdas over the shared csrc/ops bodies
        flags = ["-O3", "-std=c++17", "--extended-lambda", "-Xcompiler", "-fPIC,-Wall,-Wextra",
                 "-lineinfo", "-Icsrc", "-Ikernels"]
        flags += shlex.split(os.environ.get("RSM_NVCC_FLAGS", ""))
        sources = sorted(glob.glob("kernels/**/*.cu", recursive=True))
        objects = [os.path.join(self.build_temp, os.path.splitext(s)[0] + ".o") for s in sources]

        def one(pair):
            src, obj = pair
            cmd_list = [c["nvcc"]] + flags + gencode + ["-MD", "-MF", obj + ".d", "-c", src, "-o", obj]
            cmd = shlex.join(cmd_list)
            if not _stale(obj, cmd):
                return
            os.makedirs(os.path.dirname(obj), exist_ok=True)
            _say(cmd)
            out = subprocess.run(cmd_list, capture_output=True, text=True)
            if out.stdout.strip() or out.stderr.strip():
                _say(out.stdout + out.stderr)
            if out.returncode != 0:
                raise RuntimeError(f"nvcc failed on {src} (exit {out.returncode}):\n{out.stderr}")
            with open(obj + ".cmd", "w") as f:
                f.write(cmd)

        _run_jobs(one, list(zip(sources, objects)))
        return objects

    # -- build --

    def run(self):
        self.cfg, self.summary, self.cuda = {}, [], None
        self._configure_cuda()
        self.extensions = [e for e in self.extensions if e.name != "rsm._cuda" or self.cuda]
        super().run()
        self._finish()

    def _march_supported(self, march):
        """Whether the C compiler accepts -march=march (x86-64-v3/v4 need GCC 11 / clang 12)."""
        cc = self.compiler.compiler_so[0]
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "t.c")
            with open(src, "w") as f:
                f.write("int main(void) { return 0; }\n")
            try:
                out = subprocess.run([cc, "-march=" + march, "-c", src, "-o", os.path.join(tmp, "t.o")],
                                     capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.SubprocessError):
                return False
            return out.returncode == 0

    def build_extension(self, ext):
        """CPU variants compile into their own object directory (the flags differ)."""
        variant = ext.name.rpartition("._C_")[2] if "._C_" in ext.name else None
        if variant not in CPU_VARIANTS:
            return super().build_extension(ext)
        saved = self.build_temp
        self.build_temp = os.path.join(saved, variant)
        try:
            return super().build_extension(ext)
        finally:
            self.build_temp = saved

    def build_extensions(self):
        _install_parallel_compile(self.compiler)
        openmp, how = self._check_openmp()
        flags = self._c_flags(openmp)
        native = "-march=native" in flags
        self.cfg.update(openmp=openmp, openmp_flag=how if openmp else None, native=native,
                        sanitize=SANITIZE, c_flags=" ".join(flags), variant=VARIANT)
        link = (["-fopenmp"] if openmp else []) + (["-fsanitize=address,undefined"] if SANITIZE else [])
        built_variants = []
        for ext in list(self.extensions):
            ext_flags = flags
            variant = ext.name.rpartition("._C_")[2] if "._C_" in ext.name else None
            if variant in CPU_VARIANTS:
                if not self._march_supported(CPU_VARIANTS[variant]):
                    self.extensions.remove(ext)
                    continue
                ext_flags = flags + ["-march=" + CPU_VARIANTS[variant]]
                built_variants.append(variant)
            ext.extra_compile_args = ext_flags + ['-DRSM_BUILD_CFLAGS="%s"' % " ".join(ext_flags)]
            ext.extra_link_args = link + ["-ldl", "-lm"]
            ext.depends = header_depends()
        self.cfg["cpu_variants"] = built_variants
        cuda_ext = next((e for e in self.extensions if e.name == "rsm._cuda"), None)
        if cuda_ext is not None:
            try:
                cuda_ext.extra_objects = self._nvcc_objects()
                cuda_ext.library_dirs = [self.cuda["lib_dir"]]
                cuda_ext.runtime_library_dirs = [self.cuda["lib_dir"]]
                cuda_ext.libraries = ["cublas", "cudart_static", "dl", "rt", "pthread", "stdc++"]
            except RuntimeError as exc:
                if self.cfg["cuda_policy"] == "1":
                    raise
                _say(f"rsm: warning: {exc}\nrsm: warning: building without CUDA (RSM_CUDA=1 makes "
                     "this an error)")
                self.cfg["cuda_error"] = str(exc).splitlines()[0]
                self.summary.append(f"✗ nvcc {self.cuda['version']} ({self.cuda['nvcc']}): kernel "
                                    "build failed: CPU only")
                self.extensions.remove(cuda_ext)
                self.cuda = None
        if self.cuda:
            c = self.cuda
            self.cfg["cuda_built"] = True
            ptx = f" + PTX {c['ptx']}" if c["ptx"] else ""
            self.summary.insert(0, f"✓ nvcc {c['version']} ({c['nvcc']}), archs "
                                   f"{';'.join(c['archs'])}{ptx}")
        self.summary.append("✓ OpenMP" if openmp else f"✗ OpenMP ({how}): single-threaded CPU loops")
        self.summary.append("→ BLAS: loaded at run time from scipy-openblas32 (built-in kernel "
                            "otherwise)")
        if native:
            self.summary.append("→ RSM_NATIVE=1: -march=native (runs on this CPU model only; "
                                "the default RSM_NATIVE=0 is portable)")
        elif built_variants:
            self.summary.append("→ portable build + copies for " + ", ".join(
                CPU_VARIANTS[v] for v in built_variants) + " (picked at import; RSM_NATIVE=1 for "
                "-march=native)")
        else:
            self.summary.append("→ portable build (RSM_NATIVE=1 for -march=native)")
        if SANITIZE:
            self.summary.append("→ RSM_SANITIZE=1: AddressSanitizer + UBSan (-O1 -g)")
        super().build_extensions()

    def _finish(self):
        self.cfg["summary"] = self.summary
        text = ("# Written by setup.py at build time: what the build of rsm found. Do not edit.\n"
                f"CONFIG = {self.cfg!r}\n")
        targets = [os.path.join(self.build_lib, "rsm")]
        if self.inplace or getattr(self, "editable_mode", False):
            targets.append(self.get_finalized_command("build_py").get_package_dir("rsm"))
        for d in targets:
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "_build_config.py"), "w") as f:
                f.write(text)
            if not self.cfg.get("cuda_built"):  # a stale rsm._cuda of an earlier build
                for stale in glob.glob(os.path.join(d, "_cuda.*")):
                    os.remove(stale)
            for v in CPU_VARIANTS:   # stale CPU variants of an earlier build
                if v not in self.cfg.get("cpu_variants", []):
                    for stale in glob.glob(os.path.join(d, f"_C_{v}.*")):
                        os.remove(stale)
        _say("rsm build summary:\n  " + "\n  ".join(self.summary))


setup(
    ext_modules=[
        Extension("rsm._C", sources=c_sources(), include_dirs=["csrc"]),
        *[Extension(f"rsm._C_{v}", sources=c_sources(), include_dirs=["csrc"]) for v in cpu_variants()],
        Extension("rsm._cuda", sources=cuda_c_sources(), include_dirs=["csrc", "kernels"]),
    ],
    package_dir={"": "python"},
    packages=["rsm", "rsm.experiments", "rsm.methods", "rsm.methods.rollouts"],
    package_data={"rsm": ["py.typed", "*.pyi"]},
    cmdclass={"build_ext": RsmBuildExt},
    options={"build": {"build_base": os.path.join("build", VARIANT)}},
)
