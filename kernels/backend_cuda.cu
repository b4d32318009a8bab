/* backend_cuda.cu: the backend table of csrc/backend.h on a CUDA device (interface and ordering
 * rules: kernels/backend_cuda.h). Element-wise ops are one thread per element in grid-stride
 * loops over the per-element bodies the CPU loops use (csrc/ops/philox.h, activation.h, gelu.h,
 * sampler_step.h, guidance.h, nn/time_embedding.h, path.h), instantiated for R = float / double;
 * matrix products (the linear layers, the attention products, per head, batched over images)
 * are cuBLAS; row reductions are one warp per row; the objective and AdamW reuse the fused
 * kernels of objective.cu / optim.cu.
 *
 * Status: compiled (zero warnings, sm_80 / sm_90 + PTX) and NOT YET RUN ON A GPU: the parity of
 * every op with the CPU table is tests/test_cuda_device.py, run by benchmarks/gpu_session.sh.
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "common.cuh"

#include "backend_cuda.h"
#include "nn/time_embedding.h"
#include "ops/activation.h"
#include "ops/gelu.h"
#include "ops/guidance.h"
#include "ops/philox.h"
#include "ops/real_math.h"
#include "ops/sampler_step.h"

namespace {

using rsm_cuda::grid_for;
using rsm_cuda::kRowsPerBlock;
using rsm_cuda::kThreads;
using rsm_cuda::kWarp;
using rsm_cuda::warp_sum;

constexpr int kMaxDevices = 64;
/* Blocks of the first pass of a whole-array sum: fixed, so the partials (and their order) do not
 * depend on anything but n. */
constexpr int kPartials = 1024;
constexpr double kLayernormEps = 1e-6; /* csrc/ops/layernorm_real.c's RSM_LAYERNORM_EPS */

/* The state behind be->ctx. */
struct Ctx {
    int device = 0;
    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;
    rsm_cuda_host_api host{};
    std::mutex mutex;       /* the error slot and the reduction buffer */
    int failed = 0;
    char message[512] = {0};
    double *partials = nullptr; /* kPartials + 1 doubles on the device */
};

struct Entry {
    rsm_backend be;
    Ctx ctx;
    char name[16];
};

Entry *g_backends[kMaxDevices];
std::mutex g_create;

inline Ctx *
ctx_of(const rsm_backend *be)
{
    return static_cast<Ctx *>(be->ctx);
}

/* Record the first failure of the backend (later ones are consequences). */
void
record(const rsm_backend *be, const char *what, const char *detail)
{
    Ctx *c = ctx_of(be);
    std::lock_guard<std::mutex> lock(c->mutex);
    if (c->failed) return;
    c->failed = 1;
    std::snprintf(c->message, sizeof(c->message), "%s on %s: %s", what, be->name, detail);
}

inline bool
ok_cuda(const rsm_backend *be, cudaError_t err, const char *what)
{
    if (err == cudaSuccess) return true;
    char detail[256];
    std::snprintf(detail, sizeof(detail), "%s (%s)", cudaGetErrorString(err), cudaGetErrorName(err));
    (void)cudaGetLastError();
    record(be, what, detail);
    return false;
}

inline bool
ok_blas(const rsm_backend *be, cublasStatus_t st, const char *what)
{
    if (st == CUBLAS_STATUS_SUCCESS) return true;
    char detail[64];
    std::snprintf(detail, sizeof(detail), "cuBLAS status %d", (int)st);
    record(be, what, detail);
    return false;
}

/* Ops run on the backend's device from whichever host thread calls them. */
inline bool
use(const rsm_backend *be)
{
    int current = -1;
    if (cudaGetDevice(&current) == cudaSuccess && current == be->device) return true;
    return ok_cuda(be, cudaSetDevice(be->device), "cudaSetDevice");
}

inline cudaStream_t
stream_of(const rsm_backend *be)
{
    return static_cast<cudaStream_t>(be->stream);
}

/* ---- launch helpers --------------------------------------------------------------------------- */

template <typename F>
__global__ void
each_kernel(int64_t n, F f)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        f(i);
}

/* f(i) for i in [0, n), one thread per index. */
template <typename F>
void
each(const rsm_backend *be, int64_t n, F f, const char *what)
{
    if (n <= 0 || !use(be)) return;
    each_kernel<<<grid_for(n), kThreads, 0, stream_of(be)>>>(n, f);
    ok_cuda(be, cudaGetLastError(), what);
}

template <typename F>
__global__ void
rows_kernel(int64_t rows, F f)
{
    const int lane = threadIdx.x % kWarp;
    const int64_t warps = (int64_t)gridDim.x * kRowsPerBlock;
    for (int64_t r = blockIdx.x * (int64_t)kRowsPerBlock + threadIdx.x / kWarp; r < rows;
         r += warps)
        f(r, lane);
}

/* f(r, lane) for each row r, one warp per row (lanes stride over the row; warp_sum reduces). */
template <typename F>
void
each_row(const rsm_backend *be, int64_t rows, F f, const char *what)
{
    if (rows <= 0 || !use(be)) return;
    rows_kernel<<<grid_for(rows, kRowsPerBlock), kThreads, 0, stream_of(be)>>>(rows, f);
    ok_cuda(be, cudaGetLastError(), what);
}

/* Whole-array sums: pass 1, block b sums term(i) over its grid-stride indices (a fixed grid) in
 * a fixed tree; pass 2, one block sums the partials. The result stays on the device. */
template <typename F>
__global__ void
sum_pass1(int64_t n, F term, double *partials)
{
    double acc = 0.0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        acc += term(i);
    double total = rsm_cuda::block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

__global__ void
sum_pass2(int parts, const double *partials, double *out)
{
    double total = rsm_cuda::sum_partials(parts, partials);
    if (threadIdx.x == 0) *out = total;
}

/* sum over i < n of term(i) (a double), returned to the host (waits for the stream). term may
 * also write (mse_seed); it is called once per index. */
template <typename F>
double
sum_of(const rsm_backend *be, int64_t n, F term, const char *what)
{
    if (n <= 0 || !use(be)) return 0.0;
    Ctx *c = ctx_of(be);
    std::lock_guard<std::mutex> lock(c->mutex); /* one user of the partials at a time */
    const unsigned parts = grid_for(n) < (unsigned)kPartials ? grid_for(n) : (unsigned)kPartials;
    sum_pass1<<<parts, kThreads, 0, stream_of(be)>>>(n, term, c->partials);
    sum_pass2<<<1, kThreads, 0, stream_of(be)>>>((int)parts, c->partials, c->partials + kPartials);
    double result = 0.0;
    cudaError_t err = cudaGetLastError();
    if (err == cudaSuccess)
        err = cudaMemcpyAsync(&result, c->partials + kPartials, sizeof(double),
                              cudaMemcpyDeviceToHost, stream_of(be));
    if (err == cudaSuccess) err = cudaStreamSynchronize(stream_of(be));
    if (err != cudaSuccess) {
        /* record() takes the mutex: note the failure after releasing it */
        char detail[256];
        std::snprintf(detail, sizeof(detail), "%s (%s)", cudaGetErrorString(err),
                      cudaGetErrorName(err));
        (void)cudaGetLastError();
        if (!c->failed) {
            c->failed = 1;
            std::snprintf(c->message, sizeof(c->message), "%s on %s: %s", what, be->name, detail);
        }
        return std::numeric_limits<double>::quiet_NaN();
    }
    return result;
}

/* Device scratch from the caching allocator, released at scope exit (stream-ordered reuse). */
struct Scratch {
    const rsm_backend *be;
    void *ptr = nullptr;
    Scratch(const rsm_backend *b, size_t bytes) : be(b)
    {
        if (bytes) ptr = be->alloc(be, bytes);
    }
    ~Scratch()
    {
        if (ptr) be->free(be, ptr);
    }
    Scratch(const Scratch &) = delete;
    Scratch &operator=(const Scratch &) = delete;
};

bool
to_host(const rsm_backend *be, void *dst, const void *src, size_t bytes, const char *what)
{
    if (bytes == 0) return true;
    cudaError_t err = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_of(be));
    if (err == cudaSuccess) err = cudaStreamSynchronize(stream_of(be));
    return ok_cuda(be, err, what);
}

bool
to_device(const rsm_backend *be, void *dst, const void *src, size_t bytes, const char *what)
{
    if (bytes == 0) return true;
    /* pageable host memory is staged before cudaMemcpyAsync returns: src may go at once */
    return ok_cuda(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_of(be)),
                   what);
}

template <typename R>
constexpr int kDtype = sizeof(R) == 4 ? 0 : 1; /* rsm_cuda.h's dtype codes (RSM_F32, RSM_F64) */

/* ---- cuBLAS --------------------------------------------------------------------------------- */

/* Row-major C[m, n] = alpha op(A) op(B) + beta C for `batch` matrices strided by sa, sb, sc
 * elements: as column-major C^T = op(B)^T op(A)^T, i.e. cuBLAS with the operands swapped. */
template <typename R>
void
gemm_batched(const rsm_backend *be, int ta, int tb, int64_t m, int64_t n, int64_t k, R alpha,
             const R *a, int64_t lda, int64_t sa, const R *b, int64_t ldb, int64_t sb, R beta,
             R *c, int64_t ldc, int64_t sc, int64_t batch)
{
    if (m <= 0 || n <= 0 || batch <= 0 || !use(be)) return;
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX || lda > INT_MAX || ldb > INT_MAX ||
        ldc > INT_MAX || batch > INT_MAX) {
        record(be, "gemm", "a dimension is above INT_MAX (cuBLAS's int sizes)");
        return;
    }
    cublasHandle_t h = ctx_of(be)->blas;
    const cublasOperation_t op_a = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cudaDataType_t type = sizeof(R) == 4 ? CUDA_R_32F : CUDA_R_64F;
    cublasComputeType_t compute = CUBLAS_COMPUTE_64F;
    if (sizeof(R) == 4) {
        const int mode = rsm_cuda_get_matmul();
        compute = mode == RSM_CUDA_MATMUL_BF16   ? CUBLAS_COMPUTE_32F_FAST_16BF
                  : mode == RSM_CUDA_MATMUL_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                 : CUBLAS_COMPUTE_32F;
    }
    ok_blas(be,
            cublasGemmStridedBatchedEx(h, op_b, op_a, (int)n, (int)m, (int)k, &alpha, b, type,
                                       (int)ldb, sb, a, type, (int)lda, sa, &beta, c, type,
                                       (int)ldc, sc, (int)batch, compute, CUBLAS_GEMM_DEFAULT),
            "cublasGemmStridedBatchedEx");
}

/* ---- the ops (backend.h's list; shapes and equations there and in the CPU loops) ------------ */

#define RSM_CUDA_OP_DECL(ret, name, params) template <typename R> ret op_##name params;
RSM_BACKEND_OPS(RSM_CUDA_OP_DECL, R)
#undef RSM_CUDA_OP_DECL

template <typename R>
void
op_gemm(const rsm_backend *be, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, R alpha,
        const R *a, int64_t lda, const R *b, int64_t ldb, R beta, R *c, int64_t ldc)
{
    gemm_batched<R>(be, trans_a, trans_b, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1);
}

template <typename R>
void
op_bias_rows(const rsm_backend *be, R *y, const R *x, const R *bias, int64_t n, int64_t w)
{
    each(be, n * w, [=] __device__(int64_t i) {
        R v = x ? x[i] : (R)0;
        y[i] = bias ? (x ? v + bias[i % w] : bias[i % w]) : v;
    }, "bias_rows");
}

/* One thread per column, rows 0..n-1 in order: the CPU's accumulation order. */
template <typename R>
void
op_bias_grad(const rsm_backend *be, R *dbias, const R *dy, int64_t n, int64_t w)
{
    each(be, w, [=] __device__(int64_t j) {
        R acc = dbias[j];
        for (int64_t i = 0; i < n; i++) acc += dy[i * w + j];
        dbias[j] = acc;
    }, "bias_grad");
}

template <typename R>
void
op_add_row(const rsm_backend *be, R *y, const R *row, int64_t n, int64_t w)
{
    each(be, n * w, [=] __device__(int64_t i) { y[i] += row[i % w]; }, "add_row");
}

template <typename R>
void
op_gather_add(const rsm_backend *be, R *y, const R *table, const R *ids, int64_t n, int64_t w)
{
    each(be, n * w, [=] __device__(int64_t i) {
        y[i] += table[(int64_t)ids[i / w] * w + i % w];
    }, "gather_add");
}

/* One thread per column j, rows in order: rows with the same id add into the same entry in the
 * CPU's order and never race. */
template <typename R>
void
op_scatter_add(const rsm_backend *be, R *table, const R *dy, const R *ids, int64_t n, int64_t w)
{
    each(be, w, [=] __device__(int64_t j) {
        for (int64_t i = 0; i < n; i++) table[(int64_t)ids[i] * w + j] += dy[i * w + j];
    }, "scatter_add");
}

template <typename R>
void
op_copy_cols(const rsm_backend *be, R *dst, int64_t ld_dst, const R *src, int64_t ld_src,
             int64_t rows, int64_t cols)
{
    if (rows <= 0 || cols <= 0 || !use(be)) return;
    ok_cuda(be,
            cudaMemcpy2DAsync(dst, (size_t)ld_dst * sizeof(R), src, (size_t)ld_src * sizeof(R),
                              (size_t)cols * sizeof(R), (size_t)rows, cudaMemcpyDeviceToDevice,
                              stream_of(be)),
            "copy_cols");
}

template <typename R>
void
op_fill(const rsm_backend *be, R *x, int64_t n, double value)
{
    const R v = (R)value;
    each(be, n, [=] __device__(int64_t i) { x[i] = v; }, "fill");
}

template <typename R>
void
op_repeat_rows(const rsm_backend *be, R *dst, const R *src, int64_t rows, int64_t width, int64_t k)
{
    each(be, rows * k * width, [=] __device__(int64_t i) {
        const int64_t q = i / width, col = i % width;
        dst[i] = src[(q / k) * width + col];
    }, "repeat_rows");
}

/* In place on the CPU (rows walked downwards); in parallel the sources would be overwritten, so
 * the n source rows are copied aside first (stream-ordered scratch). */
template <typename R>
void
op_expand_rows(const rsm_backend *be, R *rows, int64_t n, int64_t width, int64_t factor)
{
    if (n <= 0 || width <= 0 || factor <= 1 || !use(be)) return;
    Scratch tmp(be, (size_t)(n * width) * sizeof(R));
    if (tmp.ptr == nullptr) {
        record(be, "expand_rows", "out of device memory for the source rows");
        return;
    }
    if (!ok_cuda(be, cudaMemcpyAsync(tmp.ptr, rows, (size_t)(n * width) * sizeof(R),
                                     cudaMemcpyDeviceToDevice, stream_of(be)),
                 "expand_rows"))
        return;
    op_repeat_rows<R>(be, rows, static_cast<const R *>(tmp.ptr), n, width, factor);
}

/* The activations (ops/activation.h, ops/gelu.h): y = f(x) and dx = dy f'(x), element-wise. */
template <typename R>
struct Silu {
    __device__ static R f(R x) { return rsm_silu<R>(x); }
    __device__ static R grad(R x) { return rsm_silu_grad<R>(x); }
};

template <typename R>
struct Gelu {
    __device__ static R f(R x) { return rsm_gelu<R>(x); }
    __device__ static R grad(R x) { return rsm_gelu_grad<R>(x); }
};

template <typename R, typename Act>
void
act_forward(const rsm_backend *be, R *y, const R *x, int64_t n, const char *what)
{
    each(be, n, [=] __device__(int64_t i) { y[i] = Act::f(x[i]); }, what);
}

template <typename R, typename Act>
void
act_backward(const rsm_backend *be, R *dx, const R *dy, const R *x, int64_t n, const char *what)
{
    each(be, n, [=] __device__(int64_t i) { dx[i] = dy[i] * Act::grad(x[i]); }, what);
}

/* op_<name>_forward / op_<name>_backward of backend.h for activation Act. */
#define RSM_CUDA_ACTIVATION_OPS(name, Act)                                                      \
    template <typename R>                                                                       \
    void op_##name##_forward(const rsm_backend *be, R *y, const R *x, int64_t n)                \
    {                                                                                           \
        act_forward<R, Act<R>>(be, y, x, n, #name "_forward");                                  \
    }                                                                                           \
    template <typename R>                                                                       \
    void op_##name##_backward(const rsm_backend *be, R *dx, const R *dy, const R *x, int64_t n) \
    {                                                                                           \
        act_backward<R, Act<R>>(be, dx, dy, x, n, #name "_backward");                           \
    }
RSM_CUDA_ACTIVATION_OPS(silu, Silu)
RSM_CUDA_ACTIVATION_OPS(gelu, Gelu)
#undef RSM_CUDA_ACTIVATION_OPS

/* Element (i, k) of the sinusoidal embedding, both halves (nn/time_embedding.h's frequency and
 * angle; the device's sin/cos). */
template <typename R>
void
op_time_embedding(const rsm_backend *be, R *out, int64_t ld, const R *t, int64_t n,
                  int64_t temb_dim)
{
    const int64_t half = temb_dim / 2;
    if (half <= 0) return;
    each(be, n * half, [=] __device__(int64_t idx) {
        const int64_t i = idx / half, k = idx % half;
        const double angle = rsm_time_angle((double)t[i], rsm_time_frequency(k, half));
        out[i * ld + k] = (R)sin(angle);
        out[i * ld + half + k] = (R)cos(angle);
    }, "time_embedding");
}

/* LayerNorm of each row (layernorm_real.c): mean, then the centred sum of squares, in R; one
 * warp per row. */
template <typename R>
void
op_layernorm_forward(const rsm_backend *be, R *xhat, R *rstd, const R *x, int64_t rows, int64_t w)
{
    each_row(be, rows, [=] __device__(int64_t r, int lane) {
        const R *xr = x + r * w;
        double sum = 0.0;
        for (int64_t j = lane; j < w; j += kWarp) sum += (double)xr[j];
        const R mean = (R)(warp_sum(sum) / (double)w);
        double sq = 0.0;
        for (int64_t j = lane; j < w; j += kWarp) {
            const R d = xr[j] - mean;
            sq += (double)(d * d);
        }
        const R var = (R)(warp_sum(sq) / (double)w);
        const R s = (R)(1.0 / sqrt((double)var + kLayernormEps));
        if (lane == 0) rstd[r] = s;
        for (int64_t j = lane; j < w; j += kWarp) xhat[r * w + j] = (xr[j] - mean) * s;
    }, "layernorm_forward");
}

/* dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) per row. */
template <typename R>
void
op_layernorm_backward(const rsm_backend *be, R *dx, const R *dxhat, const R *xhat, const R *rstd,
                      int64_t rows, int64_t w, int accumulate)
{
    each_row(be, rows, [=] __device__(int64_t r, int lane) {
        const R *g = dxhat + r * w, *h = xhat + r * w;
        double mg = 0.0, mgh = 0.0;
        for (int64_t j = lane; j < w; j += kWarp) {
            mg += (double)g[j];
            mgh += (double)(g[j] * h[j]);
        }
        const R a = (R)(warp_sum(mg) / (double)w), b = (R)(warp_sum(mgh) / (double)w);
        const R s = rstd[r];
        R *out = dx + r * w;
        for (int64_t j = lane; j < w; j += kWarp) {
            const R v = s * (g[j] - a - h[j] * b);
            out[j] = accumulate ? out[j] + v : v;
        }
    }, "layernorm_backward");
}

template <typename R>
void
op_modulate_forward(const rsm_backend *be, R *y, const R *xhat, const R *shift, const R *scale,
                    int64_t ld, int64_t n, int64_t T, int64_t w)
{
    each(be, n * T * w, [=] __device__(int64_t i) {
        const int64_t b = i / (T * w), j = i % w;
        y[i] = xhat[i] * (1 + scale[b * ld + j]) + shift[b * ld + j];
    }, "modulate_forward");
}

/* dxhat element-wise; dshift, dscale: one thread per (image, column) over the tokens in order. */
template <typename R>
void
op_modulate_backward(const rsm_backend *be, R *dxhat, R *dshift, R *dscale, const R *dy,
                     const R *xhat, const R *scale, int64_t ld, int64_t n, int64_t T, int64_t w)
{
    each(be, n * T * w, [=] __device__(int64_t i) {
        const int64_t b = i / (T * w), j = i % w;
        dxhat[i] = dy[i] * (1 + scale[b * ld + j]);
    }, "modulate_backward");
    each(be, n * w, [=] __device__(int64_t bj) {
        const int64_t b = bj / w, j = bj % w;
        R sh = dshift[b * ld + j], sc = dscale[b * ld + j];
        for (int64_t t = 0; t < T; t++) {
            const int64_t i = (b * T + t) * w + j;
            sh += dy[i];
            sc += dy[i] * xhat[i];
        }
        dshift[b * ld + j] = sh;
        dscale[b * ld + j] = sc;
    }, "modulate_backward (parameters)");
}

template <typename R>
void
op_gated_residual_forward(const rsm_backend *be, R *x, const R *a, const R *gate, int64_t ld,
                          int64_t n, int64_t T, int64_t w)
{
    each(be, n * T * w, [=] __device__(int64_t i) {
        const int64_t b = i / (T * w), j = i % w;
        x[i] += gate[b * ld + j] * a[i];
    }, "gated_residual_forward");
}

template <typename R>
void
op_gated_residual_backward(const rsm_backend *be, R *da, R *dgate, const R *dx, const R *a,
                           const R *gate, int64_t ld, int64_t n, int64_t T, int64_t w)
{
    each(be, n * T * w, [=] __device__(int64_t i) {
        const int64_t b = i / (T * w), j = i % w;
        da[i] = gate[b * ld + j] * dx[i];
    }, "gated_residual_backward");
    each(be, n * w, [=] __device__(int64_t bj) {
        const int64_t b = bj / w, j = bj % w;
        R g = dgate[b * ld + j];
        for (int64_t t = 0; t < T; t++) {
            const int64_t i = (b * T + t) * w + j;
            g += dx[i] * a[i];
        }
        dgate[b * ld + j] = g;
    }, "gated_residual_backward (gate)");
}

/* Attention (attention_real.c): per head h, batched over the n images with cuBLAS; the row
 * softmax and its backward one warp per row of probs [n, heads, T, T]. */
template <typename R>
void
op_attention_forward(const rsm_backend *be, R *o, R *probs, const R *qkv, int64_t n, int64_t T,
                     int64_t w, int64_t heads)
{
    const int64_t dh = w / heads;
    const R scale = (R)(1.0 / sqrt((double)dh));
    for (int64_t h = 0; h < heads; h++) {
        const R *q = qkv + h * dh, *k = q + w;
        gemm_batched<R>(be, 0, 1, T, T, dh, scale, q, 3 * w, T * 3 * w, k, 3 * w, T * 3 * w,
                        (R)0, probs + h * T * T, T, heads * T * T, n);
    }
    each_row(be, n * heads * T, [=] __device__(int64_t r, int lane) {
        R *row = probs + r * T;
        R m = row[0];
        for (int64_t j = lane; j < T; j += kWarp) m = row[j] > m ? row[j] : m;
        for (int o2 = kWarp / 2; o2 > 0; o2 >>= 1) {
            R other = __shfl_xor_sync(0xffffffffu, m, o2);
            m = other > m ? other : m;
        }
        double sum = 0.0;
        for (int64_t j = lane; j < T; j += kWarp) {
            row[j] = rsm_exp_real(row[j] - m);
            sum += (double)row[j];
        }
        const R inv = (R)1 / (R)warp_sum(sum);
        for (int64_t j = lane; j < T; j += kWarp) row[j] *= inv;
    }, "attention softmax");
    for (int64_t h = 0; h < heads; h++) {
        const R *v = qkv + 2 * w + h * dh;
        gemm_batched<R>(be, 0, 0, T, dh, T, (R)1, probs + h * T * T, T, heads * T * T, v, 3 * w,
                        T * 3 * w, (R)0, o + h * dh, w, T * w, n);
    }
}

template <typename R>
void
op_attention_backward(const rsm_backend *be, R *dqkv, R *dprobs, const R *dout, const R *qkv,
                      const R *probs, int64_t n, int64_t T, int64_t w, int64_t heads)
{
    const int64_t dh = w / heads;
    const R scale = (R)(1.0 / sqrt((double)dh));
    const int64_t s3 = T * 3 * w, sp = heads * T * T;
    for (int64_t h = 0; h < heads; h++) {
        const R *v = qkv + 2 * w + h * dh, *g = dout + h * dh, *p = probs + h * T * T;
        /* dP = do v^T;  dv = P^T do */
        gemm_batched<R>(be, 0, 1, T, T, dh, (R)1, g, w, T * w, v, 3 * w, s3, (R)0,
                        dprobs + h * T * T, T, sp, n);
        gemm_batched<R>(be, 1, 0, T, dh, T, (R)1, p, T, sp, g, w, T * w, (R)0,
                        dqkv + 2 * w + h * dh, 3 * w, s3, n);
    }
    /* dS = P * (dP - rowsum(dP * P)) */
    each_row(be, n * heads * T, [=] __device__(int64_t r, int lane) {
        const R *pr = probs + r * T;
        R *dr = dprobs + r * T;
        double dot = 0.0;
        for (int64_t j = lane; j < T; j += kWarp) dot += (double)(dr[j] * pr[j]);
        const R d = (R)warp_sum(dot);
        for (int64_t j = lane; j < T; j += kWarp) dr[j] = pr[j] * (dr[j] - d);
    }, "attention softmax backward");
    for (int64_t h = 0; h < heads; h++) {
        const R *q = qkv + h * dh, *k = q + w, *ds = dprobs + h * T * T;
        /* dq = dS k / sqrt(dh);  dk = dS^T q / sqrt(dh) */
        gemm_batched<R>(be, 0, 0, T, dh, T, scale, ds, T, sp, k, 3 * w, s3, (R)0, dqkv + h * dh,
                        3 * w, s3, n);
        gemm_batched<R>(be, 1, 0, T, dh, T, scale, ds, T, sp, q, 3 * w, s3, (R)0,
                        dqkv + w + h * dh, 3 * w, s3, n);
    }
}

/* The patch permutation of attention_real.c, one thread per token element: token (b, gi, gj),
 * element (c, pi, pj) <-> pixel (b, c, gi p + pi, gj p + pj). */
struct PatchIndex {
    int64_t C, S, p, G, Pd;
    __device__ int64_t pixel(int64_t i) const
    {
        const int64_t e = i % Pd, tokn = i / Pd;
        const int64_t gj = tokn % G, gi = (tokn / G) % G, b = tokn / (G * G);
        const int64_t pj = e % p, pi = (e / p) % p, c = e / (p * p);
        return ((b * C + c) * S + gi * p + pi) * S + gj * p + pj;
    }
};

template <typename R>
void
op_patchify_forward(const rsm_backend *be, R *tok, const R *x, int64_t n, int64_t C, int64_t S,
                    int64_t p)
{
    const PatchIndex ix{C, S, p, S / p, C * p * p};
    each(be, n * ix.G * ix.G * ix.Pd, [=] __device__(int64_t i) { tok[i] = x[ix.pixel(i)]; },
         "patchify_forward");
}

template <typename R>
void
op_patchify_backward(const rsm_backend *be, R *x, const R *tok, int64_t n, int64_t C, int64_t S,
                     int64_t p)
{
    const PatchIndex ix{C, S, p, S / p, C * p * p};
    each(be, n * ix.G * ix.G * ix.Pd, [=] __device__(int64_t i) { x[ix.pixel(i)] = tok[i]; },
         "patchify_backward");
}

template <typename R>
void
op_guided_combine(const rsm_backend *be, int64_t m, double scale, const R *u2, R *out)
{
    each(be, m, [=] __device__(int64_t i) {
        out[i] = (R)rsm_cfg_combine((double)u2[i], (double)u2[m + i], scale);
    }, "guided_combine");
}

template <typename R>
void
op_guided_split(const rsm_backend *be, int64_t m, double scale, const R *dout, R *du2)
{
    const double keep = 1.0 - scale;
    each(be, m, [=] __device__(int64_t i) {
        du2[i] = (R)(scale * (double)dout[i]);
        du2[m + i] = (R)(keep * (double)dout[i]);
    }, "guided_split");
}

template <typename R>
void
op_guided_stack(const rsm_backend *be, int64_t n, int64_t dim, int64_t cond_dim,
                const R *null_cond, const R *x, const R *t, const R *cond, R *x2, R *t2, R *cond2)
{
    each(be, n * dim, [=] __device__(int64_t i) { x2[i] = x2[n * dim + i] = x[i]; },
         "guided_stack (x)");
    each(be, n, [=] __device__(int64_t i) { t2[i] = t2[n + i] = t[i]; }, "guided_stack (t)");
    each(be, n * cond_dim, [=] __device__(int64_t i) {
        cond2[i] = cond[i];
        cond2[n * cond_dim + i] = null_cond[i % cond_dim];
    }, "guided_stack (cond)");
}

template <typename R>
void
op_guided_sum_halves(const rsm_backend *be, int64_t m, const R *dx2, R *dx)
{
    each(be, m, [=] __device__(int64_t i) { dx[i] = dx2[i] + dx2[m + i]; }, "guided_sum_halves");
}

/* Element offset + i of (seed, stream): ops/philox.h, as the CPU fills. */
template <typename R>
void
op_fill_normal(const rsm_backend *be, uint64_t seed, uint64_t stream, uint64_t offset, int64_t n,
               R *out)
{
    each(be, n, [=] __device__(int64_t i) {
        out[i] = (R)rsm_philox_normal_at(seed, stream, offset + (uint64_t)i);
    }, "fill_normal");
}

/* Rounding to float may reach 1: clamped to the largest value below 1, as rng_real.c. */
template <typename R>
void
op_fill_uniform(const rsm_backend *be, uint64_t seed, uint64_t stream, uint64_t offset, int64_t n,
                R *out)
{
    const R below_one = (R)1 - std::numeric_limits<R>::epsilon() / 2;
    each(be, n, [=] __device__(int64_t i) {
        const R u = (R)rsm_philox_uniform_at(seed, stream, offset + (uint64_t)i);
        out[i] = u < (R)1 ? u : below_one;
    }, "fill_uniform");
}

template <typename R>
void
op_sampler_step(const rsm_backend *be, const rsm_step_coef *s, int64_t n, const R *x, const R *u,
                R *z, R *mean, R *x_next)
{
    const double A = s->A, K = s->K, std = s->std;
    const int stochastic = s->stochastic;
    each(be, n, [=] __device__(int64_t k) {
        const R m = rsm_step_mean<R>(A, K, x[k], u[k]);
        mean[k] = m;
        if (!x_next) return;
        if (stochastic) {
            x_next[k] = rsm_step_next<R>(m, std, z[k]);
        } else {
            x_next[k] = m;
            z[k] = 0;
        }
    }, "sampler_step");
}

template <typename R>
void
op_heun_predict(const rsm_backend *be, const rsm_step_coef *s, int64_t n, const R *x, const R *u,
                R *x_euler)
{
    const double dt = s->dt, v_x = s->v_x, v_u = s->v_u;
    each(be, n, [=] __device__(int64_t k) {
        x_euler[k] = rsm_heun_predict<R>(dt, v_x, v_u, x[k], u[k]);
    }, "heun_predict");
}

template <typename R>
void
op_heun_step(const rsm_backend *be, const rsm_step_coef *s, int64_t n, const R *x, const R *u,
             const R *x_euler, const R *u2, R *z, R *mean, R *x_next)
{
    const rsm_step_coef c = *s;
    each(be, n, [=] __device__(int64_t k) {
        const R m = rsm_heun_mean<R>(c.dt, c.v_x, c.v_u, c.v_x_next, c.v_u_next, x[k], u[k],
                                     x_euler[k], u2[k]);
        mean[k] = m;
        x_next[k] = m;
        z[k] = 0;
    }, "heun_step");
}

template <typename R>
void
op_step_log_prob(const rsm_backend *be, const rsm_step_coef *s, int64_t rows, int64_t dim,
                 const R *x_next, const R *mean, R *log_prob, int64_t repeat)
{
    const double std = s->std;
    const int stochastic = s->stochastic;
    each_row(be, rows, [=] __device__(int64_t r, int lane) {
        double value = 0.0;
        if (stochastic) {
            double sq = 0.0;
            for (int64_t d = lane; d < dim; d += kWarp)
                sq += rsm_step_sq<R>(x_next[r * dim + d], mean[r * dim + d], std);
            value = rsm_step_log_prob(warp_sum(sq), std, dim);
        }
        for (int64_t k = lane; k < repeat; k += kWarp) log_prob[r * repeat + k] = (R)value;
    }, "step_log_prob");
}

/* The objective: the coefficient rows go to the device, objective.cu's fused kernel writes the
 * cotangent and per-row terms, and the totals are summed on the host in row order (the CPU's). */
template <typename R>
rsm_status
op_objective(const rsm_backend *be, const rsm_objective_config *cfg, int64_t rows, int64_t dim,
             const rsm_objective_row *coef, const R *u, const R *u_old, const R *u_ref,
             const R *psi, const R *noise, R *cotangent, double *log_ratio, uint8_t *active,
             rsm_objective_stats *stats)
{
    const rsm_cuda_host_api &host = ctx_of(be)->host;
    if (!(rows >= 0 && dim >= 1))
        return host.fail(RSM_ERR_VALUE, "invalid sizes rows=%lld dim=%lld", (long long)rows,
                         (long long)dim);
    for (int64_t r = 0; r < rows; r++)
        if (coef[r].kl != 0.0 && coef[r].weight != 0.0 && u_ref == nullptr)
            return host.fail(RSM_ERR_VALUE, "a KL anchor needs u_ref");
    if (stats) *stats = rsm_objective_stats{0.0, 0.0, 0.0};
    if (rows == 0) return RSM_OK;
    if (!use(be)) return be->check(be);
    const size_t nr = (size_t)rows;
    Scratch d_coef(be, nr * sizeof(rsm_objective_row)), d_loss(be, nr * sizeof(double)),
        d_kl(be, nr * sizeof(double)), d_lr(be, nr * sizeof(double)), d_active(be, nr);
    if (!d_coef.ptr || !d_loss.ptr || !d_kl.ptr || !d_lr.ptr || !d_active.ptr)
        return host.fail(RSM_ERR_MEMORY, "objective: out of device memory for %lld rows",
                         (long long)rows);
    if (!to_device(be, d_coef.ptr, coef, nr * sizeof(rsm_objective_row), "objective (rows)"))
        return be->check(be);
    if (rsm_cuda_objective(kDtype<R>, (int)cfg->form, cfg->anchor_old, cfg->linear_only,
                           cfg->mean_over_dims, cfg->normalizer, rows, dim, d_coef.ptr, u, u_old,
                           u_ref, psi, noise, cotangent, (double *)d_loss.ptr, (double *)d_kl.ptr,
                           (double *)d_lr.ptr, (uint8_t *)d_active.ptr, be->stream) != 0)
        return host.fail(RSM_ERR_VALUE, "%s", rsm_cuda_error());
    std::vector<double> loss(nr), kl(nr);
    std::vector<uint8_t> act(nr);
    if (!to_host(be, loss.data(), d_loss.ptr, nr * sizeof(double), "objective (totals)") ||
        !to_host(be, kl.data(), d_kl.ptr, nr * sizeof(double), "objective (totals)") ||
        !to_host(be, act.data(), d_active.ptr, nr, "objective (totals)") ||
        (log_ratio && !to_host(be, log_ratio, d_lr.ptr, nr * sizeof(double), "objective")))
        return be->check(be);
    double total = 0.0, weight_sum = 0.0, clipped = 0.0, kl_sum = 0.0;
    for (size_t r = 0; r < nr; r++) {
        total += loss[r];
        kl_sum += kl[r];
        weight_sum += coef[r].weight;
        if (!act[r]) clipped += coef[r].weight;
    }
    if (active) std::memcpy(active, act.data(), nr);
    if (stats) {
        stats->loss = total;
        stats->clip_fraction = weight_sum > 0 ? clipped / weight_sum : 0.0;
        stats->kl = weight_sum > 0 ? kl_sum / weight_sum : 0.0;
    }
    if (!std::isfinite(total))
        return host.fail(RSM_ERR_NUMERIC, "the objective is not finite (%g)", total);
    return be->check(be);
}

template <typename R>
double
op_sum_sq_diff(const rsm_backend *be, int64_t n, const R *a, const R *b)
{
    return sum_of(be, n, [=] __device__(int64_t i) {
        const double d = b ? (double)a[i] - (double)b[i] : (double)a[i];
        return d * d;
    }, "sum_sq_diff");
}

template <typename R>
double
op_mse_seed(const rsm_backend *be, int64_t n, R *pred, const R *target, R scale)
{
    return sum_of(be, n, [=] __device__(int64_t i) {
        const R diff = pred[i] - target[i];
        pred[i] = scale * diff;
        return (double)diff * (double)diff;
    }, "mse_seed");
}

/* The batch's times and path coefficients are computed on the host by rsm._C's path functions
 * (the one definition of the schedules) from the device draws; the per-element noising and
 * target (path.h's bodies) and the condition gather/dropout run on the device. */
template <typename R>
void
op_pretrain_batch(const rsm_backend *be, const rsm_path *path, const rsm_pretrain_config *cfg,
                  int64_t n, int64_t D, int64_t C, const R *data, const R *data_cond,
                  const int64_t *index, const double *u_time, const double *u_drop, const R *eps,
                  R *t, R *xt, R *target, R *cond)
{
    if (n <= 0 || !use(be)) return;
    const rsm_cuda_host_api &host = ctx_of(be)->host;
    const size_t nn = (size_t)n;
    std::vector<double> ut(nn), ud(u_drop ? nn : 0);
    if (!to_host(be, ut.data(), u_time, nn * sizeof(double), "pretrain_batch (times)")) return;
    if (u_drop && !to_host(be, ud.data(), u_drop, nn * sizeof(double), "pretrain_batch")) return;
    std::vector<R> th(nn);
    std::vector<rsm_path_coef> coefs(nn);
    std::vector<uint8_t> drop(nn, 0);
    for (size_t i = 0; i < nn; i++) {
        th[i] = (R)(cfg->t_min + (cfg->t_max - cfg->t_min) * ut[i]);
        coefs[i] = host.path_coef_at(path, (double)th[i]);
        if (u_drop) drop[i] = ud[i] < cfg->cond_dropout;
    }
    const rsm_param target_param = host.path_native_param(path);
    Scratch d_coefs(be, nn * sizeof(rsm_path_coef)), d_drop(be, nn);
    if (!d_coefs.ptr || !d_drop.ptr) {
        record(be, "pretrain_batch", "out of device memory for the batch's coefficients");
        return;
    }
    if (!to_device(be, t, th.data(), nn * sizeof(R), "pretrain_batch (t)") ||
        !to_device(be, d_coefs.ptr, coefs.data(), nn * sizeof(rsm_path_coef), "pretrain_batch") ||
        !to_device(be, d_drop.ptr, drop.data(), nn, "pretrain_batch"))
        return;
    const rsm_path_coef *pc = static_cast<const rsm_path_coef *>(d_coefs.ptr);
    const uint8_t *dr = static_cast<const uint8_t *>(d_drop.ptr);
    each(be, n * D, [=] __device__(int64_t k) {
        const int64_t i = k / D, d = k % D;
        const double x0 = (double)data[index[i] * D + d], e = (double)eps[k];
        xt[k] = (R)rsm_path_noise_elem(pc[i], x0, e);
        target[k] = (R)rsm_param_from_x0_eps(target_param, pc[i], x0, e);
    }, "pretrain_batch");
    const R *null_cond = static_cast<const R *>(cfg->null_cond);
    if (C > 0)
        each(be, n * C, [=] __device__(int64_t k) {
            const int64_t i = k / C, c = k % C;
            cond[k] = dr[i] ? null_cond[c] : data_cond[index[i] * C + c];
        }, "pretrain_batch (cond)");
    /* the scratch goes back to the pool in stream order: the kernels above read it first */
}

/* AdamW (optim_real.c's update, optim.cu's kernels): the norm is reduced on the device and read
 * back once (the step must refuse a non-finite gradient before changing anything, and the
 * caller gets the norm); clipping and the update use the device copy. */
template <typename R>
rsm_status
op_adamw_step(const rsm_backend *be, rsm_adamw *opt, R *params, R *grads, double lr,
              double *grad_norm)
{
    const rsm_cuda_host_api &host = ctx_of(be)->host;
    const rsm_adamw_config *c = &opt->config;
    const int64_t n = opt->num_params;
    if (!(std::isfinite(lr) && lr >= 0))
        return host.fail(RSM_ERR_VALUE, "lr=%g must be finite and >= 0", lr);
    if (!use(be)) return be->check(be);
    Scratch d_norm(be, sizeof(double)),
        d_work(be, (size_t)rsm_cuda_grad_norm_work(n) * sizeof(double));
    if (!d_norm.ptr || !d_work.ptr)
        return host.fail(RSM_ERR_MEMORY, "adamw_step: out of device memory");
    if (rsm_cuda_grad_norm(kDtype<R>, n, grads, (double *)d_norm.ptr, (double *)d_work.ptr,
                           be->stream) != 0)
        return host.fail(RSM_ERR_DEVICE, "%s", rsm_cuda_error());
    double norm = 0.0;
    if (!to_host(be, &norm, d_norm.ptr, sizeof(double), "adamw_step (norm)")) return be->check(be);
    if (grad_norm) *grad_norm = norm;
    if (!std::isfinite(norm))
        return host.fail(RSM_ERR_NUMERIC,
                         "the gradient is not finite (norm=%g); parameters and optimizer state "
                         "unchanged",
                         norm);
    opt->step += 1;
    const double bc1 = 1.0 - pow(c->beta1, (double)opt->step);
    const double bc2 = 1.0 - pow(c->beta2, (double)opt->step);
    const double k[10] = {lr / bc1,          1.0 / sqrt(bc2),       1.0 - lr * c->weight_decay,
                          c->beta1,          c->beta2,              c->eps,
                          1.0 - c->beta1,    1.0 - c->beta2,        c->ema_decay,
                          1.0 - c->ema_decay};
    if (rsm_cuda_adamw_update(kDtype<R>, n, k, c->max_grad_norm, (const double *)d_norm.ptr,
                              params, grads, opt->m, opt->v, opt->ema, be->stream) != 0)
        return host.fail(RSM_ERR_DEVICE, "%s", rsm_cuda_error());
    return be->check(be);
}

/* The tables: one entry per op of backend.h's list, in its order (an op missing or with another
 * signature fails to compile). */
#define RSM_CUDA_OP_ENTRY(ret, name, params) &op_##name<R>,
template <typename R, typename Ops>
constexpr Ops
make_ops()
{
    return Ops{RSM_BACKEND_OPS(RSM_CUDA_OP_ENTRY, R)};
}
#undef RSM_CUDA_OP_ENTRY

const rsm_backend_ops_f32 g_ops_f32 = make_ops<float, rsm_backend_ops_f32>();
const rsm_backend_ops_f64 g_ops_f64 = make_ops<double, rsm_backend_ops_f64>();

/* ---- precision-independent entries ------------------------------------------------------------ */

void *
be_alloc(const rsm_backend *be, size_t bytes)
{
    void *p = nullptr;
    if (rsm_cuda_alloc(be->device, bytes, &p) != 0) {
        record(be, "alloc", rsm_cuda_error());
        return nullptr;
    }
    return p;
}

void
be_free(const rsm_backend *be, void *ptr)
{
    rsm_cuda_free(be->device, ptr);
}

void
be_memset_zero(const rsm_backend *be, void *dst, size_t bytes)
{
    if (bytes == 0 || !use(be)) return;
    ok_cuda(be, cudaMemsetAsync(dst, 0, bytes, stream_of(be)), "memset_zero");
}

void
be_copy(const rsm_backend *be, void *dst, const void *src, size_t bytes, rsm_copy_kind kind)
{
    if (rsm_cuda_memcpy(be->device, dst, src, bytes, (int)kind, be->stream) != 0)
        record(be, "copy", rsm_cuda_error());
}

rsm_status
be_check(const rsm_backend *be)
{
    Ctx *c = ctx_of(be);
    /* an asynchronous fault of earlier work is sticky: it shows here without a sync */
    cudaError_t err = cudaPeekAtLastError();
    if (err != cudaSuccess) ok_cuda(be, err, "a kernel");
    std::lock_guard<std::mutex> lock(c->mutex);
    if (!c->failed) return RSM_OK;
    c->failed = 0;
    return c->host.fail(RSM_ERR_DEVICE, "%s", c->message);
}

rsm_status
be_synchronize(const rsm_backend *be)
{
    if (use(be)) ok_cuda(be, cudaStreamSynchronize(stream_of(be)), "cudaStreamSynchronize");
    return be_check(be);
}

void
be_fill_index(const rsm_backend *be, uint64_t seed, uint64_t stream, uint64_t offset, int64_t n,
              int64_t bound, int64_t *out)
{
    each(be, n, [=] __device__(int64_t i) {
        out[i] = rsm_philox_index_at(seed, stream, offset + (uint64_t)i, bound);
    }, "fill_index");
}

}  // namespace

extern "C" int
rsm_cuda_backend_get(int device, const rsm_cuda_host_api *host, const rsm_backend **out)
{
    using rsm_cuda::check;
    using rsm_cuda::fail;
    if (device < 0 || device >= kMaxDevices) return fail(1, "device %d is out of range", device);
    if (host == nullptr || host->fail == nullptr || host->path_coef_at == nullptr ||
        host->path_native_param == nullptr)
        return fail(1, "rsm_cuda_backend_get: incomplete host API");
    std::lock_guard<std::mutex> lock(g_create);
    if (g_backends[device] != nullptr) {
        *out = &g_backends[device]->be;
        return 0;
    }
    Entry *e = new (std::nothrow) Entry();
    if (e == nullptr) return fail(1, "rsm_cuda_backend_get: out of host memory");
    void *stream = nullptr;
    int rc = rsm_cuda_stream(device, &stream);
    if (rc == 0) rc = check(cudaSetDevice(device), "cudaSetDevice");
    if (rc == 0 && cublasCreate(&e->ctx.blas) != CUBLAS_STATUS_SUCCESS)
        rc = fail(1, "cublasCreate failed on cuda:%d", device);
    if (rc == 0 && cublasSetStream(e->ctx.blas, (cudaStream_t)stream) != CUBLAS_STATUS_SUCCESS)
        rc = fail(1, "cublasSetStream failed on cuda:%d", device);
    if (rc == 0) rc = rsm_cuda_alloc(device, (kPartials + 1) * sizeof(double), (void **)&e->ctx.partials);
    if (rc != 0) {
        if (e->ctx.blas) (void)cublasDestroy(e->ctx.blas);
        delete e;
        return rc;
    }
    e->ctx.device = device;
    e->ctx.stream = (cudaStream_t)stream;
    e->ctx.host = *host;
    std::snprintf(e->name, sizeof(e->name), "cuda:%d", device);
    e->be.kind = RSM_DEVICE_CUDA;
    e->be.device = device;
    e->be.name = e->name;
    e->be.stream = stream;
    e->be.ctx = &e->ctx;
    e->be.alloc = be_alloc;
    e->be.free = be_free;
    e->be.memset_zero = be_memset_zero;
    e->be.copy = be_copy;
    e->be.synchronize = be_synchronize;
    e->be.check = be_check;
    e->be.fill_index = be_fill_index;
    e->be.f32 = &g_ops_f32;
    e->be.f64 = &g_ops_f64;
    g_backends[device] = e; /* kept for the process, as rsm's streams */
    *out = &e->be;
    return 0;
}

/* ---- the test hook: any op by name (rsm_cuda_backend_call) ------------------------------------ */

namespace {

template <typename T>
T
arg_as(const rsm_cuda_arg &a)
{
    if constexpr (std::is_pointer<T>::value)
        return static_cast<T>(a.ptr);
    else if constexpr (std::is_floating_point<T>::value)
        return static_cast<T>(a.d);
    else
        return static_cast<T>(a.i);
}

template <typename Ret>
double
as_double(Ret value)
{
    return static_cast<double>(value);
}

template <typename Ret, typename... Args, size_t... I>
double
invoke(Ret (*op)(const rsm_backend *, Args...), const rsm_backend *be, const rsm_cuda_arg *args,
       std::index_sequence<I...>)
{
    if constexpr (std::is_void<Ret>::value) {
        op(be, arg_as<Args>(args[I])...);
        return 0.0;
    } else {
        return as_double(op(be, arg_as<Args>(args[I])...));
    }
}

template <typename Ret, typename... Args>
int
call_op(Ret (*op)(const rsm_backend *, Args...), const rsm_backend *be, const char *name,
        const rsm_cuda_arg *args, int n, double *ret)
{
    if (n != (int)sizeof...(Args))
        return rsm_cuda::fail(1, "backend op %s takes %d arguments after the backend, got %d",
                              name, (int)sizeof...(Args), n);
    *ret = invoke(op, be, args, std::index_sequence_for<Args...>{});
    return 0;
}

template <typename Ops>
int
call_by_name(const Ops *ops, const rsm_backend *be, const char *name, const rsm_cuda_arg *args,
             int n, double *ret)
{
#define RSM_CUDA_OP_CALL(r, op_name, params)                                                     \
    if (std::strcmp(name, #op_name) == 0) return call_op(ops->op_name, be, name, args, n, ret);
    RSM_BACKEND_OPS(RSM_CUDA_OP_CALL, R)
#undef RSM_CUDA_OP_CALL
    return rsm_cuda::fail(1, "backend.h has no op %s", name);
}

}  // namespace

extern "C" int
rsm_cuda_backend_call(const rsm_backend *be, int dtype, const char *name,
                      const rsm_cuda_arg *args, int n, double *ret)
{
    if (std::strcmp(name, "fill_index") == 0) return call_op(be->fill_index, be, name, args, n, ret);
    if (dtype == 0) return call_by_name(be->f32, be, name, args, n, ret);
    if (dtype == 1) return call_by_name(be->f64, be, name, args, n, ret);
    return rsm_cuda::fail(1, "backend_call: dtype code %d is not float32 (0) or float64 (1)", dtype);
}
