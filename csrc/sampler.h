/* sampler.h: reverse-time samplers with exact transition log-probabilities (THEORY.md §2).
 *
 * Every stochastic step is Gaussian with a mean affine in the state and the network output
 * (THEORY.md §2.3):      x' = mu + std z,   mu = A x + K u,   u = network output (native param.)
 * and its log-density   log pi(x' | x) = -|x' - mu|^2 / (2 std^2) - D log std - (D/2) log 2 pi
 * is summed over the D dimensions. The sampler and the policy-ratio primitive
 * (rsm_transition_log_prob) compute mu and the log-density with the same functions, so a
 * transition recomputed under the sampling model gives bitwise the same log-prob.
 *
 *   EULER : probability-flow ODE, x' = x - dt v                         (deterministic)
 *   HEUN  : second-order ODE (Euler on the last step into t = 0 for VP)  (deterministic)
 *   SDE   : Flow-GRPO's SDE, x' = x - dt [v - (s~^2 / 2) score] + s~ sqrt(dt) z,
 *           s~ = a sqrt(t / (1 - t*)), t* = t except t* = ts[1] when t = 1 (Flow-GRPO's t_max)
 *   SDE_CONST: the same SDE with a constant s~ = a (DanceGRPO's flux_step, its eta)
 *   DDIM  : x' = alpha' x0_hat + sqrt(sigma'^2 - s^2) eps_hat + s z,
 *           s^2 = eta^2 (sigma'^2 / sigma^2) (1 - alpha^2 / alpha'^2); eta = 1 is DDPM's
 *           posterior variance, eta = 0 deterministic DDIM. Written for any path (alpha, sigma).
 *           With pcpo_weight = w > 0 the std is PCPO's (THEORY.md §6.3.6), times eta:
 *           s = (w c1 + sqrt((1 + w^2) sigma'^2 - c1^2)) / (1 + w^2),  c1 = sigma alpha' / alpha,
 *           the root of (c1 + sqrt(sigma'^2 - s^2)) / s = w (identity T17).
 * Deterministic steps (ODE, eta = 0, steps outside the stochastic window) record std = 0,
 * noise = 0 and log_prob = 0 (a Dirac transition has no density; it takes no part in ratios).
 */
#ifndef RSM_SAMPLER_H
#define RSM_SAMPLER_H

#include <stdint.h>

#include "nn/model.h"
#include "path.h"
#include "real_api.h"
#include "status.h"

typedef enum rsm_sampler_kind {
    RSM_SAMPLER_EULER = 0,
    RSM_SAMPLER_HEUN = 1,
    RSM_SAMPLER_SDE = 2,
    RSM_SAMPLER_DDIM = 3,
    RSM_SAMPLER_SDE_CONST = 4
} rsm_sampler_kind;

typedef struct rsm_sampler_config {
    rsm_sampler_kind kind;
    int64_t steps;          /* number of transitions S */
    const double *ts;       /* [S + 1], strictly decreasing, in [0, 1] */
    double noise_level;     /* SDE: a (Flow-GRPO's 0.7); SDE_CONST: s~ (DanceGRPO's eta) */
    double eta;             /* DDIM: eta in [0, 1] */
    int64_t window_begin;   /* stochastic only on steps [window_begin, window_end); */
    int64_t window_end;     /* deterministic (ODE / eta = 0) elsewhere */
    const int64_t *branch_steps; /* sorted steps before which every row splits into */
    int64_t num_branch_steps;    /* branch_factor children */
    int64_t branch_factor;
    uint64_t seed;
    double pcpo_weight;     /* DDIM: > 0 replaces the step std by PCPO's (THEORY.md §6.3.6) */
    /* Data parallelism: the global index of row 0. Row r draws the prior and step noise of row
     * row_offset + r of a run over all rows (after a split into b children, of row
     * (row_offset + r / b) b + r % b), so a shard of the rows reproduces its rows of the whole
     * run bitwise. 0 for a run of its own. */
    int64_t row_offset;
} rsm_sampler_config;

/* The Gaussian step i: mu = A x + K u, std; stochastic = std > 0. */
typedef struct rsm_step_coef {
    double t, t_next, dt;
    double A, K, std;
    int stochastic;
    int heun;          /* HEUN with a finite velocity at t_next */
    double v_x, v_u;   /* velocity = v_x x + v_u u at t (Heun, diagnostics) */
    double v_x_next, v_u_next; /* the same at t_next */
} rsm_step_coef;

rsm_status rsm_sampler_check(const rsm_path *path, const rsm_sampler_config *cfg);
rsm_step_coef rsm_sampler_step_coef(const rsm_path *path, const rsm_sampler_config *cfg,
                                    int64_t step);
/* Rows after all branch points: n * branch_factor ^ num_branch_steps. */
/* Overflow-checked: RSM_ERR_VALUE naming n and branch_factor when rows * dim * (steps + 1) is
 * above RSM_MAX_ELEMS (csrc/checked.h). */
rsm_status rsm_sampler_final_rows(const rsm_sampler_config *cfg, int64_t n, int64_t dim,
                                  int64_t *rows);

/* Outputs of a sampling run; every pointer except x_final may be NULL. N = final rows. The
 * fields once, for real_t = R: rsm_trajectory_f32 and rsm_trajectory_f64 below. */
#define RSM_TRAJECTORY_FIELDS(R)                                                                   \
    R *x_final;   /* [N, D] */                                                                     \
    R *xs;        /* [S + 1, N, D] states, xs[0] = prior draw at ts[0] */                          \
    R *means;     /* [S, N, D] transition means */                                                 \
    R *stds;      /* [S] */                                                                        \
    R *log_probs; /* [S, N] */                                                                     \
    R *noises;    /* [S, N, D] the z of each step (0 when deterministic) */                        \
    R *outputs;   /* [S, N, D] network outputs u at each step (theta^dagger's) */                  \
    int64_t *rows; /* [S + 1] distinct rows alive at each state (branching) */                     \
    int64_t nfe;   /* network evaluations (rows x calls) */
typedef struct rsm_trajectory_f32 {
    RSM_TRAJECTORY_FIELDS(float)
} rsm_trajectory_f32;
typedef struct rsm_trajectory_f64 {
    RSM_TRAJECTORY_FIELDS(double)
} rsm_trajectory_f64;

/* rsm_sample_f32/_f64 (x_init[n, D], NULL: draw N(0, I) from (seed, RSM_STREAM_PRIOR); cond[n, C]
 * or NULL) and rsm_transition_log_prob_f32/_f64 (the policy-ratio primitive: log pi(x_next | x)
 * of one step with the same mean and density code as sampling), declared by real_api.h. */
RSM_DECLARE_REAL_API(RSM_API_SAMPLER)

#endif /* RSM_SAMPLER_H */
