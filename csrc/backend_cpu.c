/* backend_cpu.c: the CPU backend (backend.h): host memory (rsm_malloc, 64-byte aligned), no
 * stream, nothing to fail after allocation; the precision-specific ops are
 * rsm_backend_cpu_ops_f32 / _f64 of backend_cpu_real.c (compiled by precision_f*.c). */
#include "backend.h"
#include "rng.h"
#include "tensor.h"

#include <stdio.h>
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

/* ---- introspection (tests/test_backend.py) --------------------------------------------------- */

#define RSM_BACKEND_OP_NAME(ret, name, params) #name,
static const char *const rsm_backend_op_names[] = {RSM_BACKEND_OPS(RSM_BACKEND_OP_NAME, float)};
#undef RSM_BACKEND_OP_NAME

int64_t
rsm_backend_op_count(void)
{
    return (int64_t)(sizeof(rsm_backend_op_names) / sizeof(rsm_backend_op_names[0]));
}

const char *
rsm_backend_op_name(int64_t i)
{
    return i >= 0 && i < rsm_backend_op_count() ? rsm_backend_op_names[i] : NULL;
}

static void
rsm_backend_note_missing(int64_t *count, char *msg, size_t len, const char *prefix,
                         const char *name)
{
    *count += 1;
    size_t used = strlen(msg);
    if (used + strlen(prefix) + strlen(name) + 2 < len)
        snprintf(msg + used, len - used, "%s%s%s", used ? " " : "", prefix, name);
}

int64_t
rsm_backend_missing(const rsm_backend *be, char *msg, size_t len)
{
    int64_t count = 0;
    if (len) msg[0] = '\0';
#define RSM_BACKEND_TOP(field)                                                                     \
    if (!be->field) rsm_backend_note_missing(&count, msg, len, "", #field);
    RSM_BACKEND_TOP(name)
    RSM_BACKEND_TOP(alloc)
    RSM_BACKEND_TOP(free)
    RSM_BACKEND_TOP(memset_zero)
    RSM_BACKEND_TOP(copy)
    RSM_BACKEND_TOP(synchronize)
    RSM_BACKEND_TOP(check)
    RSM_BACKEND_TOP(fill_index)
    RSM_BACKEND_TOP(f32)
    RSM_BACKEND_TOP(f64)
#undef RSM_BACKEND_TOP
#define RSM_BACKEND_OP_F32(ret, name, params)                                                      \
    if (be->f32 && !be->f32->name) rsm_backend_note_missing(&count, msg, len, "f32.", #name);
#define RSM_BACKEND_OP_F64(ret, name, params)                                                      \
    if (be->f64 && !be->f64->name) rsm_backend_note_missing(&count, msg, len, "f64.", #name);
    RSM_BACKEND_OPS(RSM_BACKEND_OP_F32, float)
    RSM_BACKEND_OPS(RSM_BACKEND_OP_F64, double)
#undef RSM_BACKEND_OP_F32
#undef RSM_BACKEND_OP_F64
    return count;
}
