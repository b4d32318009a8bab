/* backend_cuda.h: the CUDA implementation of the backend table (csrc/backend.h), for the C loops.
 *
 * The loops (sampler, rollout, update, pretraining, model forward/backward) live in rsm._C; this
 * table lives in rsm._cuda (kernels/backend_cuda.cu, linked with the CUDA runtime and cuBLAS).
 * rsm._cuda hands a backend to rsm._C as a capsule named RSM_CUDA_BACKEND_CAPSULE holding a
 * `const rsm_backend *` (rsm.cuda.backend_table(device)); backends live for the process.
 *
 * The table needs three things only rsm._C has: the thread-local error message of the C core
 * (rsm_fail, status.c: a device failure must reach the loop's caller as that loop's message) and
 * the path schedules (path.c: the one definition of alpha_t, sigma_t). rsm._cuda passes them in
 * as rsm_cuda_host_api, taken from rsm._C's table (csrc/python/dlpack_api.h).
 *
 * Every op is queued on rsm's stream of the device (rsm_cuda_stream), in call order; failures
 * are recorded (the first one) and returned by be->check as RSM_ERR_DEVICE with the message.
 * Reductions (bias_grad, scatter_add, the adaLN parameter sums, sum_sq_diff, mse_seed, the
 * AdamW norm, the objective's totals) add in a fixed order that does not depend on scheduling:
 * column sums run over rows 0..n-1 in one thread (the CPU's order, so equal bitwise where no
 * contraction differs); whole-array sums are per-block tree sums over a fixed grid, then one
 * block over the partials; row sums (layernorm, attention softmax, log-probs) are warp trees.
 * Matrix products are cuBLAS in IEEE float32 / float64 by default; rsm_cuda_set_matmul allows
 * TF32 / BF16 tensor-core float32 products with float32 accumulation.
 */
#ifndef RSM_BACKEND_CUDA_H
#define RSM_BACKEND_CUDA_H

#include "backend.h"
#include "path.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RSM_CUDA_BACKEND_CAPSULE "rsm._cuda.backend"

typedef struct rsm_cuda_host_api {
    rsm_status (*fail)(rsm_status status, const char *fmt, ...); /* rsm._C's rsm_fail */
    rsm_path_coef (*path_coef_at)(const rsm_path *path, double t);
    rsm_param (*path_native_param)(const rsm_path *path);
} rsm_cuda_host_api;

/* The CUDA backend of `device` (created on first use: rsm's stream, a cuBLAS handle, a reduction
 * buffer), or nonzero with rsm_cuda_error() saying why. `host` is copied on first use. */
int rsm_cuda_backend_get(int device, const rsm_cuda_host_api *host, const rsm_backend **out);

/* One argument of rsm_cuda_backend_call: a pointer (device array, or host memory for the
 * structs and host outputs an op takes), an integer, or a real. */
typedef struct rsm_cuda_arg {
    void *ptr;
    int64_t i;
    double d;
} rsm_cuda_arg;

/* Call op `name` of backend.h's list in precision `dtype` (0 float32, 1 float64) with args[0..n)
 * after `be` (each converted to the parameter's type: pointers from .ptr, integers from .i,
 * reals from .d). *ret receives a double-returning op's value or an rsm_status op's status.
 * Returns 0, or nonzero (unknown op, wrong argument count) with rsm_cuda_error() saying why.
 * A test hook: the device parity tests call every op through it (tests/test_cuda_device.py). */
int rsm_cuda_backend_call(const rsm_backend *be, int dtype, const char *name,
                          const rsm_cuda_arg *args, int n, double *ret);

#ifdef __cplusplus
}
#endif

#endif /* RSM_BACKEND_CUDA_H */
