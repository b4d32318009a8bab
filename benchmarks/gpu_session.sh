#!/usr/bin/env bash
# gpu_session.sh: everything the CUDA backend needs a GPU for, in one command on the device machine
# (the image has nvcc, PyTorch, CuPy, JAX, pytest; no network). From the repository root:
#
#     bash benchmarks/gpu_session.sh            # build, CUDA tests, sanitizer, benchmarks
#     RSM_GPU_QUICK=1 bash benchmarks/gpu_session.sh   # small benchmark set, no sanitizer
#
# Results go under $OUT (the device tool's folder; /tmp/rsm-gpu elsewhere): nvidia-smi.txt,
# build.txt, tests.txt, sanitizer.txt, bench.txt, bench_cuda.json. Each stage runs even when an
# earlier one failed; the exit status is that of the first failing stage.
set -uo pipefail
OUT=${OUT:-/tmp/rsm-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
status=0
stage() { # stage NAME LOGFILE CMD...: run, tee the log, remember the first failure
    local name=$1 log=$2; shift 2
    echo "=== $name: $*" | tee -a "$OUT/summary.txt"
    local t0=$SECONDS
    "$@" 2>&1 | tee "$OUT/$log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
    [ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc
    return 0
}

stage device nvidia-smi.txt nvidia-smi
# the extension in place (python/rsm/_C*.so, _cuda*.so) for Hopper, CUDA required
stage build build.txt env RSM_CUDA=1 RSM_CUDA_ARCHS=90 RSM_NATIVE=1 \
    "$PY" setup.py -q build_ext --inplace
stage info info.txt "$PY" -c "import rsm, json; print(json.dumps(rsm.build_info(), indent=1))"
stage tests tests.txt "$PY" -m pytest tests/test_cuda.py tests/test_cuda_build.py tests/test_dlpack.py \
    -q -rs -p no:cacheprovider
if [ -z "${RSM_GPU_QUICK:-}" ]; then
    # device-memory errors and lifetimes (DLPack exchange included) under compute-sanitizer
    stage sanitizer sanitizer.txt compute-sanitizer --tool memcheck --leak-check full \
        "$PY" -m pytest tests/test_cuda.py -q -x -p no:cacheprovider -k "not jax"
    stage bench bench.txt "$PY" benchmarks/bench_cuda.py --json "$OUT/bench_cuda.json"
else
    stage bench bench.txt "$PY" benchmarks/bench_cuda.py --quick --json "$OUT/bench_cuda.json"
fi
cat "$OUT/summary.txt"
exit $status
