/* objective_real.c: the RSM objective and its clipped ratio forms (template; see objective.h).
 * One loop over rows; each row's loss and cotangent are computed together so the two cannot
 * disagree. The cotangent is written (=), not accumulated. */
#include "real.h"
#include "objective.h"
#include "ops/objective_elem.h"

#include <math.h>
#include <string.h>

rsm_status
RSM_T(objective)(const rsm_objective_config *cfg, int64_t rows, int64_t dim,
                 const rsm_objective_row *coef, const real_t *u, const real_t *u_old,
                 const real_t *u_ref, const real_t *psi, const real_t *noise, real_t *cotangent,
                 double *log_ratio, uint8_t *active, rsm_objective_stats *stats)
{
    RSM_CHECK(rows >= 0 && dim >= 1, RSM_ERR_VALUE, "invalid sizes rows=%lld dim=%lld",
              (long long)rows, (long long)dim);
    RSM_CHECK(cfg->normalizer > 0 && isfinite(cfg->normalizer), RSM_ERR_VALUE,
              "normalizer=%g must be positive", cfg->normalizer);
    const int sm = cfg->form == RSM_FORM_SCORE_MATCHING;
    RSM_CHECK(u != NULL, RSM_ERR_VALUE, "u is required");
    RSM_CHECK(!sm || (cfg->anchor_old ? u_old : u_ref) != NULL, RSM_ERR_VALUE,
              "score matching needs the anchor outputs (%s)", cfg->anchor_old ? "u_old" : "u_ref");
    RSM_CHECK(sm || (u_old != NULL && noise != NULL), RSM_ERR_VALUE,
              "ratio forms need u_old and the step noise");
    const double dims = cfg->mean_over_dims ? (double)dim : 1.0;
    double total = 0.0, clipped = 0.0, kl_sum = 0.0, weight_sum = 0.0;

    for (int64_t r = 0; r < rows; r++) {
        const rsm_objective_row *c = &coef[r];
        const real_t *ur = u + r * dim;
        real_t *g = cotangent + r * dim;
        double row_loss = 0.0;
        int row_active = 1;
        if (c->weight == 0.0) {
            memset(g, 0, (size_t)dim * sizeof(real_t));
            if (log_ratio) log_ratio[r] = 0.0;
            if (active) active[r] = 0;
            continue;
        }
        /* scale of this row's contribution to the total: weight / normalizer */
        const double scale = c->weight / cfg->normalizer;
        if (sm) {
            /* e = s_theta - (s_anchor + gamma Psi) = (u - u_anchor) / conv - gamma Psi
             * l = C1 space^2 (|e|^2 + C2 |(u - u_old) / conv|^2)
             * dl/du = 2 C1 space^2 (e + C2 (u - u_old) / conv) / conv            */
            const real_t *anchor = (cfg->anchor_old ? u_old : u_ref) + r * dim;
            const double k = c->c1 * c->space * c->space / dims;
            double sq = 0.0, sq_old = 0.0;
            for (int64_t d = 0; d < dim; d++) {
                double e = rsm_sm_error((double)ur[d], (double)anchor[d], c->conv,
                                        psi ? c->gamma * (double)psi[r * dim + d] : 0.0);
                double o = (c->c2 != 0.0 && u_old)
                               ? rsm_sm_old_residual((double)ur[d], (double)u_old[r * dim + d],
                                                     c->conv)
                               : 0.0;
                sq += e * e;
                sq_old += o * o;
                g[d] = (real_t)rsm_sm_cotangent(scale, k, e, c->c2, o, c->conv);
            }
            row_loss = k * (sq + c->c2 * sq_old);
            if (log_ratio) log_ratio[r] = 0.0;
        } else {
            /* log rho = -w z.du - (w^2/2)|du|^2 (linear_only: first term), per-element means
             * with mean_over_dims; d log rho / du = -w z - w^2 du */
            const real_t *uo = u_old + r * dim, *z = noise + r * dim;
            double lin = 0.0, quad = 0.0;
            for (int64_t d = 0; d < dim; d++) {
                double du = (double)ur[d] - (double)uo[d];
                lin += (double)z[d] * du;
                quad += du * du;
            }
            double lr = rsm_ratio_log_rho(c->w, lin, quad, dims, cfg->linear_only);
            double dl_dlogrho; /* dl / d(log rho), post applied, before scale */
            int ok;
            row_loss = rsm_ratio_row(cfg->form, c, lr, &dl_dlogrho, &row_active, &ok);
            if (!ok) return rsm_fail(RSM_ERR_VALUE, "unknown objective form %d", (int)cfg->form);
            for (int64_t d = 0; d < dim; d++) {
                double du = (double)ur[d] - (double)uo[d];
                double dlogrho = rsm_ratio_dlogrho(c->w, (double)z[d], du, dims, cfg->linear_only);
                g[d] = (real_t)(scale * dl_dlogrho * dlogrho);
            }
            if (log_ratio) log_ratio[r] = lr;
        }
        /* KL anchor: kl (w_kl^2 / 2) |u - u_ref|^2 */
        if (c->kl != 0.0) {
            RSM_CHECK(u_ref != NULL, RSM_ERR_VALUE, "a KL anchor needs u_ref");
            const real_t *ref = u_ref + r * dim;
            double sq = 0.0;
            for (int64_t d = 0; d < dim; d++) {
                double diff = (double)ur[d] - (double)ref[d];
                sq += diff * diff;
                g[d] += (real_t)rsm_kl_cotangent(scale, c, diff, dims);
            }
            double kl_row = 0.5 * c->w_kl * c->w_kl * sq / dims;
            row_loss += c->kl * kl_row;
            kl_sum += c->weight * kl_row;
        }
        total += scale * row_loss;
        weight_sum += c->weight;
        if (!row_active) clipped += c->weight;
        if (active) active[r] = (uint8_t)row_active;
    }
    if (stats) {
        stats->loss = total;
        stats->clip_fraction = weight_sum > 0 ? clipped / weight_sum : 0.0;
        stats->kl = weight_sum > 0 ? kl_sum / weight_sum : 0.0;
    }
    RSM_CHECK(isfinite(total), RSM_ERR_NUMERIC, "the objective is not finite (%g)", total);
    return RSM_OK;
}
