/* mlp.cu: forward and backward of the MLP backbone on the device (csrc/nn/mlp.h, mlp_real.c):
 * the same flat parameter layout, the same saved activations and the same order of operations,
 * with cuBLAS for the matrix products and small kernels for the input assembly, biases and SiLU.
 *
 * Shapes (n rows, D = dim, H = hidden, I = in_dim, L = depth) as mlp_real.c:
 *   acts:    inp [n, I]  h [L + 1][n, H]  pre [L][n, H]  act [L][n, H]  feat [n, H]
 *   scratch: dh [n, H]  dact [n, H]  dpre [n, H]  dinp [n, I]
 * Parameter gradients are accumulated (+=), activation gradients overwritten (=), as on the CPU.
 */
#include <cublas_v2.h>

#include <mutex>

#include "common.cuh"

#include "nn/time_embedding.h"

namespace {

constexpr int kMaxDevices = 64;
std::mutex g_handle_mutex;
cublasHandle_t g_handles[kMaxDevices];

int
cublas_check(cublasStatus_t st, const char *what)
{
    if (st == CUBLAS_STATUS_SUCCESS) return 0;
    return rsm_cuda::fail(1000 + (int)st, "%s: cuBLAS status %d (%s)", what, (int)st,
                          cublasGetStatusString(st));
}

/* The cuBLAS handle of the current device, bound to `stream`, in the current math mode. */
int
handle_for(cudaStream_t stream, cublasHandle_t *out)
{
    int device = 0;
    if (int rc = rsm_cuda::check(cudaGetDevice(&device), "cudaGetDevice")) return rc;
    if (device < 0 || device >= kMaxDevices) return rsm_cuda::fail(1, "device %d", device);
    std::lock_guard<std::mutex> lock(g_handle_mutex);
    if (g_handles[device] == nullptr) {
        if (int rc = cublas_check(cublasCreate(&g_handles[device]), "cublasCreate")) return rc;
    }
    cublasHandle_t h = g_handles[device];
    if (int rc = cublas_check(cublasSetStream(h, stream), "cublasSetStream")) return rc;
    cublasMath_t mode = rsm_cuda_get_matmul() == RSM_CUDA_MATMUL_TF32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH;
    if (int rc = cublas_check(cublasSetMathMode(h, mode), "cublasSetMathMode")) return rc;
    *out = h;
    return 0;
}

/* Row-major C[M, N] = alpha op(A) op(B) + beta C (the signature of csrc/blas.h's rsm_sgemm):
 * computed as the column-major C^T = op(B)^T op(A)^T. */
int
gemm(cublasHandle_t h, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
     const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
{
    if (M == 0 || N == 0) return 0;
    return cublas_check(cublasSgemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                    (int)N, (int)M, (int)K, &alpha, B, (int)ldb, A, (int)lda,
                                    &beta, C, (int)ldc),
                        "cublasSgemm");
}

int
gemm(cublasHandle_t h, int ta, int tb, int64_t M, int64_t N, int64_t K, double alpha,
     const double *A, int64_t lda, const double *B, int64_t ldb, double beta, double *C,
     int64_t ldc)
{
    if (M == 0 || N == 0) return 0;
    return cublas_check(cublasDgemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                    (int)N, (int)M, (int)K, &alpha, B, (int)ldb, A, (int)lda,
                                    &beta, C, (int)ldc),
                        "cublasDgemm");
}

/* inp[i] = [x_i, temb(t_i), cond_i] */
template <typename real>
__global__ void
build_input_kernel(int64_t n, int64_t D, int64_t T, int64_t C, const real *x, const real *t,
                   const real *cond, real *inp)
{
    const int64_t I = D + T + C, half = T / 2;
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n * I;
         k += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = k / I, j = k % I;
        real v;
        if (j < D) {
            v = x[i * D + j];
        } else if (j < D + T) {
            int64_t e = j - D;
            int64_t f = e < half ? e : e - half;
            double angle = rsm_time_angle((double)t[i], rsm_time_frequency(f, half));
            v = (real)(e < half ? sin(angle) : cos(angle));
        } else {
            v = cond[i * C + (j - D - T)];
        }
        inp[k] = v;
    }
}

/* y[i, j] = (base ? base[i, j] : 0) + bias[j] */
template <typename real>
__global__ void
bias_rows_kernel(int64_t n, int64_t out, const real *base, const real *bias, real *y)
{
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n * out;
         k += (int64_t)gridDim.x * blockDim.x) {
        real b = bias[k % out];
        y[k] = base ? base[k] + b : b;
    }
}

/* dbias[j] += sum_i dy[i, j], rows summed in order (deterministic, the CPU's order) */
template <typename real>
__global__ void
bias_grad_kernel(int64_t n, int64_t out, const real *dy, real *dbias)
{
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < out;
         j += (int64_t)gridDim.x * blockDim.x) {
        real acc = dbias[j];
        for (int64_t i = 0; i < n; i++) acc += dy[i * out + j];
        dbias[j] = acc;
    }
}

template <typename real>
__global__ void
take_columns_kernel(int64_t n, int64_t D, int64_t I, const real *dinp, real *dx)
{
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n * D;
         k += (int64_t)gridDim.x * blockDim.x)
        dx[k] = dinp[(k / D) * I + k % D];
}

template <typename real>
int
silu(int64_t n, const real *x, real *y, cudaStream_t s)
{
    return rsm_cuda_silu_forward(sizeof(real) == 4 ? 0 : 1, n, x, y, s);
}

template <typename real>
int
silu_back(int64_t n, const real *dy, const real *x, real *dx, cudaStream_t s)
{
    return rsm_cuda_silu_backward(sizeof(real) == 4 ? 0 : 1, n, dy, x, dx, s);
}

/* y[n, out] = x W^T + b */
template <typename real>
int
linear_forward(cublasHandle_t h, cudaStream_t s, real *y, const real *x, const real *w,
               const real *b, int64_t n, int64_t in, int64_t out)
{
    bias_rows_kernel<real><<<rsm_cuda::grid_for(n * out), rsm_cuda::kThreads, 0, s>>>(
        n, out, nullptr, b, y);
    if (int rc = rsm_cuda::launched("bias_rows")) return rc;
    return gemm(h, 0, 1, n, out, in, (real)1, x, in, w, in, (real)1, y, out);
}

/* dW += dy^T x, db += colsum dy, dx (= or +=) dy W */
template <typename real>
int
linear_backward(cublasHandle_t h, cudaStream_t s, real *dx, real *dw, real *db, const real *dy,
                const real *x, const real *w, int64_t n, int64_t in, int64_t out, int accumulate)
{
    if (dw) {
        if (int rc = gemm(h, 1, 0, out, in, n, (real)1, dy, out, x, in, (real)1, dw, in)) return rc;
    }
    if (db) {
        bias_grad_kernel<real><<<rsm_cuda::grid_for(out), rsm_cuda::kThreads, 0, s>>>(n, out, dy, db);
        if (int rc = rsm_cuda::launched("bias_grad")) return rc;
    }
    if (dx) return gemm(h, 0, 0, n, in, out, (real)1, dy, out, w, in, (real)(accumulate ? 1 : 0), dx, in);
    return 0;
}

template <typename real>
struct Acts {
    real *inp, *h, *pre, *act, *feat;
};

template <typename real>
Acts<real>
acts_of(const rsm_cuda_mlp *m, real *base, int64_t n)
{
    Acts<real> a;
    const int64_t H = m->hidden, L = m->depth;
    a.inp = base;
    a.h = a.inp + n * m->in_dim;
    a.pre = a.h + (L + 1) * n * H;
    a.act = a.pre + L * n * H;
    a.feat = a.act + L * n * H;
    return a;
}

template <typename real>
int
forward(const rsm_cuda_mlp *m, const real *p, int64_t n, const real *x, const real *t,
        const real *cond, real *out, real *acts, cudaStream_t s)
{
    cublasHandle_t h;
    if (int rc = handle_for(s, &h)) return rc;
    const int64_t D = m->dim, H = m->hidden, L = m->depth, I = m->in_dim;
    Acts<real> a = acts_of(m, acts, n);
    build_input_kernel<real><<<rsm_cuda::grid_for(n * I), rsm_cuda::kThreads, 0, s>>>(
        n, D, m->temb_dim, m->cond_dim, x, t, cond, a.inp);
    if (int rc = rsm_cuda::launched("build_input")) return rc;
    if (int rc = linear_forward(h, s, a.h, a.inp, p + m->in_w, p + m->in_b, n, I, H)) return rc;
    for (int64_t b = 0; b < L; b++) {
        const real *w1 = p + m->block0 + b * m->block_size, *b1 = w1 + H * H, *w2 = b1 + H,
                   *b2 = w2 + H * H;
        real *h_in = a.h + b * n * H, *h_out = h_in + n * H;
        real *pre = a.pre + b * n * H, *act = a.act + b * n * H;
        if (int rc = linear_forward(h, s, pre, h_in, w1, b1, n, H, H)) return rc;
        if (int rc = silu(n * H, pre, act, s)) return rc;
        /* residual: h_out = h_in + b2 + act W2^T */
        bias_rows_kernel<real><<<rsm_cuda::grid_for(n * H), rsm_cuda::kThreads, 0, s>>>(
            n, H, h_in, b2, h_out);
        if (int rc = rsm_cuda::launched("residual")) return rc;
        if (int rc = gemm(h, 0, 1, n, H, H, (real)1, act, H, w2, H, (real)1, h_out, H)) return rc;
    }
    if (int rc = silu(n * H, a.h + L * n * H, a.feat, s)) return rc;
    return linear_forward(h, s, out, a.feat, p + m->out_w, p + m->out_b, n, H, D);
}

template <typename real>
int
backward(const rsm_cuda_mlp *m, const real *p, int64_t n, const real *acts, real *scratch,
         const real *dout, real *g, real *dx, cudaStream_t s)
{
    cublasHandle_t h;
    if (int rc = handle_for(s, &h)) return rc;
    const int64_t D = m->dim, H = m->hidden, L = m->depth, I = m->in_dim;
    Acts<real> a = acts_of(m, const_cast<real *>(acts), n);
    real *dh = scratch, *dact = dh + n * H, *dpre = dact + n * H, *dinp = dpre + n * H;
    if (int rc = linear_backward(h, s, dact, g ? g + m->out_w : nullptr, g ? g + m->out_b : nullptr,
                                 dout, a.feat, p + m->out_w, n, H, D, 0))
        return rc;
    if (int rc = silu_back(n * H, dact, a.h + L * n * H, dh, s)) return rc;
    for (int64_t b = L - 1; b >= 0; b--) {
        const real *w1 = p + m->block0 + b * m->block_size, *w2 = w1 + H * H + H;
        real *gw = g ? g + m->block0 + b * m->block_size : nullptr;
        real *h_in = a.h + b * n * H, *pre = a.pre + b * n * H, *act = a.act + b * n * H;
        if (int rc = linear_backward(h, s, dact, gw ? gw + H * H + H : nullptr,
                                     gw ? gw + 2 * H * H + H : nullptr, dh, act, w2, n, H, H, 0))
            return rc;
        if (int rc = silu_back(n * H, dact, pre, dpre, s)) return rc;
        if (int rc = linear_backward(h, s, dh, gw, gw ? gw + H * H : nullptr, dpre, h_in, w1, n, H,
                                     H, 1))
            return rc;
    }
    if (int rc = linear_backward(h, s, dx ? dinp : nullptr, g ? g + m->in_w : nullptr,
                                 g ? g + m->in_b : nullptr, dh, a.inp, p + m->in_w, n, I, H, 0))
        return rc;
    if (dx) {
        take_columns_kernel<real><<<rsm_cuda::grid_for(n * D), rsm_cuda::kThreads, 0, s>>>(
            n, D, I, dinp, dx);
        return rsm_cuda::launched("take_columns");
    }
    return 0;
}

}  // namespace

using namespace rsm_cuda;

extern "C" int64_t
rsm_cuda_mlp_acts_numel(const rsm_cuda_mlp *m, int64_t rows)
{
    return rows * (m->in_dim + (m->depth + 1) * m->hidden + 2 * m->depth * m->hidden + m->hidden);
}

extern "C" int64_t
rsm_cuda_mlp_scratch_numel(const rsm_cuda_mlp *m, int64_t rows)
{
    return rows * (3 * m->hidden + m->in_dim);
}

extern "C" int
rsm_cuda_mlp_forward(int dtype, const rsm_cuda_mlp *m, const void *params, int64_t n,
                     const void *x, const void *t, const void *cond, void *out, void *acts,
                     void *stream)
{
    if (n <= 0) return 0;
    if (m->cond_dim > 0 && cond == nullptr) return fail(1, "mlp_forward: cond is required");
    RSM_DISPATCH_REAL(dtype, "mlp_forward", {
        return forward<real>(m, (const real *)params, n, (const real *)x, (const real *)t,
                             (const real *)cond, (real *)out, (real *)acts, pick_stream(stream));
    });
    return 0;
}

extern "C" int
rsm_cuda_mlp_backward(int dtype, const rsm_cuda_mlp *m, const void *params, int64_t n,
                      const void *acts, void *scratch, const void *dout, void *dparams, void *dx,
                      void *stream)
{
    if (n <= 0) return 0;
    RSM_DISPATCH_REAL(dtype, "mlp_backward", {
        return backward<real>(m, (const real *)params, n, (const real *)acts, (real *)scratch,
                              (const real *)dout, (real *)dparams, (real *)dx,
                              pick_stream(stream));
    });
    return 0;
}
