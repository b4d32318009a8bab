/* real.h: the `real_t` type of the numeric templates. Included (re-includable, no guard) by every
 * *_real.c file, which are compiled once per precision through csrc/precision_f32.c and
 * csrc/precision_f64.c with RSM_REAL_BITS = 32 or 64:
 *
 *   RSM_T(mlp_forward)  ->  rsm_mlp_forward_f32  /  rsm_mlp_forward_f64
 *
 * so float32 (the working precision) and float64 (for gradient checks) come from one source.
 * <tgmath.h> makes exp/log/sqrt/... resolve to the right precision.
 */
#include <tgmath.h>
/* <tgmath.h> pulls in <complex.h>, whose macro I (the imaginary unit) we never use */
#undef I

#undef RSM_T
#undef RSM_REAL_DTYPE
#undef RSM_GEMM
#undef RSM_REAL_EPS

#if RSM_REAL_BITS == 32
typedef float real_t;
#define RSM_T(name) rsm_##name##_f32
#define RSM_REAL_DTYPE RSM_F32
#define RSM_GEMM rsm_sgemm
#define RSM_REAL_EPS 1.1920929e-07f
#elif RSM_REAL_BITS == 64
typedef double real_t;
#define RSM_T(name) rsm_##name##_f64
#define RSM_REAL_DTYPE RSM_F64
#define RSM_GEMM rsm_dgemm
#define RSM_REAL_EPS 2.220446049250313e-16
#else
#error "define RSM_REAL_BITS to 32 or 64 (compile *_real.c through csrc/precision_f*.c)"
#endif
