/* rng_real.c: the host fills of real arrays from the Philox stream of rng.h (template, see
 * real.h): rsm_fill_normal_f32/_f64, rsm_fill_uniform_f32/_f64 (list: real_api.h). */
#include "real.h"
#include "rng.h"

/* Normals: element `index` is normal (index & 3) of block index >> 2. Each Philox block (and its
 * two Box-Muller pairs) is computed once for the up to 4 elements it gives; the first and last
 * partial blocks are clipped to [offset, offset + n). Blocks are independent, so the result does
 * not depend on the thread split. */
void
RSM_T(fill_normal)(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, real_t *out)
{
    if (n <= 0) return;
    const uint64_t first = offset >> 2, last = (offset + (uint64_t)n - 1) >> 2;
    const int64_t blocks = (int64_t)(last - first) + 1;
    _Pragma("omp parallel for schedule(static) if (blocks > 16384)")
    for (int64_t b = 0; b < blocks; b++) {
        uint64_t block = first + (uint64_t)b;
        double z[4];
        rsm_philox_normals4(seed, stream, block, z);
        for (uint64_t w = 0; w < 4; w++) {
            uint64_t index = block * 4 + w;
            if (index >= offset && index - offset < (uint64_t)n)
                out[index - offset] = (real_t)z[w];
        }
    }
}

/* Uniforms in (0, 1). Rounding to float may give exactly 1.0f for the top words: clamp to the
 * largest value below 1 (1 - eps / 2); in double the rounding never reaches 1. */
void
RSM_T(fill_uniform)(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, real_t *out)
{
    for (int64_t i = 0; i < n; i++) {
        real_t u = (real_t)rsm_philox_uniform_at(seed, stream, offset + (uint64_t)i);
        out[i] = u < (real_t)1 ? u : (real_t)1 - RSM_REAL_EPS / 2;
    }
}
