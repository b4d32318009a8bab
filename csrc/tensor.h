/* tensor.h: rsm_tensor, the core's description of an n-d array. It mirrors DLTensor field for
 * field (data, device, ndim, dtype, shape, strides in elements, byte_offset), so DLPack export and
 * import are field copies and DLPack's stride rules apply unchanged. Ownership lives outside the
 * core: the binding's Tensor object owns (or borrows) the memory and the core only reads this view.
 *
 * Numerical kernels take raw, contiguous, typed pointers plus sizes (llm.c style); rsm_tensor is the
 * currency of the boundary (binding, I/O, copies), not of the inner loops.
 */
#ifndef RSM_TENSOR_H
#define RSM_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "dlpack.h"
#include "status.h"

#define RSM_MAX_NDIM 64

typedef enum rsm_dtype {
    RSM_F32 = 0,
    RSM_F64 = 1,
    RSM_I64 = 2,
    RSM_I32 = 3,
    RSM_U8 = 4,
    RSM_BOOL = 5,
    RSM_F16 = 6,
    RSM_BF16 = 7,
    RSM_U32 = 8,
    RSM_I8 = 9,
    RSM_I16 = 10,
    RSM_U16 = 11,
    RSM_U64 = 12,
    RSM_DTYPE_COUNT = 13
} rsm_dtype;

#define RSM_TENSOR_READ_ONLY 1u

typedef struct rsm_tensor {
    void *data;                     /* DLTensor.data (without byte_offset) */
    DLDevice device;                /* kDLCPU 0, or kDLCUDA ordinal */
    int32_t ndim;
    DLDataType dtype;
    int64_t shape[RSM_MAX_NDIM];    /* [ndim] */
    int64_t strides[RSM_MAX_NDIM];  /* [ndim], in elements, always filled */
    uint64_t byte_offset;
    uint32_t flags;                 /* RSM_TENSOR_READ_ONLY */
} rsm_tensor;

/* dtype <-> DLDataType; rsm_dtype_from_dl returns RSM_ERR_TYPE for types rsm cannot hold. */
DLDataType rsm_dtype_to_dl(rsm_dtype dtype);
rsm_status rsm_dtype_from_dl(DLDataType dl, rsm_dtype *out);
size_t rsm_dtype_size(rsm_dtype dtype);
const char *rsm_dtype_name(rsm_dtype dtype); /* "float32", ... as numpy spells them */

rsm_dtype rsm_tensor_dtype(const rsm_tensor *t); /* the tensor's dtype; valid after a successful import */
int64_t rsm_tensor_numel(const rsm_tensor *t);
/* The first element's address (data + byte_offset). */
void *rsm_tensor_ptr(const rsm_tensor *t);
/* Compact row-major (C-contiguous), ignoring strides of size-1 dimensions as DLPack allows. */
int rsm_tensor_is_contiguous(const rsm_tensor *t);
/* Check every field of a DLTensor a consumer can check before trusting it (RSM_ERR_BUFFER, the
 * message names the field): ndim in [0, RSM_MAX_NDIM]; shape non-NULL when ndim > 0; every
 * dimension >= 0; the element count and the byte extent the strides reach overflow-free and at
 * most RSM_MAX_ELEMS elements (csrc/checked.h); data non-NULL when the tensor is not empty; a
 * byte_offset that keeps the extent within int64. The dtype is checked by rsm_dtype_from_dl. */
rsm_status rsm_dl_check(const DLTensor *dl);
/* Fill shape and row-major strides; data is left to the caller. */
rsm_status rsm_tensor_init_contiguous(rsm_tensor *t, rsm_dtype dtype, int32_t ndim,
                                      const int64_t *shape);
/* Copy any strided CPU tensor into dst_data, a compact row-major buffer of the same numel. */
void rsm_tensor_copy_to_contiguous(const rsm_tensor *src, void *dst_data);

/* Element i of a float32 or float64 array, as double, and back: for the few non-template places
 * (analytic models, rewards) that serve both real types with double-precision math. */
static inline double
rsm_load_real(const void *data, rsm_dtype dtype, int64_t i)
{
    return dtype == RSM_F32 ? (double)((const float *)data)[i] : ((const double *)data)[i];
}

static inline void
rsm_store_real(void *data, rsm_dtype dtype, int64_t i, double value)
{
    if (dtype == RSM_F32)
        ((float *)data)[i] = (float)value;
    else
        ((double *)data)[i] = value;
}

/* 64-byte aligned host allocation (cache line, AVX-512 vector); free with rsm_free. */
void *rsm_malloc(size_t bytes);
void *rsm_calloc(size_t bytes);
void rsm_free(void *ptr);

#endif /* RSM_TENSOR_H */
