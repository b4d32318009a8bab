/* rng.c: host loops over the Philox stream of rng.h (the normal and uniform fills, which depend
 * on the precision, are rng_real.c). */
#include "rng.h"

#include <math.h>

void
rsm_fill_u32(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, uint32_t *out)
{
    for (int64_t i = 0; i < n; i++) out[i] = rsm_philox_u32_at(seed, stream, offset + (uint64_t)i);
}

void
rsm_fill_index(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, int64_t bound,
               int64_t *out)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = rsm_philox_index_at(seed, stream, offset + (uint64_t)i, bound);
}
