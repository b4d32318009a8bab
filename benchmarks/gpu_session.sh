#!/usr/bin/env bash
# gpu_session.sh: everything the CUDA backend needs a GPU for, on the device machine (its image has
# nvcc, PyTorch, CuPy, JAX, pytest; no network). From the repository root:
#
#     bash benchmarks/gpu_session.sh          # stages build tests memcheck racecheck (<= ~9.5 min)
#     bash benchmarks/gpu_session.sh bench    # then the benchmarks (<= ~4 min; rebuilds if needed)
#     bash benchmarks/gpu_session.sh all      # every stage in one call (~12 min: over the 10-min
#                                             # limit of one device command; use the two above)
#
# Stages (each under its own `timeout`, so the whole fits the device budget; a stage that times
# out is reported and the next one runs):
#   build      RSM_CUDA=1 build for sm_80 + sm_90 + PTX with nvcc -Werror all-warnings (zero
#              warnings or it fails); rsm.build_info()
#   tests      tests/test_cuda*.py and the DLPack tests: every backend-table op forward/backward
#              (float32, float64) against numpy, the Philox stream bitwise, every sampler's
#              trajectories and log-probs, every preset's one-iteration update, a whole Trainer
#              iteration and pretraining against the CPU (tests/test_cuda_device.py), DLPack with
#              torch / CuPy / JAX (tests/test_cuda.py); junit XML
#   memcheck   compute-sanitizer memcheck (leak check) over the DLPack exchange and the table ops
#   racecheck  compute-sanitizer racecheck over the ops with shared memory / warp reductions
#   bench      benchmarks/bench_cuda.py: rsm vs torch eager vs torch.compile, MLP and DiT
#              (32x32x4 latents, width 512, depth 12), the table's GEMM / attention TFLOP/s
#
# Results under $OUT (the device tool's folder; /tmp/rsm-gpu elsewhere): summary.txt, nvidia-smi.txt,
# build.txt, build_info.json, tests.txt, tests.xml, memcheck.txt, racecheck.txt, bench.txt,
# bench_cuda.json. The exit status is that of the first failing stage.
set -uo pipefail
OUT=${OUT:-/tmp/rsm-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX must leave memory to rsm and torch
status=0
stage() { # stage NAME SECONDS LOGFILE CMD...: run under a timeout, tee the log, keep the first failure
    local name=$1 limit=$2 log=$3; shift 3
    echo "=== $name (limit ${limit} s): $*" | tee -a "$OUT/summary.txt"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@" > >(tee "$OUT/$log") 2>&1
    local rc=$?
    [ "$rc" -eq 124 ] && echo "=== $name: TIMED OUT after ${limit} s" | tee -a "$OUT/summary.txt"
    echo "=== $name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
    [ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc
    return 0
}

build() {
    stage device 20 nvidia-smi.txt nvidia-smi
    # the extension in place (python/rsm/_C*.so, _cuda*.so); RSM_CUDA=1: no silent CPU-only build
    stage build 200 build.txt env RSM_CUDA=1 RSM_CUDA_ARCHS="80;90" RSM_CUDA_PTX=90 \
        RSM_NVCC_FLAGS="-Werror all-warnings" RSM_NATIVE=1 "$PY" setup.py -q build_ext --inplace
    stage info 30 build_info.json "$PY" -c \
        "import rsm, json; print(json.dumps(rsm.build_info(), indent=1, default=str))"
}

tests() {
    stage tests 150 tests.txt "$PY" -m pytest tests/test_cuda_device.py tests/test_cuda.py \
        tests/test_cuda_build.py tests/test_cuda_philox.py tests/test_dlpack.py -m "not slow" \
        -q -rs -p no:cacheprovider --junitxml="$OUT/tests.xml"
}

memcheck() {
    # device-memory errors and leaks, the DLPack exchange (torch, CuPy, JAX) and the table ops
    stage memcheck 150 memcheck.txt compute-sanitizer --tool memcheck --leak-check full \
        --error-exitcode 3 "$PY" -m pytest tests/test_cuda.py tests/test_cuda_device.py -q \
        -p no:cacheprovider -k "not preset and not every_sampler and not trainer and not pretraining"
}

racecheck() {
    # shared-memory hazards of the block / warp reductions (sums, layernorm, softmax, objective)
    # and of the DLPack exchange with torch / CuPy / JAX (rsm writes, the consumer reads)
    stage racecheck 90 racecheck.txt compute-sanitizer --tool racecheck --error-exitcode 3 \
        "$PY" -m pytest tests/test_cuda_device.py tests/test_cuda.py -q -p no:cacheprovider \
        -k "sum_sq or layernorm or attention or objective_rows or adamw or log_prob or torch or cupy or jax"
}

bench() {
    [ -e python/rsm/_build_config.py ] && grep -q "'cuda_built': True" python/rsm/_build_config.py \
        || build
    stage bench 240 bench.txt "$PY" benchmarks/bench_cuda.py --json "$OUT/bench_cuda.json"
}

case "${1:-session}" in
    session) build; tests; memcheck; racecheck ;;
    bench) bench ;;
    all) build; tests; memcheck; racecheck; bench ;;
    build | tests | memcheck | racecheck) "$1" ;;
    *) echo "usage: $0 [session|bench|all|build|tests|memcheck|racecheck]" >&2; exit 2 ;;
esac
cat "$OUT/summary.txt"
exit $status
