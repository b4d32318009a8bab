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
 * that.
 *
 * Thread-count invariance: the rows of C are cut into TILES whose size depends on the shape
 * (m, n, k) only, never on the thread count, and each tile is one single-threaded BLAS call.
 * OpenBLAS may take another code path (and another summation order) for another row count, so
 * splitting by the thread count gave other bits at 2, 3 or 8 threads for some shapes (NN
 * products whose width is not a multiple of 16, e.g. 512x120x120); with fixed tiles every
 * element of C is computed by the same call on the same operands whatever the number of threads
 * (1, 2, 3, 8 ...), so results are bitwise equal for any thread count on the same build and CPU
 * family.
 * Tiles are multiples of 16 rows (whole microkernel panels), at least 128 rows, and at most 8 per
 * GEMM (few calls: each one packs op(B) again). The tiles are handed out dynamically: a thread
 * that a busy machine deschedules does not hold the others back, and the bits do not depend on
 * which thread computed a tile. GEMMs under RSM_GEMM_SPLIT_FLOPS stay one call. */
#define RSM_GEMM_SPLIT_FLOPS 2000000.0
#define RSM_GEMM_TILE_MIN 128
#define RSM_GEMM_TILES_MAX 8

static int64_t
rsm_gemm_tile_rows(int64_t m, int64_t n, int64_t k)
{
    if (2.0 * (double)m * (double)n * (double)k < RSM_GEMM_SPLIT_FLOPS || m <= RSM_GEMM_TILE_MIN)
        return m;
    int64_t rows = ((m + RSM_GEMM_TILES_MAX - 1) / RSM_GEMM_TILES_MAX + 15) / 16 * 16;
    return rows < RSM_GEMM_TILE_MIN ? RSM_GEMM_TILE_MIN : rows;
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
        const int64_t rows_per = rsm_gemm_tile_rows(m, n, k);                                      \
        const int64_t tiles = (m + rows_per - 1) / rows_per;                                       \
        int threads = rsm_get_num_threads();                                                       \
        if (threads > tiles) threads = (int)tiles;                                                 \
        _Pragma("omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)")     \
        for (int64_t tile = 0; tile < tiles; tile++) {                                             \
            int64_t row0 = tile * rows_per;                                                        \
            int64_t rows = m - row0 < rows_per ? m - row0 : rows_per;                              \
            /* rows row0.. of op(A): A's rows (no transpose) or A's columns (transpose) */         \
            const real_t *a_tile = trans_a ? a + row0 : a + row0 * lda;                            \
            rsm_blas.blas_fn(CBLAS_ROW_MAJOR, trans_a ? CBLAS_TRANS : CBLAS_NO_TRANS,              \
                             trans_b ? CBLAS_TRANS : CBLAS_NO_TRANS, (int)rows, (int)n, (int)k,    \
                             alpha, a_tile, (int)lda, b, (int)ldb, beta, c + row0 * ldc,           \
                             (int)ldc);                                                            \
        }                                                                                          \
    }

RSM_DEFINE_GEMM_DISPATCH(rsm_sgemm, float, sgemm, rsm_sgemm_builtin)
RSM_DEFINE_GEMM_DISPATCH(rsm_dgemm, double, dgemm, rsm_dgemm_builtin)
