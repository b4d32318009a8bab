/* dlpack_api.h: the one DLPack importer and dtype mapping of rsm, lent by rsm._C to rsm._cuda
 * (with the two other things only rsm._C has that the CUDA backend table needs: the core's error
 * message, rsm_fail, and the path schedules; kernels/backend_cuda.h).
 *
 * rsm._C owns DLPack import (tensor_py.c: every field of a producer's tensor checked, sizes
 * overflow-checked, ownership and the stream protocol) and the dtype table (csrc/tensor.c).
 * rsm._cuda is a separate extension module (linked with the CUDA objects, loaded only when CUDA
 * is asked for); instead of a second importer it borrows rsm._C's through this table, published
 * as the capsule attribute rsm._C._dlpack_api (the CPython "C API capsule" pattern): rsm._cuda
 * imports rsm._C, keeps a reference to the module and to the capsule, and calls through the table.
 * Both sides include this header, so they agree on the layout; `version` guards a stale build.
 */
#ifndef RSM_PY_DLPACK_API_H
#define RSM_PY_DLPACK_API_H

#include <Python.h>

#include "../path.h"
#include "../status.h"
#include "../tensor.h"

#define RSM_DLPACK_API_NAME "rsm._C._dlpack_api"
#define RSM_DLPACK_API_VERSION 2

typedef struct rsm_dlpack_api {
    int version; /* RSM_DLPACK_API_VERSION */
    /* `obj` (rsm.Tensor, any DLPack producer, a capsule) as an rsm.Tensor on a device of type
     * `device_type` (kDLCPU or kDLCUDA): a new reference, with *view its rsm_tensor (valid while
     * the reference lives). For kDLCUDA the producer is asked to order its pending work before
     * rsm's stream of that device (DLPack stream protocol). A tensor on another device is a
     * ValueError naming `func`, `argname` and both devices; an invalid producer tensor a
     * BufferError naming the field. `module` is rsm._C. */
    PyObject *(*import_on)(PyObject *module, PyObject *obj, const char *func, const char *argname,
                           int device_type, const rsm_tensor **view);
    /* csrc/tensor.c's dtype table (rsm_dtype values are the kernels' dtype codes). */
    const char *(*dtype_name)(rsm_dtype dtype);
    size_t (*dtype_size)(rsm_dtype dtype);
    DLDataType (*dtype_to_dl)(rsm_dtype dtype);
    rsm_dtype (*tensor_dtype)(const rsm_tensor *t);
    int64_t (*tensor_numel)(const rsm_tensor *t);
    int (*tensor_is_contiguous)(const rsm_tensor *t);
    /* For the CUDA backend table (kernels/backend_cuda.h rsm_cuda_host_api): the core's error
     * message (status.c) and the path schedules (path.c). */
    rsm_status (*fail)(rsm_status status, const char *fmt, ...);
    const char *(*last_error)(void);
    rsm_path_coef (*path_coef_at)(const rsm_path *path, double t);
    rsm_param (*path_native_param)(const rsm_path *path);
} rsm_dlpack_api;

#endif /* RSM_PY_DLPACK_API_H */
