/* tensor.c: dtype tables, contiguity, strided copies and aligned allocation for rsm_tensor. */
#include "tensor.h"
#include "checked.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    uint8_t code;
    uint8_t bits;
    const char *name;
} rsm_dtype_info;

/* indexed by rsm_dtype */
static const rsm_dtype_info rsm_dtype_table[RSM_DTYPE_COUNT] = {
    [RSM_F32] = {kDLFloat, 32, "float32"},  [RSM_F64] = {kDLFloat, 64, "float64"},
    [RSM_I64] = {kDLInt, 64, "int64"},      [RSM_I32] = {kDLInt, 32, "int32"},
    [RSM_U8] = {kDLUInt, 8, "uint8"},       [RSM_BOOL] = {kDLBool, 8, "bool"},
    [RSM_F16] = {kDLFloat, 16, "float16"},  [RSM_BF16] = {kDLBfloat, 16, "bfloat16"},
    [RSM_U32] = {kDLUInt, 32, "uint32"},    [RSM_I8] = {kDLInt, 8, "int8"},
    [RSM_I16] = {kDLInt, 16, "int16"},      [RSM_U16] = {kDLUInt, 16, "uint16"},
    [RSM_U64] = {kDLUInt, 64, "uint64"},
};

DLDataType
rsm_dtype_to_dl(rsm_dtype dtype)
{
    DLDataType dl = {rsm_dtype_table[dtype].code, rsm_dtype_table[dtype].bits, 1};
    return dl;
}

rsm_status
rsm_dtype_from_dl(DLDataType dl, rsm_dtype *out)
{
    RSM_CHECK(dl.lanes == 1, RSM_ERR_TYPE,
              "vector dtypes are not supported (lanes=%u, expected 1)", (unsigned)dl.lanes);
    for (int i = 0; i < RSM_DTYPE_COUNT; i++) {
        if (rsm_dtype_table[i].code == dl.code && rsm_dtype_table[i].bits == dl.bits) {
            *out = (rsm_dtype)i;
            return RSM_OK;
        }
    }
    return rsm_fail(RSM_ERR_TYPE, "unsupported DLPack dtype (code=%u, bits=%u)", (unsigned)dl.code,
                    (unsigned)dl.bits);
}

size_t
rsm_dtype_size(rsm_dtype dtype)
{
    return (size_t)rsm_dtype_table[dtype].bits / 8;
}

const char *
rsm_dtype_name(rsm_dtype dtype)
{
    if ((int)dtype < 0 || dtype >= RSM_DTYPE_COUNT) return "unknown";
    return rsm_dtype_table[dtype].name;
}

rsm_dtype
rsm_tensor_dtype(const rsm_tensor *t)
{
    rsm_dtype dtype = RSM_F32;
    (void)rsm_dtype_from_dl(t->dtype, &dtype);
    return dtype;
}

int64_t
rsm_tensor_numel(const rsm_tensor *t)
{
    int64_t n = 1;
    for (int32_t i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

rsm_status
rsm_dl_check(const DLTensor *dl)
{
    RSM_CHECK(dl->ndim >= 0 && dl->ndim <= RSM_MAX_NDIM, RSM_ERR_BUFFER,
              "ndim=%d is outside [0, %d]", (int)dl->ndim, RSM_MAX_NDIM);
    RSM_CHECK(dl->ndim == 0 || dl->shape != NULL, RSM_ERR_BUFFER,
              "shape is NULL with ndim=%d", (int)dl->ndim);
    int ok = 1, empty = 0;
    int64_t numel = 1, extent = 0; /* extent: elements between the first and the farthest one */
    for (int32_t i = 0; i < dl->ndim; i++) {
        const int64_t d = dl->shape[i];
        RSM_CHECK(d >= 0, RSM_ERR_BUFFER, "shape[%d]=%lld is negative", (int)i, (long long)d);
        numel = rsm_size_mul(numel, d, &ok);
        RSM_CHECK(ok && numel <= RSM_MAX_ELEMS, RSM_ERR_BUFFER,
                  "shape[%d]=%lld makes more than 2^%d elements (the shape overflows)", (int)i,
                  (long long)d, RSM_MAX_ELEMS_LOG2);
        if (d == 0) empty = 1;
    }
    if (empty) return RSM_OK; /* an empty tensor is never read: data and strides do not matter */
    for (int32_t i = 0; i < dl->ndim && dl->strides != NULL; i++) {
        const int64_t d = dl->shape[i], s = dl->strides[i];
        if (d == 1) continue; /* its stride is never used */
        RSM_CHECK(s > INT64_MIN, RSM_ERR_BUFFER, "strides[%d]=%lld is out of range", (int)i,
                  (long long)s);
        extent = rsm_size_add(extent, rsm_size_mul(d - 1, s < 0 ? -s : s, &ok), &ok);
        RSM_CHECK(ok && extent <= RSM_MAX_ELEMS, RSM_ERR_BUFFER,
                  "strides[%d]=%lld with shape[%d]=%lld reach more than 2^%d elements", (int)i,
                  (long long)s, (int)i, (long long)d, RSM_MAX_ELEMS_LOG2);
    }
    RSM_CHECK(dl->data != NULL || numel == 0, RSM_ERR_BUFFER,
              "data is NULL but the shape holds %lld elements", (long long)numel);
    RSM_CHECK(dl->byte_offset <= (uint64_t)RSM_MAX_ELEMS * 8, RSM_ERR_BUFFER,
              "byte_offset=%llu is out of range", (unsigned long long)dl->byte_offset);
    return RSM_OK;
}

void *
rsm_tensor_ptr(const rsm_tensor *t)
{
    return (char *)t->data + t->byte_offset;
}

int
rsm_tensor_is_contiguous(const rsm_tensor *t)
{
    int64_t expected = 1;
    for (int32_t i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] == 0) return 1;
        if (t->shape[i] != 1 && t->strides[i] != expected) return 0;
        expected *= t->shape[i];
    }
    return 1;
}

rsm_status
rsm_tensor_init_contiguous(rsm_tensor *t, rsm_dtype dtype, int32_t ndim, const int64_t *shape)
{
    RSM_CHECK(ndim >= 0 && ndim <= RSM_MAX_NDIM, RSM_ERR_VALUE,
              "ndim=%d is outside [0, %d]", (int)ndim, RSM_MAX_NDIM);
    memset(t, 0, sizeof(*t));
    t->device.device_type = kDLCPU;
    t->device.device_id = 0;
    t->ndim = ndim;
    t->dtype = rsm_dtype_to_dl(dtype);
    int64_t stride = 1;
    for (int32_t i = ndim - 1; i >= 0; i--) {
        RSM_CHECK(shape[i] >= 0, RSM_ERR_VALUE, "shape[%d]=%lld is negative", (int)i,
                  (long long)shape[i]);
        t->shape[i] = shape[i];
        t->strides[i] = stride;
        stride *= shape[i] > 0 ? shape[i] : 1;
    }
    return RSM_OK;
}

/* Recursive strided copy: the innermost dimension is copied element by element with memcpy of
 * the element size, which is correct for every dtype (and for negative strides). */
static void
rsm_copy_dim(const rsm_tensor *src, int32_t dim, const char *src_ptr, char **dst, size_t itemsize)
{
    if (dim == src->ndim) {
        memcpy(*dst, src_ptr, itemsize);
        *dst += itemsize;
        return;
    }
    for (int64_t i = 0; i < src->shape[dim]; i++) {
        rsm_copy_dim(src, dim + 1, src_ptr + (ptrdiff_t)(i * src->strides[dim]) * (ptrdiff_t)itemsize,
                     dst, itemsize);
    }
}

void
rsm_tensor_copy_to_contiguous(const rsm_tensor *src, void *dst_data)
{
    size_t itemsize = (size_t)src->dtype.bits / 8;
    if (rsm_tensor_numel(src) == 0) return;
    if (rsm_tensor_is_contiguous(src)) {
        memcpy(dst_data, rsm_tensor_ptr(src), (size_t)rsm_tensor_numel(src) * itemsize);
        return;
    }
    char *dst = (char *)dst_data;
    rsm_copy_dim(src, 0, (const char *)rsm_tensor_ptr(src), &dst, itemsize);
}

void *
rsm_malloc(size_t bytes)
{
    /* aligned_alloc needs a size that is a multiple of the alignment; never 0. */
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded == 0) rounded = 64;
    return aligned_alloc(64, rounded);
}

void *
rsm_calloc(size_t bytes)
{
    void *ptr = rsm_malloc(bytes);
    if (ptr) memset(ptr, 0, bytes);
    return ptr;
}

void
rsm_free(void *ptr)
{
    free(ptr);
}
