"""Run the test suite under AddressSanitizer + UBSan and judge the reports (`make test-asan`).

Usage: .venv-asan/bin/python .ci/asan_pytest.py [pytest args...]   (rsm built with RSM_SANITIZE=1)

CPython is not instrumented, so libasan is preloaded (with libstdc++, whose __cxa_throw ASan must
intercept from the start for C++ extensions such as matplotlib's). Reports go to log files under
build/asan/logs/ and are judged here:
  * any AddressSanitizer error or UBSan "runtime error" fails the run (halt_on_error too);
  * LeakSanitizer is on, but CPython does not free everything at exit, so a leak report fails the
    run only when its stack has a frame of rsm (its extension modules, rsm_* functions or files
    under csrc/ or kernels/); the others are counted and ignored. tests/lsan.supp removes the
    usual interpreter leaks early, which also keeps subprocesses of the tests quiet.
  * pytest's own exit status counts as usual; 5 (no tests collected) is a failure.
This script runs uninstrumented; only the pytest child gets the sanitizer environment.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGS = os.path.join(ROOT, "build", "asan", "logs")
RSM_FRAME = re.compile(r"\brsm_\w*|/_C\.cpython|/_cuda\.cpython|\bcsrc/|\bkernels/")
RUN_PYTEST = ("import sys, pytest\n"
              "rc = int(pytest.main(sys.argv[2:]))\n"
              "open(sys.argv[1], 'w').write(str(rc))\n"
              "sys.exit(rc)\n")


def gcc_lib(name):
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True)
    path = out.stdout.strip()
    if out.returncode != 0 or not os.path.isabs(path) or not os.path.exists(path):
        sys.exit(f"asan: gcc -print-file-name={name} found nothing; is gcc installed?")
    return path


def sanitizer_env():
    env = os.environ.copy()
    prefix = os.path.join(LOGS, "log")
    env["LD_PRELOAD"] = ":".join([gcc_lib("libasan.so"), gcc_lib("libstdc++.so")])
    env["ASAN_OPTIONS"] = ":".join([
        "detect_leaks=1",               # judged below: only leaks with rsm frames fail
        "halt_on_error=1",
        "allocator_may_return_null=1",  # huge allocations give MemoryError, not an abort
        "protect_shadow_gap=0",         # required by the CUDA driver, should it be loaded
        "detect_odr_violation=0",
        f"log_path={prefix}",
    ])
    # exitcode=0: a leak report must not change a subprocess's exit status (tests that start
    # Python children check it); the reports are judged from the log files below instead.
    env["LSAN_OPTIONS"] = (f"suppressions={os.path.join(ROOT, 'tests', 'lsan.supp')}:"
                           "print_suppressions=0:exitcode=0")
    env["UBSAN_OPTIONS"] = f"print_stacktrace=1:halt_on_error=1:log_path={prefix}"
    env.setdefault("OMP_NUM_THREADS", "2")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def leak_blocks(text):
    """The 'Direct/Indirect leak of ...' blocks of one LeakSanitizer report."""
    return re.findall(r"^(?:Direct|Indirect) leak of .*?(?=^\s*$)", text, re.M | re.S)


def main():
    shutil.rmtree(LOGS, ignore_errors=True)
    os.makedirs(LOGS)
    rc_file = os.path.join(LOGS, "pytest.rc")
    args = sys.argv[1:] or ["tests", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run([sys.executable, "-c", RUN_PYTEST, rc_file, *args], env=sanitizer_env())
    pytest_rc = int(open(rc_file).read()) if os.path.exists(rc_file) else None

    errors, rsm_leaks, other_leaks = [], [], 0
    for path in sorted(glob.glob(os.path.join(LOGS, "log.*"))):
        text = open(path, errors="replace").read()
        if "ERROR: AddressSanitizer" in text or "runtime error:" in text:
            errors.append((path, text))
        for block in leak_blocks(text):
            if RSM_FRAME.search(block):
                rsm_leaks.append(block)
            else:
                other_leaks += 1

    for path, text in errors:
        print(f"\n==== sanitizer error ({os.path.relpath(path, ROOT)}) ====\n{text}", file=sys.stderr)
    for block in rsm_leaks:
        print(f"\n==== leak in rsm ====\n{block}", file=sys.stderr)
    if other_leaks:
        print(f"asan: ignored {other_leaks} leak report(s) without an rsm frame (interpreter "
              f"internals kept until exit); logs in {os.path.relpath(LOGS, ROOT)}/")

    if pytest_rc is None:
        print(f"asan: FAILED: pytest did not finish (exit {proc.returncode})", file=sys.stderr)
        return 1
    if pytest_rc == 5:
        print("asan: FAILED: pytest collected no tests", file=sys.stderr)
        return 1
    if pytest_rc != 0:
        print(f"asan: FAILED: pytest exit status {pytest_rc}", file=sys.stderr)
        return pytest_rc
    if errors or rsm_leaks:
        print(f"asan: FAILED: {len(errors)} sanitizer error report(s), {len(rsm_leaks)} leak(s) "
              "in rsm", file=sys.stderr)
        return 1
    print("asan: OK (no AddressSanitizer/UBSan error, no leak in rsm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
