/* time_embedding.h: the sinusoidal time embedding of the MLP (Vaswani et al. / DDPM), per
 * element, shared by the CPU (mlp_real.c) and the CUDA kernel (kernels/mlp.cu).
 *   half = temb_dim / 2,  f_k = 10000^(-k / half),  emb = [sin(1000 t f_k), cos(1000 t f_k)]
 * The factor 1000 maps t in [0, 1] onto the integer-timestep range these frequencies were
 * designed for. Evaluated in double for both real types.
 */
#ifndef RSM_NN_TIME_EMBEDDING_H
#define RSM_NN_TIME_EMBEDDING_H

#include <math.h>
#include <stdint.h>

#include "../common.h"

static inline RSM_HOST_DEVICE double
rsm_time_frequency(int64_t k, int64_t half)
{
    return exp(-log(10000.0) * (double)k / (double)half);
}

/* The angle 1000 t f_k whose sine (k < half) and cosine (k >= half) fill the embedding. */
static inline RSM_HOST_DEVICE double
rsm_time_angle(double t, double freq)
{
    return 1000.0 * t * freq;
}

#endif /* RSM_NN_TIME_EMBEDDING_H */
