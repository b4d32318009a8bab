/* status.c: the thread-local error message behind rsm_fail / rsm_last_error. */
#include "status.h"

#include <stdio.h>

static _Thread_local char rsm_error_message[1024];

const char *
rsm_status_to_string(rsm_status status)
{
    switch (status) {
    case RSM_OK: return "ok";
    case RSM_ERR_VALUE: return "invalid value";
    case RSM_ERR_TYPE: return "invalid type";
    case RSM_ERR_MEMORY: return "out of memory";
    case RSM_ERR_BUFFER: return "buffer cannot be exchanged";
    case RSM_ERR_DEVICE: return "device error";
    case RSM_ERR_IO: return "i/o error";
    case RSM_ERR_CALLBACK: return "callback failed";
    case RSM_ERR_NUMERIC: return "non-finite number";
    case RSM_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *
rsm_last_error(void)
{
    return rsm_error_message;
}

void
rsm_clear_error(void)
{
    rsm_error_message[0] = '\0';
}

rsm_status
rsm_fail(rsm_status status, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vsnprintf(rsm_error_message, sizeof(rsm_error_message), fmt, args);
    va_end(args);
    return status;
}
