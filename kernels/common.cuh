/* common.cuh: what the .cu files share: error reporting (rsm_cuda_error), launch checks, the
 * stream choice, grid sizes, and the float/double dispatch. */
#ifndef RSM_KERNELS_COMMON_CUH
#define RSM_KERNELS_COMMON_CUH

#include <cuda_runtime.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>

#include "rsm_cuda.h"

namespace rsm_cuda {

/* Record a failure message (thread-local) and return code (nonzero). */
int fail(int code, const char *fmt, ...);
/* cudaError_t -> 0 or a recorded failure naming `what`. */
int check(cudaError_t err, const char *what);
/* The stream to use: `stream` or rsm's own stream of the current device. */
cudaStream_t pick_stream(void *stream);

constexpr int kThreads = 256;

inline unsigned
grid_for(int64_t n, int threads = kThreads)
{
    int64_t blocks = (n + threads - 1) / threads;
    if (blocks < 1) blocks = 1;
    /* grid-stride loops cover the rest: 65535 x 256 threads is plenty for any element count */
    return (unsigned)(blocks > 65535 ? 65535 : blocks);
}

/* The sum of `value` over a block of kThreads threads, added in a fixed tree order (the result
 * does not depend on scheduling, so reductions built on it are deterministic run to run); the
 * value returned is the block's sum in every thread. One call per kernel (one shared buffer). */
__device__ inline double
block_sum(double value)
{
    __shared__ double partial[kThreads];
    partial[threadIdx.x] = value;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    return partial[0];
}

/* The second pass of a two-pass reduction, in a one-block launch (<<<1, kThreads>>>): the sum of
 * the first pass's n per-block partials, in a fixed order (deterministic), in every thread. */
__device__ inline double
sum_partials(int n, const double *partial)
{
    double acc = 0.0;
    for (int k = threadIdx.x; k < n; k += blockDim.x) acc += partial[k];
    return block_sum(acc);
}

/* Row kernels (sampler, objective) give each row one warp of kWarp lanes, kRowsPerBlock rows per
 * block; warp_sum is the sum over the warp's lanes in a fixed butterfly order (deterministic),
 * returned in every lane. */
constexpr int kWarp = 32;
constexpr int kRowsPerBlock = kThreads / kWarp;

__device__ inline double
warp_sum(double v)
{
    for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* After a launch: the launch error, if any. */
inline int
launched(const char *what)
{
    return check(cudaGetLastError(), what);
}

}  // namespace rsm_cuda

/* Call body with `real` = float or double for dtype 0 / 1: the kernels' one dtype dispatch (the
 * C core's is RSM_REAL_CALL, csrc/real_api.h). */
#define RSM_DISPATCH_REAL(dtype, what, ...)                                                    \
    do {                                                                                       \
        if ((dtype) == 0) {                                                                    \
            typedef float real;                                                                \
            __VA_ARGS__                                                                        \
        } else if ((dtype) == 1) {                                                             \
            typedef double real;                                                               \
            __VA_ARGS__                                                                        \
        } else {                                                                               \
            return rsm_cuda::fail(1, "%s: dtype code %d is not float32 (0) or float64 (1)",   \
                                  what, (int)(dtype));                                         \
        }                                                                                      \
    } while (0)

#endif /* RSM_KERNELS_COMMON_CUH */
