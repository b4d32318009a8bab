"""The CUDA backend without a GPU: the module builds and imports (or is absent with a reason),
the host halves of the device paths agree with the CPU, and everything refuses cleanly when no
device is there. The device parity tests are in test_cuda.py (skipped without a device)."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import numpy as np
import pytest

import rsm
import rsm.cuda
from rsm import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KERNELS = ("empty", "copy", "zero", "stream", "synchronize", "export_sync", "memory_stats",
           "empty_cache", "set_matmul", "matmul", "backend_call", "backend", "fill_normal", "fill_u32", "silu_forward",
           "silu_backward", "ema", "mlp_sizes", "mlp_forward", "mlp_backward", "sampler_step",
           "transition_log_prob", "heun_predict", "heun_mean", "pretrain_batch", "mse_cotangent",
           "objective", "grad_norm", "adamw_update")


def test_cuda_module_builds_or_says_why():
    info = rsm.build_info()
    if not info["cuda_built"]:
        # RSM_CUDA=0 or no nvcc: the reason is recorded, and rsm.cuda says it
        assert info["cuda_reason"]
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            rsm.cuda.empty(3)
        return
    from rsm import _cuda
    missing = [k for k in KERNELS if not hasattr(_cuda, k)]
    assert not missing, missing
    assert _cuda.runtime_version() >= 12000


def test_rsm_cuda_refuses_cleanly_without_a_device():
    if rsm.cuda_available():
        pytest.skip("a CUDA device is available")
    reason = rsm.build_info()["cuda_reason"]
    for call in (lambda: rsm.cuda.empty((2, 3)), lambda: rsm.cuda.to_device(np.zeros(3)),
                 lambda: rsm.cuda.DeviceMLP(rsm.MLP(2, 8, 1)), lambda: rsm.cuda.device_count()):
        with pytest.raises(RuntimeError, match="CUDA is not available") as err:
            call()
        assert reason in str(err.value)


def test_cuda_kernels_refuse_host_arrays():
    if not rsm.build_info()["cuda_built"]:
        pytest.skip("rsm._cuda is not built")
    from rsm import _cuda
    # a numpy array is not a CUDA array: refused by rsm._C's one importer (dlpack_api.h), naming
    # the argument and its device, before anything touches a device
    with pytest.raises(ValueError, match=r"fill_normal\(\): out is on cpu; this function runs on "
                                         "a CUDA device"):
        _cuda.fill_normal(np.zeros(4, np.float32), 0, 0)
    with pytest.raises(TypeError, match=r"silu_forward\(\): x must be an array supporting DLPack"):
        _cuda.silu_forward(object(), object())
    with pytest.raises(ValueError, match="the offset of x must be >= 0"):
        _cuda.silu_forward((np.zeros(3, np.float32), -1), object())


def test_dlpack_kinds_of_the_binding_are_validated():
    if not rsm.build_info()["cuda_built"]:
        pytest.skip("rsm._cuda is not built")
    from rsm import _cuda
    with pytest.raises(TypeError, match="dtype must be"):
        _cuda.empty((2,), "complex64", 0)
    with pytest.raises(TypeError, match="13 ints"):
        _cuda.mlp_sizes((1, 2), 4)


def test_matmul_mode_is_ieee_by_default_and_checked():
    if not rsm.build_info()["cuda_built"]:
        pytest.skip("rsm._cuda is not built")
    from rsm import _cuda
    assert _cuda.matmul() == "ieee"  # exact float32 products unless asked
    with pytest.raises(ValueError, match="mode must be 'ieee', 'tf32' or 'bf16'"):
        _cuda.set_matmul("fp8")
    try:
        for mode in ("tf32", "bf16"):
            _cuda.set_matmul(mode)
            assert _cuda.matmul() == mode
    finally:
        _cuda.set_matmul("ieee")


def test_one_importer_and_dtype_table_are_lent_to_the_cuda_module():
    """rsm._cuda has no DLPack parser of its own: rsm._C publishes its importer (dlpack_api.h)."""
    assert type(_C._dlpack_api).__name__ == "PyCapsule"
    assert "rsm._C._dlpack_api" in repr(_C._dlpack_api)
    src = open(os.path.join(ROOT, "csrc", "python", "cuda_module.c")).read()
    for private in ("PyCapsule_GetPointer(capsule, \"dltensor\"", "DLManagedTensor *)",
                    "kDLFloat && t.bits"):
        assert private not in src, private


def _capsule(desc):
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fuzz_harness
    return fuzz_harness.Capsule(desc)


@pytest.mark.parametrize("desc,field", [
    ({"ndim": 2, "shape": [-2, 3]}, r"shape\[0\]=-2"),
    ({"ndim": 3, "shape": [2**20, 2**20, 2**31]}, r"shape\[2\]"),
    ({"ndim": 2, "shape": [2, 2], "data_null": True}, "data is NULL"),
    ({"ndim": 1, "shape": [4], "byte_offset": 2**64 - 1}, "byte_offset"),
])
def test_device_ops_share_the_hardened_importer(desc, field):
    """A hostile capsule given to a device op meets issue 16's field checks (the one importer),
    named by the op and the argument, before any device is touched."""
    if not rsm.build_info()["cuda_built"]:
        pytest.skip("rsm._cuda is not built")
    from rsm import _cuda
    cap = _capsule(desc)
    with pytest.raises(BufferError, match=field) as info:
        _cuda.fill_normal(cap.capsule(), 0, 0)
    assert "fill_normal()" in str(info.value) and "out" in str(info.value)


def test_cpu_ops_refuse_a_device_tensor_naming_the_argument_and_the_device():
    """A producer on cuda:1 given to a CPU op: refused before its capsule is even asked for."""
    class OnDevice:
        shape, ndim, dtype = (3, 2), 2, "float32"

        def __dlpack_device__(self):
            return (2, 1)

        def __dlpack__(self, **kwargs):
            raise AssertionError("a CPU op must not export a device tensor")

    m = rsm.MLP(2, 8, 1)
    with pytest.raises(ValueError, match="x is on cuda:1; this function runs on the CPU"):
        m(OnDevice(), 0.5)


def test_loops_are_not_reimplemented_in_python_and_dispatch_to_the_c_loops():
    """rsm.cuda re-implements no loop: sample / pretrain / transition_log_prob hand a device model
    to rsm.sample / rsm.pretrain / rsm.sampling.log_prob (the C loops over its backend table); a
    CPU model is refused naming what to build; objective (no standalone device entry) refuses."""
    import inspect
    source = inspect.getsource(rsm.cuda)
    for loop_marker in ("for i, c in enumerate(coefs)", "for s in range(steps)", "for v in rl"):
        assert loop_marker not in source, loop_marker
    assert "_sample(_device_model(model" in source and "_pretrain(_device_model(model" in source
    model = rsm.MLP(2, 8, 1)
    calls = {"sample": lambda: rsm.cuda.sample(model, 4, rsm.FlowPath()),
             "pretrain": lambda: rsm.cuda.pretrain(model, np.zeros((8, 2)), rsm.FlowPath()),
             "transition_log_prob": lambda: rsm.cuda.transition_log_prob(
                 model, rsm.FlowPath(), None, None, 0, [1.0, 0.0])}
    for name, call in calls.items():
        with pytest.raises(TypeError, match=rf"rsm\.cuda\.{name}\(\): model must be an rsm model on a CUDA device"):
            call()
    with pytest.raises((RuntimeError, NotImplementedError)) as err:
        rsm.cuda.objective("ppo", None, None)
    text = str(err.value)
    assert ("CUDA" in text and "not available" in text) or "not run on the CUDA backend" in text, text


def test_trainer_device_is_accepted_and_refused_clearly():
    import inspect
    assert "device" in inspect.signature(rsm.Trainer).parameters
    policy = rsm.MLP(2, 8, 1, seed=1)
    ref = policy.copy()
    reward = rsm.Reward(lambda x, cond=None: -np.sum(x ** 2, axis=1))
    with pytest.raises((RuntimeError, NotImplementedError), match=r"Trainer\(.*device='cuda'"):
        rsm.Trainer(policy, ref, reward, "flow-grpo", device="cuda")
    with pytest.raises(ValueError, match="device must be"):
        rsm.Trainer(policy, ref, reward, "flow-grpo", device="gpu")
    # the CPU default is unchanged
    rsm.Trainer(policy, ref, reward, "flow-grpo", batch_size=2, group_size=2)


def test_backend_table_refuses_cleanly_without_a_device():
    if not rsm.build_info()["cuda_built"]:
        pytest.skip("rsm._cuda is not built")
    if rsm.cuda_available():
        pytest.skip("a CUDA device is available")
    with pytest.raises(RuntimeError, match="which is not available here"):
        rsm.cuda.backend_table(0)


def _nvcc():
    nvcc = os.environ.get("RSM_NVCC") or shutil.which("nvcc")
    if nvcc is None and os.path.exists("/usr/local/cuda/bin/nvcc"):
        nvcc = "/usr/local/cuda/bin/nvcc"
    return nvcc


@pytest.mark.slow
@pytest.mark.parametrize("source", sorted(os.path.basename(f) for f in
                                          glob.glob(os.path.join(ROOT, "kernels", "*.cu"))))
def test_kernels_compile_without_warnings_for_sm80_sm90_and_ptx(source, tmp_path):
    """Every kernel source (the backend table included) builds for sm_80 and sm_90 with PTX,
    warnings as errors, with setup.py's flags."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (RSM_NVCC, PATH, /usr/local/cuda)")
    cmd = [nvcc, "-O3", "-std=c++17", "--extended-lambda", "-Xcompiler", "-fPIC,-Wall,-Wextra",
           "-Werror", "all-warnings", "-Icsrc", "-Ikernels",
           "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
           "-gencode=arch=compute_90,code=compute_90", "-c", os.path.join("kernels", source),
           "-o", str(tmp_path / "k.o")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "warning" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr


# ---- the host halves of the device paths ------------------------------------------------------


def philox_normals_numpy(seed, stream, n):
    """Box-Muller on the CPU's Philox words, written independently of csrc (rng.h's layout)."""
    words = np.from_dlpack(_C.random("u32", seed, stream, 0, n + (-n) % 4)).astype(np.float64)
    u = (words + 0.5) / 4294967296.0
    u1, u2 = u[0::2], u[1::2]
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.empty_like(u)
    z[0::2] = r * np.cos(2 * np.pi * u2)
    z[1::2] = r * np.sin(2 * np.pi * u2)
    return z[:n]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_shared_philox_normals_match_an_independent_box_muller(dtype):
    # rsm_philox_normals4 (shared with the CUDA kernel) is the CPU's normal stream
    n, seed, stream = 1003, 11, int(_C.stream_id(3, 5, 0))
    ref = philox_normals_numpy(seed, stream, n)
    got = np.from_dlpack(_C.random("normal", seed, stream, 0, n, dtype))
    tol = 1e-14 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(got, ref.astype(dtype), rtol=tol, atol=tol)
    # an offset is a window of the same stream
    part = np.from_dlpack(_C.random("normal", seed, stream, 5, 17, dtype))
    assert np.array_equal(part, got[5:22])


def test_path_coefs_match_coef():
    for path in (rsm.FlowPath(), rsm.VPPath(), rsm.VPPath(schedule="cosine")):
        t = np.linspace(1e-3, 1.0, 9)
        rows = np.from_dlpack(path._core.coefs(t))
        for i, ti in enumerate(t):
            c = path._core.coef(float(ti))
            assert list(rows[i]) == [c["alpha"], c["sigma"], c["dalpha"], c["dsigma"], c["alpha_bar"]]
        assert path._core.native_param == (1 if path.kind == "flow" else 0)
    with pytest.raises(ValueError):
        rsm.FlowPath()._core.coefs(np.array([1.5]))


def test_step_coefficients_carry_the_heun_velocity():
    path = rsm.FlowPath()
    ts = rsm.sampling.time_grid(4, path)
    coefs = _C.step_coefficients(path._core, "heun", np.asarray(ts, np.float64), 0.7, 0.0, 0, 4)
    for c in coefs:
        # flow velocity is the output itself: v = 0 x + 1 u, at t and at t_next
        assert c["heun"] and (c["v_x"], c["v_u"], c["v_x_next"], c["v_u_next"]) == (0, 1, 0, 1)
    model = rsm.MLP(2, 16, 1, seed=2, temb_dim=8)
    np.from_dlpack(model.params)[...] = np.random.default_rng(0).normal(
        size=model.num_params).astype(np.float32) * 0.3
    x0 = np.random.default_rng(1).normal(size=(5, 2)).astype(np.float32)
    tr = rsm.sample(model, 5, path, sampler="heun", ts=ts, x_init=x0, return_trajectory=True)
    # the host coefficients the device sampler uses reproduce the CPU Heun step
    x = x0.astype(np.float64)
    for i, c in enumerate(coefs):
        u = np.from_dlpack(model(x.astype(np.float32), np.full(5, c["t"], np.float32))).astype(np.float64)
        xe = x - c["dt"] * (c["v_x"] * x + c["v_u"] * u)
        u2 = np.from_dlpack(model(xe.astype(np.float32), np.full(5, c["t_next"], np.float32))).astype(np.float64)
        x = x - c["dt"] * 0.5 * ((c["v_x"] * x + c["v_u"] * u) + (c["v_x_next"] * xe + c["v_u_next"] * u2))
        np.testing.assert_allclose(tr.xs[i + 1], x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("path", [rsm.FlowPath(), rsm.VPPath()], ids=["flow", "vp"])
def test_pretrain_batch_reconstruction_matches_the_cpu(path):
    """rsm.cuda.pretrain draws each batch's indices and times on the host from the CPU's Philox
    streams and the path coefficients from PathCore.coefs; the loss of that batch under the CPU
    model equals the CPU pretraining's first-step loss (float64: to rounding)."""
    dim, B, seed = 2, 32, 7
    data = np.random.default_rng(3).normal(size=(100, dim))
    model = rsm.MLP(dim, 16, 2, seed=1, temb_dim=8, dtype="float64")
    ref = model.copy()
    hist = rsm.pretrain(ref, data, path, steps=1, batch_size=B, lr=1e-3, seed=seed, progress=False)
    core = path._core
    t_min = 0.0 if core.kind == "flow" else 1e-3
    words = np.from_dlpack(_C.random("u32", seed, int(_C.stream_id(4, 0, 0)), 0, B))
    index = ((words.astype(np.uint64) * np.uint64(len(data))) >> np.uint64(32)).astype(np.int64)
    u = np.from_dlpack(_C.random("uniform", seed, int(_C.stream_id(5, 0, 0)), 0, B, "float64"))
    t = t_min + (1.0 - t_min) * u
    c = np.from_dlpack(core.coefs(t))
    eps = np.from_dlpack(_C.random("normal", seed, int(_C.stream_id(6, 0, 0)), 0, B * dim,
                                   "float64")).reshape(B, dim)
    x0 = data[index]
    xt = c[:, :1] * x0 + c[:, 1:2] * eps
    target = c[:, 2:3] * x0 + c[:, 3:4] * eps if core.native_param == 1 else eps
    pred = np.from_dlpack(model(xt, t))
    loss = np.mean((pred - target) ** 2)
    np.testing.assert_allclose(loss, hist.column("loss")[0], rtol=1e-12)
