/* rng.h: counter-based random numbers (Philox4x32-10, Salmon et al., SC'11 "Parallel random
 * numbers: as easy as 1, 2, 3"), the same on the CPU and the GPU.
 *
 * A random number is a pure function of (seed, stream, index): no hidden state, so any element of
 * any step of any run can be replayed, computed out of order, or on another device. The layout
 * (key, counter, word; Box-Muller pairs) and the per-element body are ops/philox.h, compiled for
 * the CPU loops here and for the CUDA kernels; this header adds the stream ids and the host fills.
 */
#ifndef RSM_RNG_H
#define RSM_RNG_H

#include <math.h>
#include <stdint.h>

#include "common.h"
#include "real_api.h"

/* The per-element body (Philox4x32-10, Box-Muller), shared with the CUDA kernels. */
#include "ops/philox.h"

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
