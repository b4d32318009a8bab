/* rng.h: counter-based random numbers (Philox4x32-10, Salmon et al., SC'11 "Parallel random
 * numbers: as easy as 1, 2, 3"), the same on the CPU and the GPU.
 *
 * A random number is a pure function of (seed, stream, index): no hidden state, so any element of
 * any step of any run can be replayed, computed out of order, or on another device.
 *
 *   key     = seed (64 bits as two 32-bit words)
 *   counter = (index / 4 as 64 bits, stream as 64 bits)
 *   word    = index % 4 of the Philox output block
 *
 * Normals come from Box-Muller on pairs of words (words 0,1 -> normals 0,1; words 2,3 -> 2,3),
 * evaluated in double precision for both real types.
 */
#ifndef RSM_RNG_H
#define RSM_RNG_H

#include <math.h>
#include <stdint.h>

#include "common.h"
#include "real_api.h"

#define RSM_PHILOX_M0 0xD2511F53u
#define RSM_PHILOX_M1 0xCD9E8D57u
#define RSM_PHILOX_W0 0x9E3779B9u /* golden ratio */
#define RSM_PHILOX_W1 0xBB67AE85u /* sqrt(3) - 1 */

static inline RSM_HOST_DEVICE void
rsm_philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            k0 += RSM_PHILOX_W0;
            k1 += RSM_PHILOX_W1;
        }
        uint64_t p0 = (uint64_t)RSM_PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)RSM_PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* The Philox block that holds element `index` of (seed, stream). */
static inline RSM_HOST_DEVICE void
rsm_philox_block(uint64_t seed, uint64_t stream, uint64_t block, uint32_t out[4])
{
    uint32_t counter[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream,
                           (uint32_t)(stream >> 32)};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    rsm_philox4x32_10(counter, key, out);
}

/* Uniform in (0, 1): never 0 or 1, so logs and inverse CDFs are safe. */
static inline RSM_HOST_DEVICE double
rsm_u32_to_open01(uint32_t word)
{
    return ((double)word + 0.5) * (1.0 / 4294967296.0);
}

/* Box-Muller: two words -> two standard normals. */
static inline RSM_HOST_DEVICE void
rsm_box_muller(uint32_t w0, uint32_t w1, double *z0, double *z1)
{
    double u1 = rsm_u32_to_open01(w0);
    double u2 = rsm_u32_to_open01(w1);
    double radius = sqrt(-2.0 * log(u1));
    double angle = 2.0 * RSM_PI * u2;
    *z0 = radius * cos(angle);
    *z1 = radius * sin(angle);
}

/* The four standard normals of Philox block `block` of (seed, stream): element 4 block + w is z[w].
 * The one definition of the normal stream, used by the host fills (rng.c) and the CUDA kernel. */
static inline RSM_HOST_DEVICE void
rsm_philox_normals4(uint64_t seed, uint64_t stream, uint64_t block, double z[4])
{
    uint32_t words[4];
    rsm_philox_block(seed, stream, block, words);
    rsm_box_muller(words[0], words[1], &z[0], &z[1]);
    rsm_box_muller(words[2], words[3], &z[2], &z[3]);
}

/* Streams: a run's random numbers are split by purpose so that adding a new consumer never
 * shifts the numbers of another. stream = purpose << 56 | a << 28 | b (a, b < 2^28). */
enum rsm_stream_purpose {
    RSM_STREAM_USER = 0,      /* rsm.random.normal(seed, stream) from Python */
    RSM_STREAM_INIT = 1,      /* parameter initialisation */
    RSM_STREAM_PRIOR = 2,     /* x_1 ~ N(0, I) at the start of sampling */
    RSM_STREAM_STEP = 3,      /* sampler step noise: a = step index */
    RSM_STREAM_DATA = 4,      /* pretraining: batch indices, a = step */
    RSM_STREAM_TIME = 5,      /* pretraining: t ~ U, a = step */
    RSM_STREAM_NOISE = 6,     /* pretraining: eps ~ N, a = step */
    RSM_STREAM_COND_DROP = 7  /* pretraining: condition dropout u ~ U (CFG), a = step */
};

static inline RSM_HOST_DEVICE uint64_t
rsm_stream_id(uint64_t purpose, uint64_t a, uint64_t b)
{
    return (purpose << 56) | ((a & 0xFFFFFFFull) << 28) | (b & 0xFFFFFFFull);
}

/* Host fills (csrc/rng_real.c): element i of the output is element offset + i of (seed, stream);
 * rsm_fill_normal_f32/_f64 and rsm_fill_uniform_f32/_f64 (in (0, 1)), declared by real_api.h. */
RSM_DECLARE_REAL_API(RSM_API_RNG)
/* Integers uniform in [0, bound) (bias < bound / 2^32). */
void rsm_fill_index(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, int64_t bound,
                    int64_t *out);
void rsm_fill_u32(uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, uint32_t *out);

#endif /* RSM_RNG_H */
