/* alloc.cu: the caching device allocator. cudaMalloc and cudaFree synchronise the device and cost
 * tens of microseconds; a training loop allocates the same few sizes over and over. Blocks are
 * rounded to a size class and, when freed, kept on a per-device free list of that class, from
 * which the next allocation of the class is served without a driver call.
 *
 * Size classes: up to 1 MiB, multiples of 512 bytes rounded up to the next power of two (so at
 * most 2x waste for small blocks, few classes); above 1 MiB, multiples of 2 MiB.
 *
 * Stream safety: every rsm kernel on a device runs on rsm's one stream of that device, so a block
 * freed after work was queued on that stream and handed out again is used by later work on the
 * same stream: stream order makes the reuse safe without events (the rule of torch's caching
 * allocator for single-stream use). Memory lent to other libraries (DLPack export) stays with its
 * rsm.Tensor, which frees it only when the last consumer released it.
 */
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "common.cuh"

namespace {

constexpr size_t kSmall = size_t(1) << 20;
constexpr size_t kLargeStep = size_t(2) << 20;

size_t
size_class(size_t bytes)
{
    if (bytes == 0) bytes = 1;
    if (bytes <= kSmall) {
        size_t c = 512;
        while (c < bytes) c <<= 1;
        return c;
    }
    return (bytes + kLargeStep - 1) / kLargeStep * kLargeStep;
}

struct DevicePool {
    std::map<size_t, std::vector<void *>> free_lists; /* class -> free blocks */
    std::unordered_map<void *, size_t> live;          /* block -> class, handed out */
    std::unordered_map<void *, size_t> owned;         /* every cudaMalloc'd block -> class */
    rsm_cuda_alloc_stats stats{};
};

constexpr int kMaxDevices = 64;
std::mutex g_mutex;
DevicePool g_pools[kMaxDevices];

void
note_peaks(rsm_cuda_alloc_stats &s)
{
    if (s.allocated_bytes > s.peak_allocated_bytes) s.peak_allocated_bytes = s.allocated_bytes;
    if (s.reserved_bytes > s.peak_reserved_bytes) s.peak_reserved_bytes = s.reserved_bytes;
}

/* Give every free block of `pool` back to the driver (caller holds the lock, device set). */
void
release_free(DevicePool &pool)
{
    for (auto &entry : pool.free_lists) {
        for (void *p : entry.second) {
            (void)cudaFree(p);
            pool.owned.erase(p);
            pool.stats.reserved_bytes -= entry.first;
        }
        entry.second.clear();
    }
}

}  // namespace

using rsm_cuda::check;
using rsm_cuda::fail;

extern "C" int
rsm_cuda_alloc(int device, size_t bytes, void **out)
{
    if (device < 0 || device >= kMaxDevices) return fail(1, "device %d is out of range", device);
    const size_t cls = size_class(bytes);
    std::lock_guard<std::mutex> lock(g_mutex);
    DevicePool &pool = g_pools[device];
    pool.stats.num_allocs++;
    auto it = pool.free_lists.find(cls);
    if (it != pool.free_lists.end() && !it->second.empty()) {
        void *p = it->second.back();
        it->second.pop_back();
        pool.live[p] = cls;
        pool.stats.num_cache_hits++;
        pool.stats.allocated_bytes += cls;
        note_peaks(pool.stats);
        *out = p;
        return 0;
    }
    if (int rc = check(cudaSetDevice(device), "cudaSetDevice")) return rc;
    void *p = nullptr;
    cudaError_t err = cudaMalloc(&p, cls);
    if (err == cudaErrorMemoryAllocation) {
        /* out of memory: return the cached blocks to the driver and try once more */
        (void)cudaGetLastError();
        (void)cudaDeviceSynchronize();
        release_free(pool);
        err = cudaMalloc(&p, cls);
    }
    if (err != cudaSuccess) {
        char what[96];
        std::snprintf(what, sizeof(what), "cudaMalloc(%zu bytes) on cuda:%d", cls, device);
        return check(err, what);
    }
    pool.stats.num_device_mallocs++;
    pool.owned[p] = cls;
    pool.live[p] = cls;
    pool.stats.reserved_bytes += cls;
    pool.stats.allocated_bytes += cls;
    note_peaks(pool.stats);
    *out = p;
    return 0;
}

extern "C" void
rsm_cuda_free(int device, void *ptr)
{
    if (ptr == nullptr || device < 0 || device >= kMaxDevices) return;
    std::lock_guard<std::mutex> lock(g_mutex);
    DevicePool &pool = g_pools[device];
    auto it = pool.live.find(ptr);
    if (it == pool.live.end()) return; /* not ours (or freed twice): ignore rather than corrupt */
    size_t cls = it->second;
    pool.live.erase(it);
    pool.free_lists[cls].push_back(ptr);
    pool.stats.allocated_bytes -= cls;
    pool.stats.num_frees++;
}

extern "C" int
rsm_cuda_alloc_stats_get(int device, rsm_cuda_alloc_stats *out)
{
    if (device < 0 || device >= kMaxDevices) return fail(1, "device %d is out of range", device);
    std::lock_guard<std::mutex> lock(g_mutex);
    *out = g_pools[device].stats;
    return 0;
}

extern "C" int
rsm_cuda_empty_cache(int device)
{
    if (device < 0 || device >= kMaxDevices) return fail(1, "device %d is out of range", device);
    std::lock_guard<std::mutex> lock(g_mutex);
    if (int rc = check(cudaSetDevice(device), "cudaSetDevice")) return rc;
    /* blocks on the free list may still be read by queued work: wait for it first */
    if (int rc = check(cudaDeviceSynchronize(), "cudaDeviceSynchronize")) return rc;
    release_free(g_pools[device]);
    return 0;
}
