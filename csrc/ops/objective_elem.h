/* objective_elem.h: per-element and per-row bodies of the RSM objective (csrc/objective.h,
 * THEORY.md §4, §5), shared by the CPU loop (objective_real.c) and the CUDA kernel
 * (kernels/objective.cu). Everything is in double whatever the working type, as on the CPU.
 */
#ifndef RSM_OPS_OBJECTIVE_ELEM_H
#define RSM_OPS_OBJECTIVE_ELEM_H

#include <math.h>

#include "../common.h"
#include "../objective.h"

/* Score matching: e = (u - u_anchor) / conv - gamma Psi   (gamma_psi = gamma Psi, or 0) */
static inline RSM_HOST_DEVICE double
rsm_sm_error(double u, double anchor, double conv, double gamma_psi)
{
    return (u - anchor) / conv - gamma_psi;
}

/* Score matching: the trust-region residual o = (u - u_old) / conv */
static inline RSM_HOST_DEVICE double
rsm_sm_old_residual(double u, double u_old, double conv)
{
    return (u - u_old) / conv;
}

/* dl/du = scale 2 k (e + C2 o) / conv,  k = C1 space^2 / dims */
static inline RSM_HOST_DEVICE double
rsm_sm_cotangent(double scale, double k, double e, double c2, double o, double conv)
{
    return scale * 2.0 * k * (e + c2 * o) / conv;
}

/* Ratio forms: d log rho / du_d = -w z_d / dims (- w^2 du_d / dims unless linear_only) */
static inline RSM_HOST_DEVICE double
rsm_ratio_dlogrho(double w, double z, double du, double dims, int linear_only)
{
    double d = -w * z / dims;
    if (!linear_only) d -= w * w * du / dims;
    return d;
}

/* log rho = -w z.du / dims - (w^2 / 2) |du|^2 / dims from the row sums lin = z.du, quad = |du|^2 */
static inline RSM_HOST_DEVICE double
rsm_ratio_log_rho(double w, double lin, double quad, double dims, int linear_only)
{
    double lr = -w * lin / dims;
    if (!linear_only) lr -= 0.5 * w * w * quad / dims;
    return lr;
}

/* The row loss of a ratio form from log rho; *dl_dlogrho receives dl / d(log rho) (post applied)
 * and the return value is the row loss (post applied); *active is 0 where the clip (or hinge)
 * takes the gradient away. Returns 0 with *ok = 0 for an unknown form. */
static inline RSM_HOST_DEVICE double
rsm_ratio_row(int form, const rsm_objective_row *c, double lr, double *dl_dlogrho, int *active,
              int *ok)
{
    const double scaled = lr * c->ratio_scale;
    const double A = c->adv;
    double row_loss = 0.0, dl = 0.0;
    int row_active = 1;
    *ok = 1;
    switch (form) {
    case RSM_FORM_PPO: {
        double rho = exp(scaled);
        double rho_clip = fmin(fmax(rho, 1.0 - c->clip_eps), 1.0 + c->clip_eps);
        double unclipped = -A * rho, clip_term = -A * rho_clip;
        row_loss = fmax(unclipped, clip_term);
        /* the unclipped term carries the gradient when it is the max (ties: identical) */
        row_active = unclipped >= clip_term;
        dl = row_active ? -A * rho * c->ratio_scale : 0.0;
        break;
    }
    case RSM_FORM_LOG_RATIO: {
        double v = 1.0 + scaled;
        double v_clip = fmin(fmax(v, 1.0 - c->clip_eps), 1.0 + c->clip_eps);
        double unclipped = -A * v, clip_term = -A * v_clip;
        row_loss = fmax(unclipped, clip_term);
        row_active = unclipped >= clip_term;
        dl = row_active ? -A * c->ratio_scale : 0.0;
        break;
    }
    case RSM_FORM_MATCHING: {
        double T = c->term_scale * (-lr);
        double hinge = c->clip_eps * fabs(A) + A * T;
        row_active = hinge > 0;
        row_loss = row_active ? hinge : 0.0;
        dl = row_active ? -A * c->term_scale : 0.0;
        break;
    }
    default: *ok = 0; break;
    }
    *dl_dlogrho = dl * c->post;
    *active = row_active;
    return row_loss * c->post;
}

/* KL anchor kl (w_kl^2 / 2) |u - u_ref|^2 / dims: the per-element cotangent term. */
static inline RSM_HOST_DEVICE double
rsm_kl_cotangent(double scale, const rsm_objective_row *c, double diff, double dims)
{
    return scale * c->kl * c->w_kl * c->w_kl * diff / dims;
}

#endif /* RSM_OPS_OBJECTIVE_ELEM_H */
