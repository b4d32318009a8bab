/* device.cu: CUDA device discovery for rsm._cuda (see rsm_cuda.h). */
#include <cuda_runtime.h>

#include <cstdio>

#include "rsm_cuda.h"

extern "C" int
rsm_cuda_device_count(int *count, char *reason, size_t len)
{
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (reason != nullptr && len > 0) reason[0] = '\0';
    if (err == cudaSuccess) {
        *count = n;
        if (n == 0 && reason != nullptr && len > 0) std::snprintf(reason, len, "no CUDA device");
        return 0;
    }
    *count = 0;
    if (reason != nullptr && len > 0) {
        std::snprintf(reason, len, "%s (%s)", cudaGetErrorString(err), cudaGetErrorName(err));
    }
    (void)cudaGetLastError(); /* clear the sticky-free error so later calls start clean */
    return (int)err;
}

extern "C" int
rsm_cuda_runtime_version(void)
{
    return CUDART_VERSION;
}
