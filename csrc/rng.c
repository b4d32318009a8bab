/* rng.c: host loops over the Philox stream of rng.h (the normal and uniform fills, which depend
 * on the precision, are rng_real.c). */
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
