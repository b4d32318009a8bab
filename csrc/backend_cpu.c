/* backend_cpu.c: the CPU backend (backend.h): host memory (rsm_malloc, 64-byte aligned), no
 * stream, nothing to fail after allocation; the precision-specific ops are
 * rsm_backend_cpu_ops_f32 / _f64 of backend_cpu_real.c (compiled by precision_f*.c). */
#include "backend.h"
#include "rng.h"
#include "tensor.h"

#include <string.h>

static void *
rsm_cpu_alloc(const rsm_backend *be, size_t bytes)
{
    (void)be;
    return rsm_malloc(bytes);
}

static void
rsm_cpu_free(const rsm_backend *be, void *ptr)
{
    (void)be;
    rsm_free(ptr);
}

static void
rsm_cpu_memset_zero(const rsm_backend *be, void *dst, size_t bytes)
{
    (void)be;
    if (bytes) memset(dst, 0, bytes);
}

/* host and device are the same memory: every kind is a memcpy (memmove where they overlap is
 * the caller's error, as for memcpy) */
static void
rsm_cpu_copy(const rsm_backend *be, void *dst, const void *src, size_t bytes, rsm_copy_kind kind)
{
    (void)be;
    (void)kind;
    if (bytes && dst != src) memcpy(dst, src, bytes);
}

static rsm_status
rsm_cpu_no_error(const rsm_backend *be)
{
    (void)be;
    return RSM_OK;
}

static void
rsm_cpu_fill_index(const rsm_backend *be, uint64_t seed, uint64_t stream, uint64_t offset,
                   int64_t n, int64_t bound, int64_t *out)
{
    (void)be;
    rsm_fill_index(seed, stream, offset, n, bound, out);
}

const rsm_backend rsm_backend_cpu = {
    .kind = RSM_DEVICE_CPU,
    .device = 0,
    .name = "cpu",
    .stream = NULL,
    .ctx = NULL,
    .alloc = rsm_cpu_alloc,
    .free = rsm_cpu_free,
    .memset_zero = rsm_cpu_memset_zero,
    .copy = rsm_cpu_copy,
    .synchronize = rsm_cpu_no_error,
    .check = rsm_cpu_no_error,
    .fill_index = rsm_cpu_fill_index,
    .f32 = &rsm_backend_cpu_ops_f32,
    .f64 = &rsm_backend_cpu_ops_f64,
};
