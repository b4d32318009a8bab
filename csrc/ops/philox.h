/* philox.h: the per-element body of rsm's random numbers, Philox4x32-10 (Salmon, Moraes, Dror,
 * Shaw, SC'11 "Parallel random numbers: as easy as 1, 2, 3") and the Box-Muller normal transform,
 * written once and compiled for the CPU fills (csrc/rng.c, csrc/rng_real.c) and for the CUDA
 * fills (kernels/elementwise.cu, kernels/backend_cuda.cu), so the same (seed, stream, index)
 * gives the same word on both devices, bitwise, and the same normal up to the last bit of the
 * device's log/sin/cos (the transform is evaluated in double on both).
 *
 * A random number is a pure function of (seed, stream, index):
 *   key     = seed (64 bits as two 32-bit words, low first)
 *   counter = (index / 4 as 64 bits, stream as 64 bits), low words first
 *   word    = word index % 4 of the Philox output block
 * Normal `index` is normal index % 4 of its block: words (0, 1) -> normals (0, 1) and words
 * (2, 3) -> normals (2, 3), one Box-Muller pair each.
 *
 * Everything here is `static inline RSM_HOST_DEVICE`, free of real_t (the words and the normals
 * are double; the caller rounds to its real type once).
 */
#ifndef RSM_OPS_PHILOX_H
#define RSM_OPS_PHILOX_H

#include <math.h>
#include <stdint.h>

#include "../common.h"

#define RSM_PHILOX_M0 0xD2511F53u /* the round multipliers of Philox4x32 (SC'11, table 2) */
#define RSM_PHILOX_M1 0xCD9E8D57u
#define RSM_PHILOX_W0 0x9E3779B9u /* the key schedule's Weyl increments: golden ratio */
#define RSM_PHILOX_W1 0xBB67AE85u /* sqrt(3) - 1 */

/* Ten rounds of Philox4x32 on one counter block: per round, two 32x32->64 products give
 * (hi, lo) halves that are mixed with the other two words and the round key; the key gets the
 * Weyl increments between rounds. */
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

/* The Philox block `block` of (seed, stream): words 4 block .. 4 block + 3 of the stream. */
static inline RSM_HOST_DEVICE void
rsm_philox_block(uint64_t seed, uint64_t stream, uint64_t block, uint32_t out[4])
{
    uint32_t counter[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream,
                           (uint32_t)(stream >> 32)};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    rsm_philox4x32_10(counter, key, out);
}

/* Word `index` of (seed, stream). */
static inline RSM_HOST_DEVICE uint32_t
rsm_philox_u32_at(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint32_t words[4];
    rsm_philox_block(seed, stream, index >> 2, words);
    return words[index & 3];
}

/* Uniform in (0, 1) from one word: (w + 1/2) / 2^32, never 0 or 1, so logs and inverse CDFs are
 * safe. */
static inline RSM_HOST_DEVICE double
rsm_u32_to_open01(uint32_t word)
{
    return ((double)word + 0.5) * (1.0 / 4294967296.0);
}

/* Box-Muller: two words -> two independent standard normals,
 * z0 = r cos(2 pi u2), z1 = r sin(2 pi u2), r = sqrt(-2 log u1). */
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

/* The four standard normals of block `block` of (seed, stream): normal 4 block + w is z[w]. A
 * loop over a range computes each block once for the up to four elements it gives. */
static inline RSM_HOST_DEVICE void
rsm_philox_normals4(uint64_t seed, uint64_t stream, uint64_t block, double z[4])
{
    uint32_t words[4];
    rsm_philox_block(seed, stream, block, words);
    rsm_box_muller(words[0], words[1], &z[0], &z[1]);
    rsm_box_muller(words[2], words[3], &z[2], &z[3]);
}

/* Normal `index` of (seed, stream) alone (one Box-Muller pair: the element's and its partner's
 * words), for kernels that give each thread one element. Equal to rsm_philox_normals4's z[index % 4]
 * bitwise: the same words, the same operations. */
static inline RSM_HOST_DEVICE double
rsm_philox_normal_at(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint32_t words[4];
    rsm_philox_block(seed, stream, index >> 2, words);
    const unsigned pair = (unsigned)(index & 2);
    double z0, z1;
    rsm_box_muller(words[pair], words[pair + 1], &z0, &z1);
    return (index & 1) ? z1 : z0;
}

/* Uniform `index` of (seed, stream), in (0, 1), in double. */
static inline RSM_HOST_DEVICE double
rsm_philox_uniform_at(uint64_t seed, uint64_t stream, uint64_t index)
{
    return rsm_u32_to_open01(rsm_philox_u32_at(seed, stream, index));
}

/* Integer `index` of (seed, stream), uniform in [0, bound): the high word of w * bound (Lemire's
 * multiply-shift without rejection; bias < bound / 2^32). */
static inline RSM_HOST_DEVICE int64_t
rsm_philox_index_at(uint64_t seed, uint64_t stream, uint64_t index, int64_t bound)
{
    return (int64_t)(((uint64_t)rsm_philox_u32_at(seed, stream, index) * (uint64_t)bound) >> 32);
}

#endif /* RSM_OPS_PHILOX_H */
