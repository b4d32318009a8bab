/* rsm_cuda.h: the C interface of rsm's CUDA code (kernels/*.cu), used by rsm._cuda's binding
 * (csrc/python/cuda_module.c). Everything here has C linkage and never aborts: errors come back
 * as values. */
#ifndef RSM_CUDA_H
#define RSM_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of visible CUDA devices in *count. When there is none, or the driver is missing or too
 * old ("no device", "insufficient driver"), *count is 0 and `reason` (len bytes, NUL-terminated)
 * says why; otherwise reason is "". Returns the cudaError_t of cudaGetDeviceCount (0: success). */
int rsm_cuda_device_count(int *count, char *reason, size_t len);

/* CUDA runtime version rsm was built with and links (statically), e.g. 13000 for 13.0. */
int rsm_cuda_runtime_version(void);

#ifdef __cplusplus
}
#endif

#endif /* RSM_CUDA_H */
