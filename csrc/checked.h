/* checked.h: overflow-checked size arithmetic, and the upper bounds on sizes, in one place.
 *
 * Every size the core computes from user input (a layout's offsets and parameter count, the rows
 * of a branched rollout, a batch's elements, an allocation's bytes) goes through these helpers, so
 * a huge argument is refused with a status that names it instead of wrapping around int64 and
 * sizing a buffer too small for what is later written into it.
 *
 * The helpers are sticky: rsm_size_mul / rsm_size_add take an `int *ok` that they clear on
 * overflow (or on a negative operand, which a size never is) and then return RSM_SIZE_INVALID, an
 * absorbing value (INT64_MAX: every later product or sum with it overflows again). A layout is
 * written as plain arithmetic through them and checked once at the end:
 *
 *     int ok = 1;
 *     l.num_params = rsm_size_add(rsm_size_mul(c.hidden, c.hidden, &ok), c.dim, &ok);
 *     RSM_CHECK(rsm_size_within(l.num_params, ok), RSM_ERR_VALUE, "... names the arguments ...");
 *
 * The bounds. RSM_MAX_ELEMS = 2^40 (about 1.1e12) elements bounds every single buffer, every
 * parameter count and every argument that is a size (a dimension, a depth, a number of rows or
 * classes). It is far above anything real (2^40 float32 are 4 TiB, more memory than any machine
 * rsm runs on has, host or device), so it refuses nothing a user can actually allocate; and it is
 * far below int64's range (2^63), so any product of a bounded size with an element size (<= 8
 * bytes) or with the small constants of a layout (6W, 4W, ...) cannot overflow. Sizes above the
 * bound are refused as values (ValueError naming the argument) before any allocation is tried;
 * sizes below it that the allocator cannot satisfy fail as RSM_ERR_MEMORY (MemoryError).
 */
#ifndef RSM_CHECKED_H
#define RSM_CHECKED_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define RSM_MAX_ELEMS_LOG2 40
#define RSM_MAX_ELEMS ((int64_t)1 << RSM_MAX_ELEMS_LOG2)
#define RSM_SIZE_INVALID INT64_MAX

/* a * b for sizes: both must be >= 0 and the product must fit int64; else *ok = 0. */
static inline int64_t
rsm_size_mul(int64_t a, int64_t b, int *ok)
{
    int64_t r;
    if (a < 0 || b < 0 || a == RSM_SIZE_INVALID || b == RSM_SIZE_INVALID ||
        __builtin_mul_overflow(a, b, &r)) {
        *ok = 0;
        return RSM_SIZE_INVALID;
    }
    return r;
}

/* a + b for sizes, as rsm_size_mul. */
static inline int64_t
rsm_size_add(int64_t a, int64_t b, int *ok)
{
    int64_t r;
    if (a < 0 || b < 0 || a == RSM_SIZE_INVALID || b == RSM_SIZE_INVALID ||
        __builtin_add_overflow(a, b, &r)) {
        *ok = 0;
        return RSM_SIZE_INVALID;
    }
    return r;
}

static inline int64_t
rsm_size_mul3(int64_t a, int64_t b, int64_t c, int *ok)
{
    return rsm_size_mul(rsm_size_mul(a, b, ok), c, ok);
}

/* 1 when a size computed with `ok` is valid and within RSM_MAX_ELEMS. */
static inline int
rsm_size_within(int64_t value, int ok)
{
    return ok && value >= 0 && value <= RSM_MAX_ELEMS;
}

/* Refuse a size argument outside [minimum, RSM_MAX_ELEMS] (RSM_ERR_VALUE, the message names it). */
static inline rsm_status
rsm_check_size_arg(const char *name, int64_t value, int64_t minimum)
{
    RSM_CHECK(value >= minimum, RSM_ERR_VALUE, "%s=%lld must be >= %lld", name, (long long)value,
              (long long)minimum);
    RSM_CHECK(value <= RSM_MAX_ELEMS, RSM_ERR_VALUE,
              "%s=%lld is larger than any size rsm accepts (2^%d, see csrc/checked.h)", name,
              (long long)value, RSM_MAX_ELEMS_LOG2);
    return RSM_OK;
}

/* The bytes of `elems` elements of `itemsize` bytes, for an allocation: refuses (RSM_ERR_VALUE,
 * naming `what`) a count that is invalid or above RSM_MAX_ELEMS. */
static inline rsm_status
rsm_size_bytes(int64_t elems, int ok, size_t itemsize, const char *what, size_t *bytes)
{
    RSM_CHECK(rsm_size_within(elems, ok), RSM_ERR_VALUE,
              "%s needs more than 2^%d elements: a size is too large (see csrc/checked.h)", what,
              RSM_MAX_ELEMS_LOG2);
    *bytes = (size_t)elems * itemsize;
    return RSM_OK;
}

#endif /* RSM_CHECKED_H */
