/* blas.c: GEMM dispatch (run-time CBLAS or the built-in kernel) and thread control. */
#define _GNU_SOURCE
#include "blas.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* CBLAS enums (values fixed by the CBLAS standard). */
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_TRANS = 112 };

typedef void (*cblas_sgemm_fn)(int, int, int, int, int, int, float, const float *, int,
                               const float *, int, float, float *, int);
typedef void (*cblas_dgemm_fn)(int, int, int, int, int, int, double, const double *, int,
                               const double *, int, double, double *, int);
typedef void (*set_threads_fn)(int);
typedef char *(*get_string_fn)(void);

static struct {
    void *handle;
    cblas_sgemm_fn sgemm;
    cblas_dgemm_fn dgemm;
    set_threads_fn set_num_threads;
    int use_builtin;
    int num_threads;
    char name[256];
    char path[1024];
} rsm_blas = {.num_threads = 0, .name = "rsm (built-in kernel)", .path = ""};

static void *
rsm_blas_sym(void *handle, const char *plain, const char *prefixed)
{
    void *sym = dlsym(handle, prefixed);
    return sym ? sym : dlsym(handle, plain);
}

rsm_status
rsm_blas_load(const char *path)
{
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    RSM_CHECK(handle != NULL, RSM_ERR_IO, "cannot load BLAS library '%s': %s", path, dlerror());
    cblas_sgemm_fn sgemm = (cblas_sgemm_fn)rsm_blas_sym(handle, "cblas_sgemm", "scipy_cblas_sgemm");
    cblas_dgemm_fn dgemm = (cblas_dgemm_fn)rsm_blas_sym(handle, "cblas_dgemm", "scipy_cblas_dgemm");
    if (!sgemm || !dgemm) {
        dlclose(handle);
        return rsm_fail(RSM_ERR_VALUE, "'%s' has no cblas_sgemm/cblas_dgemm", path);
    }
    rsm_blas.handle = handle;
    rsm_blas.sgemm = sgemm;
    rsm_blas.dgemm = dgemm;
    rsm_blas.set_num_threads = (set_threads_fn)rsm_blas_sym(handle, "openblas_set_num_threads",
                                                            "scipy_openblas_set_num_threads");
    get_string_fn corename = (get_string_fn)rsm_blas_sym(handle, "openblas_get_corename",
                                                         "scipy_openblas_get_corename");
    get_string_fn config = (get_string_fn)rsm_blas_sym(handle, "openblas_get_config",
                                                       "scipy_openblas_get_config");
    snprintf(rsm_blas.name, sizeof(rsm_blas.name), "openblas %s (%s)",
             corename ? corename() : "?", config ? config() : "cblas");
    snprintf(rsm_blas.path, sizeof(rsm_blas.path), "%s", path);
    /* the BLAS itself stays single-threaded: rsm splits GEMMs over its OpenMP threads */
    if (rsm_blas.set_num_threads) rsm_blas.set_num_threads(1);
    return RSM_OK;
}

rsm_blas_info
rsm_blas_get_info(void)
{
    rsm_blas_info info = {rsm_blas.name, rsm_blas.path};
    if (rsm_blas.use_builtin) info.name = "rsm (built-in kernel, forced)";
    return info;
}

void
rsm_blas_use_builtin(int use_builtin)
{
    rsm_blas.use_builtin = use_builtin;
}

void
rsm_set_num_threads(int n)
{
    rsm_blas.num_threads = n;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
}

int
rsm_get_num_threads(void)
{
#ifdef _OPENMP
    return rsm_blas.num_threads > 0 ? rsm_blas.num_threads : omp_get_max_threads();
#else
    return 1;
#endif
}

/* The built-in kernel: C = alpha op(A) op(B) + beta C, parallel over rows of C. Each C[i, j] is
 * accumulated in a fixed k order, so results do not depend on the thread count. The inner loop
 * runs over j (contiguous in C and, for op(B) = B, in B) so the compiler vectorises it. */
#define RSM_DEFINE_GEMM(name, real_t)                                                              \
    static void name(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, real_t alpha,      \
                     const real_t *a, int64_t lda, const real_t *b, int64_t ldb, real_t beta,      \
                     real_t *c, int64_t ldc)                                                       \
    {                                                                                              \
        _Pragma("omp parallel for schedule(static) if (m * n * k > 32768)")                        \
        for (int64_t i = 0; i < m; i++) {                                                          \
            real_t *c_row = c + i * ldc;                                                           \
            for (int64_t j = 0; j < n; j++) c_row[j] = beta == 0 ? 0 : beta * c_row[j];            \
            for (int64_t p = 0; p < k; p++) {                                                      \
                real_t a_ip = alpha * (trans_a ? a[p * lda + i] : a[i * lda + p]);                 \
                if (trans_b) {                                                                     \
                    for (int64_t j = 0; j < n; j++) c_row[j] += a_ip * b[j * ldb + p];             \
                } else {                                                                           \
                    const real_t *b_row = b + p * ldb;                                             \
                    for (int64_t j = 0; j < n; j++) c_row[j] += a_ip * b_row[j];                   \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

RSM_DEFINE_GEMM(rsm_sgemm_builtin, float)
RSM_DEFINE_GEMM(rsm_dgemm_builtin, double)

/* Threading: the BLAS runs single-threaded and rsm splits the rows of C over its OpenMP threads.
 * With OpenBLAS's own thread pool next to OpenMP's, the two pools spin against each other on a
 * 2-core machine (measured: a pretraining step took 14.6 ms instead of ~6 ms); one pool avoids
 * that, and each row of C is computed by one thread in a fixed order (deterministic). Chunks are
 * multiples of 16 rows so the BLAS microkernels see whole panels. */
#define RSM_GEMM_SPLIT_FLOPS 2000000.0

static int64_t
rsm_gemm_chunks(int64_t m, int64_t n, int64_t k)
{
    int threads = rsm_get_num_threads();
    if (threads <= 1 || 2.0 * (double)m * (double)n * (double)k < RSM_GEMM_SPLIT_FLOPS || m < 32)
        return 1;
    int64_t chunks = threads;
    if (chunks > m / 16) chunks = m / 16;
    return chunks < 1 ? 1 : chunks;
}

#define RSM_DEFINE_GEMM_DISPATCH(name, real_t, blas_fn, builtin_fn)                                \
    void name(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, real_t alpha,             \
              const real_t *a, int64_t lda, const real_t *b, int64_t ldb, real_t beta, real_t *c,  \
              int64_t ldc)                                                                         \
    {                                                                                              \
        if (m == 0 || n == 0) return;                                                              \
        if (!rsm_blas.blas_fn || rsm_blas.use_builtin || k == 0) {                                 \
            builtin_fn(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);            \
            return;                                                                                \
        }                                                                                          \
        int64_t chunks = rsm_gemm_chunks(m, n, k);                                                 \
        int64_t rows_per = ((m + chunks - 1) / chunks + 15) / 16 * 16;                             \
        _Pragma("omp parallel for schedule(static) num_threads(chunks) if (chunks > 1)")           \
        for (int64_t chunk = 0; chunk < chunks; chunk++) {                                         \
            int64_t row0 = chunk * rows_per;                                                       \
            int64_t rows = m - row0 < rows_per ? m - row0 : rows_per;                              \
            if (rows <= 0) continue;                                                               \
            /* rows row0.. of op(A): A's rows (no transpose) or A's columns (transpose) */         \
            const real_t *a_chunk = trans_a ? a + row0 : a + row0 * lda;                           \
            rsm_blas.blas_fn(CBLAS_ROW_MAJOR, trans_a ? CBLAS_TRANS : CBLAS_NO_TRANS,              \
                             trans_b ? CBLAS_TRANS : CBLAS_NO_TRANS, (int)rows, (int)n, (int)k,    \
                             alpha, a_chunk, (int)lda, b, (int)ldb, beta, c + row0 * ldc,          \
                             (int)ldc);                                                            \
        }                                                                                          \
    }

RSM_DEFINE_GEMM_DISPATCH(rsm_sgemm, float, sgemm, rsm_sgemm_builtin)
RSM_DEFINE_GEMM_DISPATCH(rsm_dgemm, double, dgemm, rsm_dgemm_builtin)
