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

/* Normals: element `index` is normal (index & 3) of block index >> 2. Each Philox block (and its
 * two Box-Muller pairs) is computed once for the up to 4 elements it gives; the first and last
 * partial blocks are clipped to [offset, offset + n). Blocks are independent, so the result does
 * not depend on the thread split. */
#define RSM_DEFINE_FILL_NORMAL(name, real_t)                                                       \
    void name(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, real_t *out)             \
    {                                                                                              \
        if (n <= 0) return;                                                                        \
        const uint64_t first = offset >> 2, last = (offset + (uint64_t)n - 1) >> 2;                \
        const int64_t blocks = (int64_t)(last - first) + 1;                                        \
        _Pragma("omp parallel for schedule(static) if (blocks > 16384)")                           \
        for (int64_t b = 0; b < blocks; b++) {                                                     \
            uint64_t block = first + (uint64_t)b;                                                  \
            double z[4];                                                                           \
            rsm_philox_normals4(seed, stream, block, z);                                           \
            for (uint64_t w = 0; w < 4; w++) {                                                     \
                uint64_t index = block * 4 + w;                                                    \
                if (index >= offset && index - offset < (uint64_t)n)                               \
                    out[index - offset] = (real_t)z[w];                                            \
            }                                                                                      \
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
