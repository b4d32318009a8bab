/* backend.h: the one table of what the C loops (sampler, rollout, update, pretraining, the
 * MLP / DiT / Guided forward and backward) ask of a device. The loops are written once over
 * this table; csrc/backend_cpu.c implements it with the CPU loops of csrc/ops/ and the BLAS of
 * blas.h, kernels/backend_cuda.cu with CUDA kernels and cuBLAS.
 *
 * CONTRACT (every backend)
 * - Memory. Every array an op or a loop entry point reads or writes lives on the backend's
 *   device (for the CPU: host memory). Buffers a loop needs for itself come from be->alloc and go
 *   back through be->free; the caller owns what it passes in (parameters, gradients, trajectory
 *   outputs, optimizer moments) and the loop never frees it. What stays on the host whatever the
 *   backend: sizes, the per-row coefficient structs (rsm_objective_row), rsm_step_coef, configs
 *   (rsm_path, rsm_sampler_config, rsm_pretrain_config, rsm_objective_config), statistics
 *   (rsm_objective_stats, the double returned by a reduction) and integer counters (rows, nfe).
 *   be->copy with RSM_COPY_H2D / _D2H moves arrays across; on the CPU all three kinds are memcpy.
 * - Stream. Every op of one table is queued, in call order, on be->stream (NULL on the CPU: ops
 *   run synchronously in the calling thread). An op that returns a host value (a reduction's
 *   double, rsm_status of objective / adamw_step) waits for the work before it. A loop reads
 *   device memory on the host only through be->copy (D2H waits for the stream).
 * - Errors. Ops return void where they cannot fail on the CPU; a device backend records its first
 *   failure (launch, cuBLAS) and be->check returns it (then clears it); a loop calls be->check
 *   once at the end of each entry point (and of each step of a multi-step loop) so it returns an
 *   rsm_status, never aborts. be->alloc returns NULL on failure (the loop reports RSM_ERR_MEMORY).
 * - Determinism. Every op's result is a function of its inputs only: bitwise the same whatever
 *   the thread count (the CPU splits only over independent elements, static schedules) and from
 *   run to run; every reduction (bias_grad, sum_sq_diff, mse_seed, the objective's sums, the
 *   AdamW norm, the attention/layernorm row sums) accumulates in ONE fixed order, which a backend
 *   documents (the CPU: row-major sequential, double accumulators where the CPU loops use them).
 *   Philox fills give element `offset + i` of stream (seed, stream) on every backend (rng.h), so
 *   the same seed gives the same noises on every device.
 * - Precision. The precision-specific ops come from ONE list, RSM_BACKEND_OPS(X, R) below,
 *   written over R = real_t and instantiated twice (the scheme of real_api.h / real.h): the
 *   structs rsm_backend_ops_f32 (R = float) and rsm_backend_ops_f64 (R = double), reached as
 *   be->f32 / be->f64. Inside a *_real.c template RSM_OP(be, name, args...) calls the op of the
 *   template's precision: RSM_OP(be, gemm, ...) is be->f32->gemm(be, ...) in precision_f32.c.
 * - NULL backend. A loop or model whose backend pointer is NULL uses rsm_backend_cpu
 *   (rsm_backend_or_cpu), so models built before the table existed keep working unchanged.
 * - Completeness. A backend fills every entry (no NULL); tests/test_backend.py checks the CPU's.
 *
 * Accumulation rule of the ops (as csrc/ops/linear_real.c): parameter gradients (dweight, dbias,
 * dshift, dscale, dgate) are ACCUMULATED (+=); input gradients are OVERWRITTEN (=) unless an
 * `accumulate` argument says otherwise.
 */
#ifndef RSM_BACKEND_H
#define RSM_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "objective.h"
#include "optim.h"
#include "path.h"
#include "real_api.h"
#include "sampler.h"
#include "status.h"
#include "train/pretrain.h"

#ifdef __cplusplus
extern "C" { /* kernels/backend_cuda.cu implements this header */
#endif

typedef enum rsm_device_kind {
    RSM_DEVICE_CPU = 0,
    RSM_DEVICE_CUDA = 1,
} rsm_device_kind;

/* numbered as rsm_cuda_memcpy's kind (kernels/rsm_cuda.h) */
typedef enum rsm_copy_kind {
    RSM_COPY_H2D = 0, /* host -> device */
    RSM_COPY_D2H = 1, /* device -> host (waits for the stream) */
    RSM_COPY_D2D = 2, /* device -> device */
} rsm_copy_kind;

typedef struct rsm_backend rsm_backend;

/* The precision-specific ops, one entry each: X(return type, name, (parameters, R = real_t)).
 * Every op takes the backend first (its stream and error state). Shapes are row-major; n rows. */
#define RSM_BACKEND_OPS(X, R)                                                                      \
    /* ---- dense algebra ---------------------------------------------------------------------- */ \
    /* C[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta C; op(X) = X or X^T (trans_*); lda/ldb/ldc  \
     * the row strides of the STORED matrices (CBLAS row-major). CPU: blas.h (OpenBLAS or the     \
     * built-in kernel, as chosen by rsm_blas_use_builtin). */                                    \
    X(void, gemm,                                                                                  \
      (const rsm_backend *be, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, R alpha,  \
       const R *a, int64_t lda, const R *b, int64_t ldb, R beta, R *c, int64_t ldc))               \
    /* y[n, w] = x[n, w] + bias[w] (x non-NULL), else bias[w] broadcast (bias NULL: 0). */        \
    X(void, bias_rows, (const rsm_backend *be, R *y, const R *x, const R *bias, int64_t n,         \
                        int64_t w))                                                                \
    /* dbias[w] += sum over rows of dy[n, w], rows in order 0..n-1. */                            \
    X(void, bias_grad, (const rsm_backend *be, R *dbias, const R *dy, int64_t n, int64_t w))       \
    /* y[n, w] += row[w] for every row (DiT positions). */                                        \
    X(void, add_row, (const rsm_backend *be, R *y, const R *row, int64_t n, int64_t w))            \
    /* y[i, :] += table[ids[i], :] (ids: integer-valued R, e.g. class ids). */                    \
    X(void, gather_add, (const rsm_backend *be, R *y, const R *table, const R *ids, int64_t n,     \
                         int64_t w))                                                               \
    /* table[ids[i], :] += dy[i, :], rows in order 0..n-1 (the backward of gather_add). */        \
    X(void, scatter_add, (const rsm_backend *be, R *table, const R *dy, const R *ids, int64_t n,   \
                          int64_t w))                                                              \
    /* dst[i, 0:cols] = src[i, 0:cols] with row strides ld_dst, ld_src (cols 0: nothing). */      \
    X(void, copy_cols, (const rsm_backend *be, R *dst, int64_t ld_dst, const R *src,               \
                        int64_t ld_src, int64_t rows, int64_t cols))                               \
    /* x[0:n] = (R)value. */                                                                      \
    X(void, fill, (const rsm_backend *be, R *x, int64_t n, double value))                          \
    /* dst row j k + c = src row j (c < k): each of `rows` rows of `width` repeated k times        \
     * (dst and src disjoint). */                                                                 \
    X(void, repeat_rows, (const rsm_backend *be, R *dst, const R *src, int64_t rows,               \
                          int64_t width, int64_t k))                                               \
    /* In place: row r -> rows r factor .. r factor + factor - 1 of the same buffer, which holds  \
     * n factor rows (branching). */                                                              \
    X(void, expand_rows, (const rsm_backend *be, R *rows, int64_t n, int64_t width,                \
                          int64_t factor))                                                         \
    /* ---- activations, elementwise over n values (dx may alias dy) -------------------------- */ \
    X(void, silu_forward, (const rsm_backend *be, R *y, const R *x, int64_t n))                    \
    X(void, silu_backward, (const rsm_backend *be, R *dx, const R *dy, const R *x, int64_t n))     \
    X(void, gelu_forward, (const rsm_backend *be, R *y, const R *x, int64_t n))                    \
    X(void, gelu_backward, (const rsm_backend *be, R *dx, const R *dy, const R *x, int64_t n))     \
    /* ---- time embedding ---------------------------------------------------------------------- \
     * out[i, 0:temb_dim] (row stride ld) = [sin(1000 t_i f_k), cos(1000 t_i f_k)], f_k =          \
     * 10000^(-k / half) (nn/time_embedding.h). */                                                \
    X(void, time_embedding, (const rsm_backend *be, R *out, int64_t ld, const R *t, int64_t n,     \
                             int64_t temb_dim))                                                    \
    /* ---- layernorm and adaLN (csrc/ops/layernorm_real.c: shapes and equations there) -------- */ \
    X(void, layernorm_forward, (const rsm_backend *be, R *xhat, R *rstd, const R *x, int64_t rows, \
                                int64_t w))                                                        \
    X(void, layernorm_backward, (const rsm_backend *be, R *dx, const R *dxhat, const R *xhat,      \
                                 const R *rstd, int64_t rows, int64_t w, int accumulate))          \
    X(void, modulate_forward, (const rsm_backend *be, R *y, const R *xhat, const R *shift,         \
                               const R *scale, int64_t ld, int64_t n, int64_t T, int64_t w))       \
    X(void, modulate_backward, (const rsm_backend *be, R *dxhat, R *dshift, R *dscale,             \
                                const R *dy, const R *xhat, const R *scale, int64_t ld, int64_t n, \
                                int64_t T, int64_t w))                                             \
    X(void, gated_residual_forward, (const rsm_backend *be, R *x, const R *a, const R *gate,       \
                                     int64_t ld, int64_t n, int64_t T, int64_t w))                 \
    X(void, gated_residual_backward, (const rsm_backend *be, R *da, R *dgate, const R *dx,         \
                                      const R *a, const R *gate, int64_t ld, int64_t n, int64_t T, \
                                      int64_t w))                                                  \
    /* ---- attention and patches (csrc/ops/attention_real.c) ---------------------------------- */ \
    X(void, attention_forward, (const rsm_backend *be, R *o, R *probs, const R *qkv, int64_t n,    \
                                int64_t T, int64_t w, int64_t heads))                              \
    X(void, attention_backward, (const rsm_backend *be, R *dqkv, R *dprobs, const R *dout,         \
                                 const R *qkv, const R *probs, int64_t n, int64_t T, int64_t w,    \
                                 int64_t heads))                                                   \
    X(void, patchify_forward, (const rsm_backend *be, R *tok, const R *x, int64_t n, int64_t C,    \
                               int64_t S, int64_t p))                                              \
    X(void, patchify_backward, (const rsm_backend *be, R *x, const R *tok, int64_t n, int64_t C,   \
                                int64_t S, int64_t p))                                             \
    /* ---- classifier-free guidance (nn/guided_real.c) ----------------------------------------- */ \
    X(void, guided_combine, (const rsm_backend *be, int64_t m, double scale, const R *u2, R *out)) \
    X(void, guided_split, (const rsm_backend *be, int64_t m, double scale, const R *dout, R *du2))  \
    X(void, guided_stack, (const rsm_backend *be, int64_t n, int64_t dim, int64_t cond_dim,        \
                           const R *null_cond, const R *x, const R *t, const R *cond, R *x2,       \
                           R *t2, R *cond2))                                                       \
    X(void, guided_sum_halves, (const rsm_backend *be, int64_t m, const R *dx2, R *dx))            \
    /* ---- random numbers (rng.h: Philox-4x32-10, the same stream on every backend) ------------ */ \
    /* out[i] = normal number offset + i of (seed, stream); uniforms in (0, 1). */                \
    X(void, fill_normal, (const rsm_backend *be, uint64_t seed, uint64_t stream, uint64_t offset,  \
                          int64_t n, R *out))                                                      \
    X(void, fill_uniform, (const rsm_backend *be, uint64_t seed, uint64_t stream,                  \
                           uint64_t offset, int64_t n, R *out))                                    \
    /* ---- the sampler step (ops/sampler_step.h), per element of n values ---------------------- */ \
    /* mean = A x + K u; x_next (may be NULL: mean only) = mean + std z when s->stochastic, else  \
     * mean, and then z = 0 (z may be NULL when x_next is). */                                    \
    X(void, sampler_step, (const rsm_backend *be, const rsm_step_coef *s, int64_t n, const R *x,   \
                           const R *u, R *z, R *mean, R *x_next))                                  \
    /* Heun predictor x_euler = x - dt v(x, t). */                                                \
    X(void, heun_predict, (const rsm_backend *be, const rsm_step_coef *s, int64_t n, const R *x,   \
                           const R *u, R *x_euler))                                                \
    /* Heun corrector: mean = x_next = x - dt (v(x, t) + v(x_euler, t')) / 2, z = 0. */          \
    X(void, heun_step, (const rsm_backend *be, const rsm_step_coef *s, int64_t n, const R *x,      \
                        const R *u, const R *x_euler, const R *u2, R *z, R *mean, R *x_next))      \
    /* log N(x_next; mean, std^2 I) of each of `rows` rows of `dim` (0 when not s->stochastic),   \
     * accumulated in double over d = 0..dim-1, rounded to R, written to log_prob[r repeat + k]  \
     * for k < repeat (the rows' copies after branching). */                                      \
    X(void, step_log_prob, (const rsm_backend *be, const rsm_step_coef *s, int64_t rows,           \
                            int64_t dim, const R *x_next, const R *mean, R *log_prob,              \
                            int64_t repeat))                                                       \
    /* ---- objective rows, losses, reductions -------------------------------------------------- */ \
    /* The RSM objective and its cotangent (objective.h, rsm_objective_f32/_f64): coef, stats,    \
     * log_ratio and active on the host; the arrays on the device. */                             \
    X(rsm_status, objective, (const rsm_backend *be, const rsm_objective_config *cfg, int64_t rows,\
                              int64_t dim, const rsm_objective_row *coef, const R *u,             \
                              const R *u_old, const R *u_ref, const R *psi, const R *noise,        \
                              R *cotangent, double *log_ratio, uint8_t *active,                    \
                              rsm_objective_stats *stats))                                         \
    /* sum over i < n of ((double)a[i] - (double)b[i])^2 (b NULL: of (double)a[i]^2), in the      \
     * backend's fixed order (CPU: i = 0..n-1). */                                                \
    X(double, sum_sq_diff, (const rsm_backend *be, int64_t n, const R *a, const R *b))             \
    /* The squared-error loss and its seed: returns sum ((double)(pred - target))^2 and sets      \
     * pred[i] = scale (pred[i] - target[i]) (the difference taken in R). */                     \
    X(double, mse_seed, (const rsm_backend *be, int64_t n, R *pred, const R *target, R scale))     \
    /* A pretraining batch from its draws (pretrain_real.c): t[i] from u_time[i] in [t_min, t_max],\
     * xt = alpha x0 + sigma eps, target = the path's native parameterization of (x0, eps),       \
     * cond[i] = data_cond[index[i]] or cfg->null_cond when u_drop[i] < cfg->cond_dropout        \
     * (C > 0; u_drop NULL: no dropout). index/u_time/u_drop on the device. */                    \
    X(void, pretrain_batch, (const rsm_backend *be, const rsm_path *path,                          \
                             const rsm_pretrain_config *cfg, int64_t n, int64_t D, int64_t C,      \
                             const R *data, const R *data_cond, const int64_t *index,              \
                             const double *u_time, const double *u_drop, const R *eps, R *t,       \
                             R *xt, R *target, R *cond))                                           \
    /* ---- AdamW (optim.h): clip, decay, moments, EMA; the moments opt->m/v/ema on the device -- */ \
    X(rsm_status, adamw_step, (const rsm_backend *be, rsm_adamw *opt, R *params, R *grads,         \
                               double lr, double *grad_norm))

/* The struct of one precision's ops: rsm_backend_ops_f32 / rsm_backend_ops_f64. */
#define RSM_BACKEND_OP_FIELD(ret, name, params) ret(*name) params;
typedef struct rsm_backend_ops_f32 {
    RSM_BACKEND_OPS(RSM_BACKEND_OP_FIELD, float)
} rsm_backend_ops_f32;
typedef struct rsm_backend_ops_f64 {
    RSM_BACKEND_OPS(RSM_BACKEND_OP_FIELD, double)
} rsm_backend_ops_f64;

struct rsm_backend {
    rsm_device_kind kind;
    int device;       /* the device ordinal (CUDA); 0 on the CPU */
    const char *name; /* "cpu", "cuda:0", ... */
    void *stream;     /* cudaStream_t on CUDA; NULL on the CPU */
    void *ctx;        /* the backend's own state (error slot, handles); NULL on the CPU */
    /* ---- memory (bytes; alloc returns NULL on failure, 64-byte aligned at least) ---------- */
    void *(*alloc)(const rsm_backend *be, size_t bytes);
    void (*free)(const rsm_backend *be, void *ptr); /* NULL: nothing */
    void (*memset_zero)(const rsm_backend *be, void *dst, size_t bytes);
    void (*copy)(const rsm_backend *be, void *dst, const void *src, size_t bytes,
                 rsm_copy_kind kind);
    /* ---- stream and errors ------------------------------------------------------------------ */
    rsm_status (*synchronize)(const rsm_backend *be); /* waits for the queued work */
    rsm_status (*check)(const rsm_backend *be);       /* the first recorded failure, cleared */
    /* ---- precision-independent fills (rng.h) ------------------------------------------------ */
    /* out[i] = uniform index in [0, bound) number offset + i of (seed, stream) (rsm_fill_index) */
    void (*fill_index)(const rsm_backend *be, uint64_t seed, uint64_t stream, uint64_t offset,
                       int64_t n, int64_t bound, int64_t *out);
    /* ---- the precision-specific ops --------------------------------------------------------- */
    const rsm_backend_ops_f32 *f32;
    const rsm_backend_ops_f64 *f64;
};

/* The CPU backend (backend_cpu.c): complete, constant, shared by every thread. */
extern const rsm_backend rsm_backend_cpu;
extern const rsm_backend_ops_f32 rsm_backend_cpu_ops_f32;
extern const rsm_backend_ops_f64 rsm_backend_cpu_ops_f64;

/* The ops of RSM_BACKEND_OPS by name (tests): their number, the i-th name, and the entries of
 * `be` that are NULL (top level and both precisions; their names, space-separated, in msg). */
int64_t rsm_backend_op_count(void);
const char *rsm_backend_op_name(int64_t i);
int64_t rsm_backend_missing(const rsm_backend *be, char *msg, size_t len);

/* rsm_backend_check_f32/_f64 (backend_check_real.c, list: real_api.h): the test hook comparing
 * every op of a table with the CPU loops bit for bit. */
RSM_DECLARE_REAL_API(RSM_API_BACKEND)

/* be, or the CPU backend when be is NULL. */
static inline const rsm_backend *
rsm_backend_or_cpu(const rsm_backend *be)
{
    return be ? be : &rsm_backend_cpu;
}

/* Inside a *_real.c template (RSM_REAL_BITS 32 or 64): the ops of the template's precision, and
 * one op called with the backend as its first argument. */
#define RSM_BACKEND_PICK_(be, bits) RSM_BACKEND_PICK2_(be, bits)
#define RSM_BACKEND_PICK2_(be, bits) ((be)->f##bits)
#define RSM_OPS(be) RSM_BACKEND_PICK_(be, RSM_REAL_BITS)
#define RSM_OP(be, name, ...) (RSM_OPS(be)->name((be), __VA_ARGS__))

/* Outside the templates (a dtype chosen at run time, arrays as void *): the op of that
 * precision, as RSM_REAL_CALL (real_api.h) picks rsm_<name>_f32 / _f64. */
#define RSM_BACKEND_CALL(be, dtype, name, ...)                                                     \
    ((dtype) == RSM_F32 ? (be)->f32->name((be), __VA_ARGS__) : (be)->f64->name((be), __VA_ARGS__))

/* Allocation helpers for the loops: bytes = count * size (the caller has bounded count). */
static inline void *
rsm_backend_alloc(const rsm_backend *be, size_t count, size_t size)
{
    return be->alloc(be, count * size);
}

static inline void
rsm_backend_free(const rsm_backend *be, void *ptr)
{
    if (ptr) be->free(be, ptr);
}

#ifdef __cplusplus
}
#endif

#endif /* RSM_BACKEND_H */
