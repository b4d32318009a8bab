/* rng.c: host loops over the Philox stream of rng.h. */
#include "rng.h"

#include <math.h>

void
rsm_fill_u32(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, uint32_t *out)
{
    for (int64_t i = 0; i < n; i++) {
        uint64_t index = offset + (uint64_t)i;
        uint32_t block[4];
        rsm_philox_block(seed, stream, index >> 2, block);
        out[i] = block[index & 3];
    }
}

/* Normals: element `index` is normal (index & 3) of block index >> 2. Whole blocks are computed
 * at once; the first and last partial blocks are handled by the same indexing. */
#define RSM_DEFINE_FILL_NORMAL(name, real_t)                                                       \
    void name(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, real_t *out)             \
    {                                                                                              \
        _Pragma("omp parallel for schedule(static) if (n > 65536)")                                \
        for (int64_t i = 0; i < n; i++) {                                                          \
            uint64_t index = offset + (uint64_t)i;                                                 \
            uint32_t block[4];                                                                     \
            rsm_philox_block(seed, stream, index >> 2, block);                                     \
            double z[4];                                                                           \
            rsm_box_muller(block[0], block[1], &z[0], &z[1]);                                      \
            rsm_box_muller(block[2], block[3], &z[2], &z[3]);                                      \
            out[i] = (real_t)z[index & 3];                                                         \
        }                                                                                          \
    }

RSM_DEFINE_FILL_NORMAL(rsm_fill_normal_f32, float)
RSM_DEFINE_FILL_NORMAL(rsm_fill_normal_f64, double)

void
rsm_fill_uniform_f64(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, double *out)
{
    for (int64_t i = 0; i < n; i++) {
        uint64_t index = offset + (uint64_t)i;
        uint32_t block[4];
        rsm_philox_block(seed, stream, index >> 2, block);
        out[i] = rsm_u32_to_open01(block[index & 3]);
    }
}

void
rsm_fill_uniform_f32(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, float *out)
{
    for (int64_t i = 0; i < n; i++) {
        uint64_t index = offset + (uint64_t)i;
        uint32_t block[4];
        rsm_philox_block(seed, stream, index >> 2, block);
        /* rounding to float may give exactly 1.0f for the top words; clamp into (0, 1) */
        float u = (float)rsm_u32_to_open01(block[index & 3]);
        out[i] = u < 1.0f ? u : 0.99999994f;
    }
}

void
rsm_fill_index(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, int64_t bound,
               int64_t *out)
{
    for (int64_t i = 0; i < n; i++) {
        uint64_t index = offset + (uint64_t)i;
        uint32_t block[4];
        rsm_philox_block(seed, stream, index >> 2, block);
        out[i] = (int64_t)(((uint64_t)block[index & 3] * (uint64_t)bound) >> 32);
    }
}
