/* runtime.cu: device discovery, errors, rsm's streams, events, copies and the TF32 switch. */
#include <cuda_runtime.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <mutex>

#include "common.cuh"

namespace rsm_cuda {

static thread_local char g_error[1024];

int
fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(g_error, sizeof(g_error), fmt, ap);
    va_end(ap);
    return code != 0 ? code : 1;
}

int
check(cudaError_t err, const char *what)
{
    if (err == cudaSuccess) return 0;
    (void)cudaGetLastError(); /* clear a non-sticky error so later calls start clean */
    return fail((int)err, "%s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
}

/* One non-blocking stream per device, created on first use and kept (never destroyed: work of a
 * Python object being collected at exit may still reference it). */
constexpr int kMaxDevices = 64;
static cudaStream_t g_streams[kMaxDevices];
static std::mutex g_stream_mutex;

static int
stream_of(int device, cudaStream_t *out)
{
    if (device < 0 || device >= kMaxDevices) return fail(1, "device %d is out of range", device);
    std::lock_guard<std::mutex> lock(g_stream_mutex);
    if (g_streams[device] == nullptr) {
        int prev = 0;
        if (int rc = check(cudaGetDevice(&prev), "cudaGetDevice")) return rc;
        if (int rc = check(cudaSetDevice(device), "cudaSetDevice")) return rc;
        cudaStream_t s = nullptr;
        int rc = check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
        (void)cudaSetDevice(prev);
        if (rc) return rc;
        g_streams[device] = s;
    }
    *out = g_streams[device];
    return 0;
}

cudaStream_t
pick_stream(void *stream)
{
    if (stream != nullptr) return (cudaStream_t)stream;
    int device = 0;
    cudaStream_t s = nullptr;
    if (cudaGetDevice(&device) != cudaSuccess || stream_of(device, &s) != 0) return nullptr;
    return s;
}

static std::atomic<int> g_matmul{RSM_CUDA_MATMUL_IEEE};

}  // namespace rsm_cuda

using namespace rsm_cuda;

extern "C" const char *
rsm_cuda_error(void)
{
    return g_error;
}

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
    (void)cudaGetLastError();
    return (int)err;
}

extern "C" int
rsm_cuda_runtime_version(void)
{
    return CUDART_VERSION;
}

extern "C" int
rsm_cuda_set_device(int device)
{
    return check(cudaSetDevice(device), "cudaSetDevice");
}

extern "C" int
rsm_cuda_stream(int device, void **stream)
{
    cudaStream_t s = nullptr;
    if (int rc = stream_of(device, &s)) return rc;
    *stream = (void *)s;
    return 0;
}

/* DLPack's stream numbers: 1 legacy default, 2 per-thread default; else a cudaStream_t. */
static cudaStream_t
dlpack_stream(void *s)
{
    if (s == (void *)1) return cudaStreamLegacy;
    if (s == (void *)2) return cudaStreamPerThread;
    return (cudaStream_t)s;
}

extern "C" int
rsm_cuda_stream_wait(int device, void *producer, void *consumer)
{
    cudaStream_t p = dlpack_stream(producer), c = dlpack_stream(consumer);
    if (p == c) return 0;
    if (int rc = check(cudaSetDevice(device), "cudaSetDevice")) return rc;
    cudaEvent_t ev;
    if (int rc = check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate"))
        return rc;
    int rc = check(cudaEventRecord(ev, p), "cudaEventRecord");
    if (!rc) rc = check(cudaStreamWaitEvent(c, ev, 0), "cudaStreamWaitEvent");
    (void)cudaEventDestroy(ev); /* destroyed after the wait is enqueued: allowed, the wait holds */
    return rc;
}

extern "C" int
rsm_cuda_stream_synchronize(int device, void *stream)
{
    if (int rc = check(cudaSetDevice(device), "cudaSetDevice")) return rc;
    cudaStream_t s = stream ? dlpack_stream(stream) : nullptr;
    if (s == nullptr && stream_of(device, &s) != 0) return 1;
    return check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
}

extern "C" int
rsm_cuda_event_record(int device, void *stream, void **event)
{
    if (int rc = check(cudaSetDevice(device), "cudaSetDevice")) return rc;
    cudaEvent_t ev;
    if (int rc = check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate"))
        return rc;
    if (int rc = check(cudaEventRecord(ev, pick_stream(stream)), "cudaEventRecord")) {
        (void)cudaEventDestroy(ev);
        return rc;
    }
    *event = (void *)ev;
    return 0;
}

extern "C" int
rsm_cuda_event_done(void *event)
{
    cudaError_t err = cudaEventQuery((cudaEvent_t)event);
    if (err == cudaSuccess) return 1;
    if (err == cudaErrorNotReady) {
        (void)cudaGetLastError();
        return 0;
    }
    return -check(err, "cudaEventQuery");
}

extern "C" void
rsm_cuda_event_destroy(void *event)
{
    if (event) (void)cudaEventDestroy((cudaEvent_t)event);
}

extern "C" int
rsm_cuda_memcpy(int device, void *dst, const void *src, size_t bytes, int kind, void *stream)
{
    if (bytes == 0) return 0;
    if (int rc = check(cudaSetDevice(device), "cudaSetDevice")) return rc;
    static const cudaMemcpyKind kinds[3] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                                            cudaMemcpyDeviceToDevice};
    if (kind < 0 || kind > 2) return fail(1, "memcpy kind %d", kind);
    cudaStream_t s = pick_stream(stream);
    if (int rc = check(cudaMemcpyAsync(dst, src, bytes, kinds[kind], s), "cudaMemcpyAsync"))
        return rc;
    /* Host -> device from pageable memory is staged before cudaMemcpyAsync returns (CUDA's API
     * synchronisation rules), so the host buffer may go at once and the copy stays ordered on
     * the stream; device -> host must be complete before the caller reads the buffer. */
    if (kind != 1) return 0;
    return check(cudaStreamSynchronize(s), "cudaStreamSynchronize (memcpy)");
}

extern "C" int
rsm_cuda_memset_zero(int device, void *dst, size_t bytes, void *stream)
{
    if (bytes == 0) return 0;
    if (int rc = check(cudaSetDevice(device), "cudaSetDevice")) return rc;
    return check(cudaMemsetAsync(dst, 0, bytes, pick_stream(stream)), "cudaMemsetAsync");
}

extern "C" int
rsm_cuda_set_matmul(int mode)
{
    if (mode < RSM_CUDA_MATMUL_IEEE || mode > RSM_CUDA_MATMUL_BF16)
        return fail(1, "matmul mode %d is not IEEE (0), TF32 (1) or BF16 (2)", mode);
    g_matmul.store(mode);
    return 0;
}

extern "C" int
rsm_cuda_get_matmul(void)
{
    return g_matmul.load();
}
