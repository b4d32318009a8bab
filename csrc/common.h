/* common.h: macros shared by the C core and the CUDA kernels. */
#ifndef RSM_COMMON_H
#define RSM_COMMON_H

/* Per-element math lives in `static inline RSM_HOST_DEVICE` functions in headers, so the CPU loop
 * and the CUDA kernel call the same code and cannot drift apart. */
#ifdef __CUDACC__
#define RSM_HOST_DEVICE __host__ __device__
#else
#define RSM_HOST_DEVICE
#endif

#define RSM_PI 3.14159265358979323846
#define RSM_LOG_2PI 1.83787706640934548356

#endif /* RSM_COMMON_H */
