/* guided_real.c: the loops of classifier-free guidance (template, see real.h and guided.h). */
#include "real.h"
#include "guided.h"
#include "../ops/guidance.h"

#include <string.h>

/* out[m] = u_uncond + w (u_cond - u_uncond) with u2[2m] = [u_cond; u_uncond]. */
void
RSM_T(guided_combine)(int64_t m, double scale, const real_t *u2, real_t *out)
{
    const real_t *u_cond = u2, *u_uncond = u2 + m;
    for (int64_t i = 0; i < m; i++)
        out[i] = (real_t)rsm_cfg_combine((double)u_cond[i], (double)u_uncond[i], scale);
}

/* du2[2m] = [w dout; (1 - w) dout]: the cotangent reaches both passes (THEORY.md §12.1). */
void
RSM_T(guided_split)(int64_t m, double scale, const real_t *dout, real_t *du2)
{
    const double keep = 1.0 - scale;
    for (int64_t i = 0; i < m; i++) {
        du2[i] = (real_t)(scale * (double)dout[i]);
        du2[m + i] = (real_t)(keep * (double)dout[i]);
    }
}

void
RSM_T(guided_stack)(int64_t n, int64_t dim, int64_t cond_dim, const real_t *null_cond,
                    const real_t *x, const real_t *t, const real_t *cond, real_t *x2, real_t *t2,
                    real_t *cond2)
{
    memcpy(x2, x, (size_t)(n * dim) * sizeof(real_t));
    memcpy(x2 + n * dim, x, (size_t)(n * dim) * sizeof(real_t));
    memcpy(t2, t, (size_t)n * sizeof(real_t));
    memcpy(t2 + n, t, (size_t)n * sizeof(real_t));
    memcpy(cond2, cond, (size_t)(n * cond_dim) * sizeof(real_t));
    for (int64_t i = 0; i < n; i++)
        memcpy(cond2 + (n + i) * cond_dim, null_cond, (size_t)cond_dim * sizeof(real_t));
}

/* dx[m] = dx2[:m] + dx2[m:]: both passes read the same x (the input VJP of the stacking). */
void
RSM_T(guided_sum_halves)(int64_t m, const real_t *dx2, real_t *dx)
{
    for (int64_t i = 0; i < m; i++) dx[i] = dx2[i] + dx2[m + i];
}
