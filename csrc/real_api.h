/* real_api.h: the one list of the C core's templated entry points, and the one dtype dispatch
 * (the scheme: real.h).
 *
 * Each entry below is one function defined once over real_t in the *_real.c file its section
 * names, and compiled for float32 and float64 (precision_f32.c / precision_f64.c). An entry spells
 * both full names, so grep finds the declaration of e.g. rsm_sample_f32 here:
 *
 *   X(return type, P(name_f32, name_f64), (parameters, with R for real_t))
 *
 * A module declares its section in both precisions with RSM_DECLARE_REAL_API(RSM_API_SAMPLER),
 * in its header (which has the types the parameters use), or in its .c file where the typed
 * functions are private to it (mlp.c, guided.c, update.c, pretrain.c); precision_f*.c declare
 * the whole list again after the definitions, so the compiler checks every entry against its
 * definition. Declaring a new templated op in both precisions = one entry here.
 *
 * RSM_REAL_CALL(dtype, sample, args...) calls rsm_sample_f32 or rsm_sample_f64 by an rsm_dtype
 * (arrays passed as void *); every dtype dispatch of the core goes through it. The dtype must
 * have been validated (RSM_F32 or RSM_F64) where the object or call was checked.
 */
#ifndef RSM_REAL_API_H
#define RSM_REAL_API_H

/* ---- path_real.c (path.h) ------------------------------------------------------------------ */
/* Conversions of whole arrays, n rows of `dim` values with per-row times t[n]: out = the `to`
 * parameterization of the prediction given as `from` (in place allowed); path_noise:
 * x_t = alpha(t) x0 + sigma(t) eps. */
#define RSM_API_PATH(X, R, P)                                                                      \
    X(rsm_status, P(rsm_path_convert_f32, rsm_path_convert_f64),                                  \
      (const rsm_path *path, rsm_param from, rsm_param to, int64_t n, int64_t dim, const R *t,    \
       const R *x, const R *u, R *out))                                                            \
    X(rsm_status, P(rsm_path_noise_f32, rsm_path_noise_f64),                                      \
      (const rsm_path *path, int64_t n, int64_t dim, const R *t, const R *x0, const R *eps,       \
       R *xt))

/* ---- rng_real.c (rng.h) -------------------------------------------------------------------- */
/* Host fills: element i of out is element offset + i of (seed, stream); uniforms in (0, 1). */
#define RSM_API_RNG(X, R, P)                                                                       \
    X(void, P(rsm_fill_normal_f32, rsm_fill_normal_f64),                                          \
      (uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, R *out))                        \
    X(void, P(rsm_fill_uniform_f32, rsm_fill_uniform_f64),                                        \
      (uint64_t seed, uint64_t stream, uint64_t offset, int64_t n, R *out))

/* ---- sampler_real.c (sampler.h) ------------------------------------------------------------ */
/* sample: x_init[n, D] (NULL: draw N(0, I) from (seed, RSM_STREAM_PRIOR)), cond[n, C] or NULL.
 * transition_log_prob: the policy-ratio primitive, log pi_model(x_next | x) of step `step` for n
 * rows, with the same mean and density code as sampling; mean_out and output_out may be NULL. */
#define RSM_API_SAMPLER(X, R, P)                                                                   \
    X(rsm_status, P(rsm_sample_f32, rsm_sample_f64),                                              \
      (const rsm_model *model, const rsm_path *path, const rsm_sampler_config *cfg, int64_t n,    \
       const R *x_init, const R *cond, P(rsm_trajectory_f32, rsm_trajectory_f64) *out))           \
    X(rsm_status, P(rsm_transition_log_prob_f32, rsm_transition_log_prob_f64),                    \
      (const rsm_model *model, const rsm_path *path, const rsm_sampler_config *cfg, int64_t step, \
       int64_t n, const R *x, const R *x_next, const R *cond, R *log_prob, R *mean_out,           \
       R *output_out))

/* ---- train/rollout_real.c (train/rollout.h) ------------------------------------------------ */
/* rollout: rsm_sample_*, then reward->fn(ctx, N, D, out->x_final) unless reward is NULL.
 * branch_rollout: x_init [roots, D] prior or NULL (drawn from the root sampler's seed); cond
 * [roots, C] or NULL (each branch row takes its root's condition). */
#define RSM_API_ROLLOUT(X, R, P)                                                                   \
    X(rsm_status, P(rsm_rollout_f32, rsm_rollout_f64),                                            \
      (const rsm_model *model, const rsm_path *path, const rsm_sampler_config *cfg, int64_t n,    \
       const R *x_init, const R *cond, P(rsm_trajectory_f32, rsm_trajectory_f64) *out,            \
       const rsm_reward_hook *reward))                                                             \
    X(rsm_status, P(rsm_branch_rollout_f32, rsm_branch_rollout_f64),                              \
      (const rsm_model *model, const rsm_path *path, const rsm_branch_config *cfg, int64_t roots, \
       const R *x_init, const R *cond, P(rsm_branch_out_f32, rsm_branch_out_f64) *out,            \
       const rsm_reward_hook *reward))

/* ---- objective_real.c (objective.h) -------------------------------------------------------- */
/* u, u_old, u_ref, psi, noise: [R, D] arrays (NULL where the form does not read them);
 * cotangent[R, D] receives dL/du (=); log_ratio[R] and active[R] may be NULL. */
#define RSM_API_OBJECTIVE(X, R, P)                                                                 \
    X(rsm_status, P(rsm_objective_f32, rsm_objective_f64),                                        \
      (const rsm_objective_config *cfg, int64_t rows, int64_t dim, const rsm_objective_row *coef, \
       const R *u, const R *u_old, const R *u_ref, const R *psi, const R *noise, R *cotangent,    \
       double *log_ratio, uint8_t *active, rsm_objective_stats *stats))

/* ---- optim_real.c (optim.h) ---------------------------------------------------------------- */
#define RSM_API_OPTIM(X, R, P)                                                                     \
    X(rsm_status, P(rsm_adamw_step_f32, rsm_adamw_step_f64),                                      \
      (rsm_adamw *opt, R *params, R *grads, double lr, double *grad_norm))

/* ---- nn/mlp_real.c (nn/mlp.h) -------------------------------------------------------------- */
#define RSM_API_MLP(X, R, P)                                                                       \
    X(rsm_status, P(rsm_mlp_init_params_f32, rsm_mlp_init_params_f64),                            \
      (const rsm_mlp *mlp, uint64_t seed))                                                         \
    X(rsm_status, P(rsm_mlp_forward_f32, rsm_mlp_forward_f64),                                    \
      (rsm_mlp *mlp, int64_t n, const R *x, const R *t, const R *cond, R *out))                    \
    X(rsm_status, P(rsm_mlp_backward_f32, rsm_mlp_backward_f64),                                  \
      (rsm_mlp *mlp, int64_t n, const R *dout, R *dparams, R *dx))

/* ---- nn/dit_real.c (nn/dit.h) -------------------------------------------------------------- */
/* dit_op: test hook, forward and backward of one op (name: "layernorm", "modulate",
 * "gated_residual", "attention", "gelu", "patchify"); see dit_real.c for the argument packing. */
#define RSM_API_DIT(X, R, P)                                                                       \
    X(rsm_status, P(rsm_dit_init_params_f32, rsm_dit_init_params_f64),                            \
      (const rsm_dit *dit, uint64_t seed))                                                         \
    X(void, P(rsm_dit_init_pos_f32, rsm_dit_init_pos_f64), (const rsm_dit *dit))                   \
    X(rsm_status, P(rsm_dit_init_lora_f32, rsm_dit_init_lora_f64),                                \
      (const rsm_dit *dit, uint64_t seed))                                                         \
    X(int64_t, P(rsm_dit_activation_elems_f32, rsm_dit_activation_elems_f64),                     \
      (const rsm_dit *dit, int64_t n))                                                             \
    X(rsm_status, P(rsm_dit_forward_f32, rsm_dit_forward_f64),                                    \
      (rsm_dit *dit, int64_t n, const R *x, const R *t, const R *cond, R *out))                    \
    X(rsm_status, P(rsm_dit_backward_f32, rsm_dit_backward_f64),                                  \
      (rsm_dit *dit, int64_t n, const R *dout, R *dparams, R *dx))                                 \
    X(rsm_status, P(rsm_dit_op_f32, rsm_dit_op_f64),                                              \
      (const char *name, const int64_t *sizes, const R *const *inputs, const R *dout, R *out,     \
       R *const *grads))

/* ---- nn/guided_real.c (nn/guided.h) -------------------------------------------------------- */
#define RSM_API_GUIDED(X, R, P)                                                                    \
    X(void, P(rsm_guided_combine_f32, rsm_guided_combine_f64),                                    \
      (int64_t m, double scale, const R *u2, R *out))                                              \
    X(void, P(rsm_guided_split_f32, rsm_guided_split_f64),                                        \
      (int64_t m, double scale, const R *dout, R *du2))                                            \
    X(void, P(rsm_guided_stack_f32, rsm_guided_stack_f64),                                        \
      (int64_t n, int64_t dim, int64_t cond_dim, const R *null_cond, const R *x, const R *t,      \
       const R *cond, R *x2, R *t2, R *cond2))                                                     \
    X(void, P(rsm_guided_sum_halves_f32, rsm_guided_sum_halves_f64),                              \
      (int64_t m, const R *dx2, R *dx))

/* ---- train/update_real.c (train/update.h) -------------------------------------------------- */
#define RSM_API_UPDATE(X, R, P)                                                                    \
    X(rsm_status, P(rsm_update_gradient_f32, rsm_update_gradient_f64),                            \
      (const rsm_update_config *cfg, const rsm_path *path, const rsm_model *policy,               \
       const rsm_model *ref, int64_t nblocks, rsm_update_block *blocks, R *grads,                 \
       rsm_update_block_stats *stats, int64_t *nfe))                                               \
    X(rsm_status, P(rsm_update_steps_f32, rsm_update_steps_f64),                                  \
      (const rsm_update_config *cfg, const rsm_path *path, const rsm_model *policy,               \
       const rsm_model *ref, rsm_adamw *opt, double lr, int64_t epochs, int64_t nblocks,          \
       rsm_update_block *blocks, R *grads, rsm_update_block_stats *stats, double *grad_norms,     \
       int64_t *nfe))

/* ---- train/pretrain_real.c (train/pretrain.h) ---------------------------------------------- */
#define RSM_API_PRETRAIN(X, R, P)                                                                  \
    X(rsm_status, P(rsm_pretrain_steps_f32, rsm_pretrain_steps_f64),                              \
      (const rsm_model *model, rsm_adamw *opt, const rsm_path *path,                              \
       const rsm_pretrain_config *cfg, const R *data, const R *data_cond, int64_t n_data,         \
       int64_t first_step, int64_t num_steps, R *grads, double *losses, double *grad_norms))    \
    X(rsm_status, P(rsm_pretrain_grad_f32, rsm_pretrain_grad_f64),                                \
      (const rsm_model *model, const rsm_path *path, const rsm_pretrain_config *cfg,              \
       const R *data, const R *data_cond, int64_t n_data, int64_t step, int64_t row_begin,        \
       int64_t row_end, R *grads, double *loss))

/* ---- backend_check_real.c (backend.h) ------------------------------------------------------ */
/* Test hook: every op of be's table of this precision against the CPU loops, bit for bit;
 * returns the number of mismatches (-1: out of memory), the names compared in `checked` and the
 * mismatching ones in `msg` (space-separated). */
#define RSM_API_BACKEND(X, R, P)                                                                   \
    X(int64_t, P(rsm_backend_check_f32, rsm_backend_check_f64),                                   \
      (const struct rsm_backend *be, char *checked, size_t checked_len, char *msg,                \
       size_t msg_len))

/* The whole list (precision_f*.c check it against the definitions). */
#define RSM_REAL_API(X, R, P)                                                                      \
    RSM_API_PATH(X, R, P) RSM_API_RNG(X, R, P) RSM_API_SAMPLER(X, R, P) RSM_API_ROLLOUT(X, R, P) \
    RSM_API_OBJECTIVE(X, R, P) RSM_API_OPTIM(X, R, P) RSM_API_MLP(X, R, P) RSM_API_DIT(X, R, P)  \
    RSM_API_GUIDED(X, R, P) RSM_API_UPDATE(X, R, P) RSM_API_PRETRAIN(X, R, P)                    \
    RSM_API_BACKEND(X, R, P)

/* ---- expansion ------------------------------------------------------------------------------ */
#define RSM_REAL_PICK_F32(name_f32, name_f64) name_f32
#define RSM_REAL_PICK_F64(name_f32, name_f64) name_f64
#define RSM_REAL_DECLARE_ONE(ret, name, params) ret name params;
/* Both precisions' prototypes of a section (or of the whole list). */
#define RSM_DECLARE_REAL_API(section)                                                              \
    section(RSM_REAL_DECLARE_ONE, float, RSM_REAL_PICK_F32)                                        \
    section(RSM_REAL_DECLARE_ONE, double, RSM_REAL_PICK_F64)

/* The one dtype dispatch: rsm_<name>_f32(...) for RSM_F32, rsm_<name>_f64(...) for RSM_F64. */
#define RSM_REAL_CALL(dtype, name, ...)                                                            \
    ((dtype) == RSM_F32 ? rsm_##name##_f32(__VA_ARGS__) : rsm_##name##_f64(__VA_ARGS__))

#endif /* RSM_REAL_API_H */
