/* status.h: error codes and the thread-local error message of the rsm C core.
 *
 * The core never exits or aborts. Every fallible function returns an rsm_status; on failure it
 * stores a human-readable message (file:line, the offending values, a hint) in a thread-local
 * buffer that the binding turns into the right Python exception (see csrc/python/module.c).
 */
#ifndef RSM_STATUS_H
#define RSM_STATUS_H

#include <stdarg.h>

typedef enum rsm_status {
    RSM_OK = 0,
    RSM_ERR_VALUE = 1,       /* a wrong value or shape: ValueError */
    RSM_ERR_TYPE = 2,        /* a wrong type or dtype: TypeError */
    RSM_ERR_MEMORY = 3,      /* allocation failed: MemoryError */
    RSM_ERR_BUFFER = 4,      /* data that cannot be exchanged (DLPack): BufferError */
    RSM_ERR_DEVICE = 5,      /* device missing or CUDA failure: RuntimeError */
    RSM_ERR_IO = 6,          /* file errors: OSError */
    RSM_ERR_CALLBACK = 7,    /* a user callback raised; the Python exception is already set */
    RSM_ERR_NUMERIC = 8,     /* NaN/inf met where a finite number is required: FloatingPointError */
    RSM_ERR_INTERNAL = 9     /* a bug in rsm: RuntimeError */
} rsm_status;

const char *rsm_status_to_string(rsm_status status);

/* The last error message of this thread ("" if none). */
const char *rsm_last_error(void);
void rsm_clear_error(void);

/* Stores a formatted message and returns `status`, so a caller can write
 * `return rsm_fail(RSM_ERR_VALUE, "...", ...)`. */
rsm_status rsm_fail(rsm_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* RSM_CHECK(cond, code, fmt, ...): on failure record the message and return `code`. Use only in
 * functions that have nothing to free; otherwise use RSM_CHECK_GOTO and one `fail:` label. */
#define RSM_CHECK(cond, code, ...)                                                                 \
    do {                                                                                           \
        if (!(cond)) return rsm_fail((code), __VA_ARGS__);                                         \
    } while (0)

#define RSM_CHECK_GOTO(cond, code, ...)                                                            \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            status = rsm_fail((code), __VA_ARGS__);                                                \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

/* Propagate a status from a callee (its message is already stored). */
#define RSM_TRY(expr)                                                                              \
    do {                                                                                           \
        rsm_status rsm_try_status_ = (expr);                                                       \
        if (rsm_try_status_ != RSM_OK) return rsm_try_status_;                                     \
    } while (0)

#define RSM_TRY_GOTO(expr)                                                                         \
    do {                                                                                           \
        status = (expr);                                                                           \
        if (status != RSM_OK) goto fail;                                                           \
    } while (0)

#endif /* RSM_STATUS_H */
