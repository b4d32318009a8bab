/* guidance.h: the per-element body of classifier-free guidance (Ho & Salimans 2022) and its
 * backward, shared by the CPU loops and CUDA kernels (RSM_HOST_DEVICE).
 *
 *   u = u_uncond + w (u_cond - u_uncond)                                  (THEORY.md §12.1 B)
 *   du_cond = w du,   du_uncond = (1 - w) du                            (THEORY.md §12.1: dL/du_c = g,
 *                                                                        dL/du_u = 1 - g)
 * The form above is the one diffusers and the paper's code use; w = 0 returns u_uncond exactly,
 * and w = 1 is special-cased to return u_cond exactly (u_u + (u_c - u_u) can differ from u_c in
 * the last bit), so that a guided model at scale 1 is bitwise the conditional model.
 */
#ifndef RSM_GUIDANCE_H
#define RSM_GUIDANCE_H

#include "../common.h"

static inline RSM_HOST_DEVICE double
rsm_cfg_combine(double u_cond, double u_uncond, double scale)
{
    return scale == 1.0 ? u_cond : u_uncond + scale * (u_cond - u_uncond);
}

#endif /* RSM_GUIDANCE_H */
