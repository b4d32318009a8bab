/* real.h: the one precision scheme of the C core and the CUDA kernels.
 *
 * Every numeric body is written once over `real_t` and instantiated for float32 (the working
 * precision) and float64 (gradient checks):
 *
 * - Entry points and loops live in *_real.c files, compiled once per precision through
 *   csrc/precision_f32.c and csrc/precision_f64.c (RSM_REAL_BITS = 32 or 64), where
 *   RSM_T(mlp_forward) names rsm_mlp_forward_f32 / rsm_mlp_forward_f64. Their prototypes come from
 *   one X-macro list, RSM_REAL_API in csrc/real_api.h (one entry per function, spelling both
 *   full names, so `grep -rn rsm_sample_f32 csrc` finds the declaration), and an rsm_dtype picks
 *   the precision in one place, RSM_REAL_CALL (real_api.h); the kernels' counterpart is
 *   RSM_DISPATCH_REAL (kernels/common.cuh).
 * - Per-element and per-row bodies live in csrc/ops/ headers as `RSM_ELEM` functions named
 *   RSM_E(name), shared by the CPU loops and the CUDA kernels: in a C translation unit of one
 *   precision RSM_E(silu) is rsm_silu_f32 (or _f64); compiled as CUDA (C++) it is the function
 *   template rsm_silu<real_t>, which a kernel calls as rsm_silu<real>. Each such header opens
 *   with a `defines:` line listing the names it defines. Bodies that are double whatever the
 *   working type (ops/objective_elem.h, ops/guidance.h, path.h, rng.h) are plain functions.
 * - Structs that differ only by precision are written once: RSM_ELEM_TEMPLATE struct RSM_E(name)
 *   in the element headers, a field-list macro for the twin public structs (rsm_trajectory_*,
 *   rsm_branch_out_*), RSM_T(name) structs inside the *_real.c files.
 * - What really differs by precision is named here and in ops/real_math.h, nowhere else: the
 *   BLAS routine (RSM_GEMM; cublasSgemm/Dgemm in kernels/mlp.cu), the machine epsilon, the dtype
 *   code, and the float32 fast exp/tanh (rsm_exp_real, rsm_tanh_real) that let gcc vectorise.
 * tests/test_precision_scheme.py checks the list, the absence of per-precision copies in
 * csrc/ops/ and of overload shims in kernels/, and that the core dispatches only through
 * RSM_REAL_CALL.
 *
 * To add an op: its element body in an ops/ header (RSM_ELEM, RSM_E), its loop or entry point
 * in a *_real.c file (RSM_T) included by both precision_f*.c, one entry in real_api.h if other
 * files call it, and RSM_REAL_CALL where a dtype chooses; a kernel instantiates the same body.
 *
 * In C this file is included again by every *_real.c (no include guard): <tgmath.h> makes
 * exp/log/sqrt/... resolve to the precision of their argument.
 */
#include "common.h"

#ifdef __cplusplus

/* CUDA (C++): element bodies are function templates over real_t; no RSM_REAL_BITS. */
#ifndef RSM_REAL_CXX_H
#define RSM_REAL_CXX_H
#include <math.h>
#define RSM_ELEM_TEMPLATE template <typename real_t>
#define RSM_ELEM RSM_ELEM_TEMPLATE static inline RSM_HOST_DEVICE
#define RSM_E(name) rsm_##name
/* the type of a templated struct inside an element body */
#define RSM_ET(name) rsm_##name<real_t>
#endif

#else /* C */

#include <tgmath.h>
/* <tgmath.h> pulls in <complex.h>, whose macro I (the imaginary unit) we never use */
#undef I

#undef RSM_T
#undef RSM_REAL_DTYPE
#undef RSM_GEMM
#undef RSM_REAL_EPS
#undef RSM_ELEM_TEMPLATE
#undef RSM_ELEM
#undef RSM_E
#undef RSM_ET

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

#define RSM_ELEM_TEMPLATE
#define RSM_ELEM static inline RSM_HOST_DEVICE
#define RSM_E(name) RSM_T(name)
#define RSM_ET(name) RSM_T(name)

#endif /* __cplusplus */
