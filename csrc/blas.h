/* blas.h: row-major GEMM for the CPU, through a CBLAS loaded at run time (OpenBLAS from the
 * scipy-openblas32 wheel, found by rsm/__init__.py) or, without one, rsm's own kernel.
 *
 * Loading at run time (dlopen) instead of linking keeps the build free of a BLAS dependency and
 * lets `import rsm` work on any machine; build_info() reports which one is in use.
 */
#ifndef RSM_BLAS_H
#define RSM_BLAS_H

#include <stdint.h>

#include "status.h"

typedef struct rsm_blas_info {
    const char *name; /* "openblas <corename> <config>" or "rsm (built-in kernel)" */
    const char *path; /* the library loaded, or "" */
} rsm_blas_info;

rsm_status rsm_blas_load(const char *path);
rsm_blas_info rsm_blas_get_info(void);

/* Threads used by rsm's own loops (OpenMP) and by the BLAS. */
void rsm_set_num_threads(int n);
int rsm_get_num_threads(void);

/* C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C, all row-major; op(X) = X or X^T.
 * lda/ldb/ldc are the row strides of the stored matrices (as in CBLAS, CblasRowMajor). */
void rsm_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
               const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
               int64_t ldc);
void rsm_dgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, double alpha,
               const double *a, int64_t lda, const double *b, int64_t ldb, double beta, double *c,
               int64_t ldc);

/* Force the built-in kernel even when a BLAS is loaded (benchmarks compare both). */
void rsm_blas_use_builtin(int use_builtin);

#endif /* RSM_BLAS_H */
