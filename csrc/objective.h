/* objective.h: the RSM objective (THEORY.md §4, §5) and the clipped
 * policy-gradient forms it subsumes. Every fine-tuning method reaches the parameters through
 * rsm_objective: it returns the loss and the cotangent dL/du on the model output u, which the
 * backbone's backward turns into parameter gradients.
 *
 * Per row r (a state x_r at time t_r with model output u_r = u_theta(x_r, t_r), D values):
 *
 *   SCORE_MATCHING (the RSM loss, Table 1 of the paper):
 *       l_r = C1 space^2 ( |s_theta - (s_anchor + gamma Psi)|^2 + C2 |s_theta - s_old|^2 )
 *     with scores from outputs by u = conv * s + (terms in x), so s_theta - s_anchor =
 *     (u - u_anchor) / conv; `space` is the factor of the space the norm is measured in
 *     (1 for score space, conv for the output space itself: THEORY.md §5 L6), Psi in score units,
 *     anchor = reference (s_ref) or rollout-time (s_old) outputs.
 *
 *   Ratio forms on the Gaussian step of the sampler (THEORY.md §2.3, §5 L4, §9.2.3), with
 *   du = u - u_old and   log rho = -w z.du - (w^2 / 2) |du|^2    (w = |K| / std):
 *       PPO         l_r = max(-A rho, -A clip(rho, 1 - eps, 1 + eps)) post
 *       LOG_RATIO   l_r = max(-A (1 + log rho), -A clip(1 + log rho, 1 - eps, 1 + eps)) post
 *       MATCHING    l_r = max(eps |A| + A T, 0) post,  T = scale (-log rho)  (or scale w z.du
 *                   with `linear_only`, GRPO-Guard's term without T1)
 *     `ratio_scale` multiplies log rho inside the ratio (PCPO's w'/w, fair clip's s~^2 dt,
 *     GRPO-Guard's std), and `linear_only` drops the quadratic term (GRPO-Guard's RatioNorm
 *     re-centring: log rho + |delta|^2/(2 std^2) = -w z.du).
 *
 *   Every form adds the KL anchor  kl (w_kl^2 / 2) |u - u_ref|^2  (= kl |mu - mu_ref|^2/(2 std^2)).
 *   Sums over the D values become means with `mean_over_dims` (the reference code's convention).
 *   The loss is sum_r weight_r l_r / normalizer.
 */
#ifndef RSM_OBJECTIVE_H
#define RSM_OBJECTIVE_H

#include <stdint.h>

#include "real_api.h"
#include "status.h"

typedef enum rsm_objective_form {
    RSM_FORM_SCORE_MATCHING = 0,
    RSM_FORM_PPO = 1,
    RSM_FORM_LOG_RATIO = 2,
    RSM_FORM_MATCHING = 3
} rsm_objective_form;

/* Per-row coefficients (all double). Unused ones are ignored by the form. */
typedef struct rsm_objective_row {
    double conv;        /* output = conv * score + (x terms); score matching */
    double space;       /* norm factor of the space the loss is measured in; score matching */
    double c1, gamma, c2;
    double adv;         /* advantage A; ratio forms */
    double w;           /* log-ratio weight in output space; ratio forms */
    double ratio_scale; /* multiplies log rho in the ratio / clip test (1 = none) */
    double term_scale;  /* MATCHING: multiplies T */
    double post;        /* post-multiplier of the row loss */
    double clip_eps;    /* clip range (PPO, LOG_RATIO) or hinge threshold (MATCHING) */
    double kl;          /* KL-anchor weight (beta), 0 for none */
    double w_kl;        /* log-ratio weight used by the KL anchor (usually w) */
    double weight;      /* row weight (masks, k_avg / k_i); 0 drops the row */
} rsm_objective_row;

typedef struct rsm_objective_config {
    rsm_objective_form form;
    int anchor_old;      /* score matching: anchor on u_old instead of u_ref */
    int linear_only;     /* ratio forms: drop the quadratic term of log rho */
    int mean_over_dims;  /* per-element means instead of sums over D */
    double normalizer;   /* loss = sum_r weight_r l_r / normalizer (> 0) */
} rsm_objective_config;

/* Per-row diagnostics. */
typedef struct rsm_objective_stats {
    double loss;          /* the total loss */
    double clip_fraction; /* weighted fraction of rows whose gradient is clipped away */
    double kl;            /* weighted mean of the KL anchor term (without the kl factor) */
} rsm_objective_stats;

/* rsm_objective_f32/_f64 (objective_real.c), declared by real_api.h: u, u_old, u_ref, psi, noise
 * are [R, D] arrays (NULL where the form does not read them); cotangent[R, D] receives dL/du (=);
 * log_ratio[R] and active[R] may be NULL. */
RSM_DECLARE_REAL_API(RSM_API_OBJECTIVE)

/* Group-normalised advantages (THEORY.md §7.2, Flow-GRPO's per-prompt stat tracker):
 *   A_r = clip((r_r - mean_g) / (std_g + eps), -adv_clip, adv_clip), std = population std,
 * groups by integer key; a group with std == 0 gets A = 0 and mask 0 (no signal). With
 * `center_only` A = r - mean_g (control variate without normalisation). adv_clip <= 0: no clip. */
rsm_status rsm_group_advantages(int64_t rows, const double *rewards, const int64_t *keys,
                                double eps, double adv_clip, int center_only, double *advantages,
                                uint8_t *mask);

#endif /* RSM_OBJECTIVE_H */
