/* rsm_cuda.h: the C interface of rsm's CUDA code (the .cu files of kernels/), used by rsm._cuda's binding
 * (csrc/python/cuda_module.c). Everything here has C linkage and never aborts: a function returns
 * 0 on success or a nonzero code, and rsm_cuda_error() then says what failed (thread-local).
 *
 * Conventions: `dtype` is 0 for float32 and 1 for float64 (rsm_dtype's RSM_F32 / RSM_F64);
 * pointers are device pointers unless named *_host; `stream` is a cudaStream_t passed as void *
 * (NULL: rsm's own stream of the current device, see rsm_cuda_stream). Arrays are C-contiguous.
 * Every kernel's per-element math comes from the csrc/ headers shared with the CPU loops
 * (RSM_HOST_DEVICE): ops/philox.h, ops/activation.h, ops/sampler_step.h, ops/objective_elem.h,
 * ops/adamw.h, path.h; the ones over real_t are templates the kernels instantiate for their
 * `real` (the precision scheme: csrc/real.h).
 */
#ifndef RSM_CUDA_H
#define RSM_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- discovery, errors ---------------------------------------------------------------------- */

/* Number of visible CUDA devices in *count. When there is none, or the driver is missing or too
 * old ("no device", "insufficient driver"), *count is 0 and `reason` (len bytes, NUL-terminated)
 * says why; otherwise reason is "". Returns the cudaError_t of cudaGetDeviceCount (0: success). */
int rsm_cuda_device_count(int *count, char *reason, size_t len);

/* CUDA runtime version rsm was built with and links (statically), e.g. 13000 for 13.0. */
int rsm_cuda_runtime_version(void);

/* The message of the last failure on this thread ("" if none). */
const char *rsm_cuda_error(void);

/* ---- streams and copies --------------------------------------------------------------------- */

/* cudaSetDevice for the calling thread (kernels launch on the current device). */
int rsm_cuda_set_device(int device);
/* rsm's stream on `device` (created non-blocking on first use, kept for the process). */
int rsm_cuda_stream(int device, void **stream);
/* Make `consumer` wait for the work queued so far on `producer` (an event, no host sync). Either
 * may be the legacy default stream (void *)1 or per-thread (void *)2 as DLPack numbers them. */
int rsm_cuda_stream_wait(int device, void *producer, void *consumer);
int rsm_cuda_stream_synchronize(int device, void *stream);
/* An event recorded on `stream` now; rsm_cuda_event_done says whether it completed (1), not yet
 * (0), or failed (< 0); rsm_cuda_event_destroy frees it. For deferred releases of borrowed
 * memory (cuda_module.c). */
int rsm_cuda_event_record(int device, void *stream, void **event);
int rsm_cuda_event_done(void *event);
void rsm_cuda_event_destroy(void *event);
/* kind: 0 host->device (pageable: staged before the return), 1 device->host (waits for the copy
 * and the work queued before it), 2 device->device; ordered on `stream`. */
int rsm_cuda_memcpy(int device, void *dst, const void *src, size_t bytes, int kind, void *stream);
int rsm_cuda_memset_zero(int device, void *dst, size_t bytes, void *stream);

/* ---- the caching allocator (kernels/alloc.cu) ----------------------------------------------- */

typedef struct rsm_cuda_alloc_stats {
    uint64_t allocated_bytes;  /* in blocks handed out now (rounded sizes) */
    uint64_t reserved_bytes;   /* obtained from cudaMalloc and not released */
    uint64_t peak_allocated_bytes;
    uint64_t peak_reserved_bytes;
    uint64_t num_allocs;       /* rsm_cuda_alloc calls */
    uint64_t num_cache_hits;   /* of them served from a free list */
    uint64_t num_device_mallocs; /* cudaMalloc calls */
    uint64_t num_frees;
} rsm_cuda_alloc_stats;

/* A block of at least `bytes` (256-byte aligned) on `device`, for use on rsm's stream of that
 * device: freed blocks go to per-device size-class free lists and are reused without cudaMalloc
 * (stream-ordered reuse, safe because all rsm work on a device is on one stream). */
int rsm_cuda_alloc(int device, size_t bytes, void **out);
void rsm_cuda_free(int device, void *ptr);
int rsm_cuda_alloc_stats_get(int device, rsm_cuda_alloc_stats *out);
/* Release every cached free block of `device` to the driver (after a stream sync). */
int rsm_cuda_empty_cache(int device);

/* ---- math modes ----------------------------------------------------------------------------- */

/* The math of float32 matrix products (cuBLAS), one process-wide mode: IEEE (the default: exact
 * float32 products, for CPU parity), TF32 tensor cores, or BF16 tensor cores (inputs rounded to
 * bfloat16); float32 accumulation in all three. float64 products are always IEEE. The MLP kernels
 * of mlp.cu honour IEEE / TF32 (BF16 runs them in IEEE); the backend table all three. */
enum { RSM_CUDA_MATMUL_IEEE = 0, RSM_CUDA_MATMUL_TF32 = 1, RSM_CUDA_MATMUL_BF16 = 2 };
int rsm_cuda_set_matmul(int mode); /* 0, or nonzero (rsm_cuda_error) for an unknown mode */
int rsm_cuda_get_matmul(void);

/* ---- random numbers (kernels/elementwise.cu) ------------------------------------------------ */

/* out[i] = normal offset + i of (seed, stream): the same Philox4x32-10 words as the CPU (ops/philox.h);
 * Box-Muller in double on both (the libm and CUDA log/sin/cos may differ in the last bit). */
int rsm_cuda_fill_normal(int dtype, uint64_t seed, uint64_t stream_id, uint64_t offset, int64_t n,
                         void *out, void *stream);
int rsm_cuda_fill_u32(uint64_t seed, uint64_t stream_id, uint64_t offset, int64_t n,
                      uint32_t *out, void *stream);

/* ---- elementwise ---------------------------------------------------------------------------- */

int rsm_cuda_silu_forward(int dtype, int64_t n, const void *x, void *y, void *stream);
int rsm_cuda_silu_backward(int dtype, int64_t n, const void *dy, const void *x, void *dx,
                           void *stream);
/* ema <- decay ema + (1 - decay) params */
int rsm_cuda_ema(int dtype, int64_t n, double decay, void *ema, const void *params, void *stream);

/* ---- the MLP (kernels/mlp.cu), layout of csrc/nn/mlp.h -------------------------------------- */

typedef struct rsm_cuda_mlp {
    int64_t dim, hidden, depth, cond_dim, temb_dim; /* rsm_mlp_config */
    int64_t in_dim, in_w, in_b, block0, block_size, out_w, out_b, num_params; /* rsm_mlp_layout */
} rsm_cuda_mlp;

/* Elements of the saved activations for `rows` rows (inp, h, pre, act, feat as mlp_real.c) and
 * of the backward scratch. */
int64_t rsm_cuda_mlp_acts_numel(const rsm_cuda_mlp *m, int64_t rows);
int64_t rsm_cuda_mlp_scratch_numel(const rsm_cuda_mlp *m, int64_t rows);
/* out[n, dim] = mlp(x[n, dim], t[n], cond[n, cond_dim] or NULL); acts receives the activations. */
int rsm_cuda_mlp_forward(int dtype, const rsm_cuda_mlp *m, const void *params, int64_t n,
                         const void *x, const void *t, const void *cond, void *out, void *acts,
                         void *stream);
/* dparams += d/dparams <dout, out> (NULL: skip), dx = d/dx (NULL: skip), from the activations of
 * the last forward of these n rows. */
int rsm_cuda_mlp_backward(int dtype, const rsm_cuda_mlp *m, const void *params, int64_t n,
                          const void *acts, void *scratch, const void *dout, void *dparams,
                          void *dx, void *stream);

/* ---- the sampler step (kernels/sampler.cu) -------------------------------------------------- */

/* One Gaussian step for rows x dim values, fused: z from Philox (seed, stream_id) element k of the
 * step when stochastic (else 0), mean = A x + K u, x_next = mean + std z, and log_prob[r] (when
 * not NULL; 0 when deterministic). mean / noise may be NULL. */
int rsm_cuda_sampler_step(int dtype, double A, double K, double std, int stochastic, uint64_t seed,
                          uint64_t stream_id, int64_t rows, int64_t dim, const void *x,
                          const void *u, void *x_next, void *mean, void *noise, void *log_prob,
                          void *stream);
/* log_prob[r] = log N(x_next; A x + K u, std^2 I) (the policy-ratio primitive); mean may be NULL. */
int rsm_cuda_transition_log_prob(int dtype, double A, double K, double std, int64_t rows,
                                 int64_t dim, const void *x, const void *u, const void *x_next,
                                 void *log_prob, void *mean, void *stream);
/* Heun: x_euler = x - dt (v_x x + v_u u); and the corrected mean (= next state). */
int rsm_cuda_heun_predict(int dtype, double dt, double v_x, double v_u, int64_t n, const void *x,
                          const void *u, void *x_euler, void *stream);
int rsm_cuda_heun_mean(int dtype, double dt, double v_x, double v_u, double v_x_next,
                       double v_u_next, int64_t n, const void *x, const void *u,
                       const void *x_euler, const void *u2, void *x_next, void *stream);

/* ---- pretraining batch and loss (kernels/pretrain.cu) ---------------------------------------- */

/* Row i of the batch: x0 = data[index[i]], eps = normal (seed, noise_stream) element i D + d,
 * xt = alpha_i x0 + sigma_i eps and target = x0 / eps expressed as `target_param` (an rsm_param)
 * with the row's path coefficients `coefs` (rsm_path_coef [B], computed on the host by
 * rsm_path_coef_at: the one definition of the schedules); cond rows gathered when C > 0. */
int rsm_cuda_pretrain_batch(int dtype, int64_t B, int64_t D, int64_t C, const void *data,
                            const void *cond_data, const int64_t *index, const void *coefs,
                            int target_param, uint64_t seed, uint64_t noise_stream, void *xt,
                            void *target, void *cond, void *stream);
/* pred <- 2 (pred - target) / n (the MSE's cotangent); sq_out[0] (device double) = the sum of
 * (pred - target)^2. sq_out must hold 1 + 256 doubles (partial sums, fixed order). */
int rsm_cuda_mse_cotangent(int dtype, int64_t n, void *pred, const void *target, double *sq_out,
                           void *stream);

/* ---- the RSM objective (kernels/objective.cu), csrc/objective.h ------------------------------ */

/* form, anchor_old, linear_only, mean_over_dims as rsm_objective_config; coef [rows] device array
 * of rsm_objective_row. Writes cotangent [rows, dim] and per row: row_loss (scale * l_r, double),
 * kl_row (double), log_ratio (double), active (uint8). Totals are summed by the caller. */
int rsm_cuda_objective(int dtype, int form, int anchor_old, int linear_only, int mean_over_dims,
                       double normalizer, int64_t rows, int64_t dim, const void *coef,
                       const void *u, const void *u_old, const void *u_ref, const void *psi,
                       const void *noise, void *cotangent, double *row_loss, double *kl_row,
                       double *log_ratio, uint8_t *active, void *stream);

/* ---- AdamW (kernels/optim.cu), csrc/optim.h --------------------------------------------------- */

/* norm_out[0] (device double) = |grads|_2 (a fixed-order two-pass reduction: deterministic). */
int rsm_cuda_grad_norm(int dtype, int64_t n, const void *grads, double *norm_out, double *work,
                       void *stream);
/* Elements of `work` rsm_cuda_grad_norm needs. */
int64_t rsm_cuda_grad_norm_work(int64_t n);
/* One AdamW update from the device norm (clip as clip_grad_norm_; a non-finite norm changes
 * nothing). c: lr / bc1, 1 / sqrt(bc2), 1 - lr wd, b1, b2, eps, 1 - b1, 1 - b2, ema_decay,
 * 1 - ema_decay (the host's doubles, rounded per dtype as the CPU does); max_grad_norm <= 0: no
 * clipping. ema may be NULL. */
int rsm_cuda_adamw_update(int dtype, int64_t n, const double c[10], double max_grad_norm,
                          const double *norm, void *params, void *grads, void *m, void *v,
                          void *ema, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* RSM_CUDA_H */
