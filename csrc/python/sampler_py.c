/* sampler_py.c: the binding of the samplers and rollouts (csrc/sampler.h, csrc/train/rollout.h):
 * sample (every sampler, optional trajectory and reward), branch_rollout (ODE root + single-step
 * branches), transition_log_prob and step_coefficients. The rollouts run with the GIL released
 * under the model's lock; a reward callable is called once on the terminal samples through the
 * reward hook (reward_py.c). */
#include "binding.h"

#include <string.h>

#include "../sampler.h"

static int
rsm_parse_sampler(const char *name, const char *func, rsm_sampler_kind *kind)
{
    if (strcmp(name, "euler") == 0 || strcmp(name, "ode") == 0)
        *kind = RSM_SAMPLER_EULER;
    else if (strcmp(name, "heun") == 0)
        *kind = RSM_SAMPLER_HEUN;
    else if (strcmp(name, "sde") == 0)
        *kind = RSM_SAMPLER_SDE;
    else if (strcmp(name, "sde-const") == 0)   /* DanceGRPO: s~ = noise_level at every t */
        *kind = RSM_SAMPLER_SDE_CONST;
    else if (strcmp(name, "ddim") == 0)
        *kind = RSM_SAMPLER_DDIM;
    else {
        rsm_py_raisef(PyExc_ValueError, func,
                      "sampler must be 'euler', 'heun', 'sde', 'sde-const' or 'ddim', got '%s'",
                      name);
        return -1;
    }
    return 0;
}

/* Sampler configuration shared by sample() and transition_log_prob(). */
typedef struct {
    rsm_sampler_config cfg;
    rsm_py_tensor *ts;
    int64_t *branch_steps;
} rsm_py_sampler_args;

static void
rsm_sampler_args_clear(rsm_py_sampler_args *a)
{
    Py_XDECREF(a->ts);
    PyMem_Free(a->branch_steps);
    a->ts = NULL;
    a->branch_steps = NULL;
}

static int
rsm_sampler_args_parse(PyObject *module, const char *func, const char *sampler, PyObject *ts_obj,
                       double noise_level, double eta, long long window_begin, long long window_end,
                       PyObject *branch_obj, long long branch_factor, unsigned long long seed,
                       rsm_py_sampler_args *a)
{
    memset(a, 0, sizeof(*a));
    if (rsm_parse_sampler(sampler, func, &a->cfg.kind) < 0) return -1;
    a->ts = rsm_py_vector_arg(module, ts_obj, func, "ts", RSM_F64, -1);
    if (!a->ts) return -1;
    int64_t S = a->ts->t.shape[0] - 1;
    if (S < 1) {
        rsm_py_raisef(PyExc_ValueError, func, "ts needs >= 2 grid points (steps >= 1)");
        return -1;
    }
    /* name the argument here: the core's check says "time t=..." and the user passed ts */
    if (rsm_py_check_times(a->ts, RSM_F64, func, "ts") < 0) return -1;
    a->cfg.steps = S;
    a->cfg.ts = (const double *)rsm_py_tensor_data(a->ts);
    a->cfg.noise_level = noise_level;
    a->cfg.eta = eta;
    a->cfg.window_begin = window_begin;
    a->cfg.window_end = window_end < 0 ? S : window_end;
    a->cfg.seed = (uint64_t)seed;
    a->cfg.branch_factor = branch_factor;
    if (branch_obj && branch_obj != Py_None) {
        PyObject *seq = PySequence_Fast(branch_obj, "branch_steps must be a sequence of ints");
        if (!seq) return -1;
        Py_ssize_t nb = PySequence_Fast_GET_SIZE(seq);
        a->branch_steps = (int64_t *)PyMem_Malloc((size_t)(nb > 0 ? nb : 1) * sizeof(int64_t));
        if (!a->branch_steps) {
            Py_DECREF(seq);
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < nb; i++) {
            a->branch_steps[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
            if (a->branch_steps[i] == -1 && PyErr_Occurred()) {
                Py_DECREF(seq);
                return -1;
            }
        }
        Py_DECREF(seq);
        a->cfg.branch_steps = a->branch_steps;
        a->cfg.num_branch_steps = nb;
    }
    return 0;
}

/* The prior and condition arguments of a rollout over `rows` rows: x_init [rows, D] and
 * cond [rows, C], each None or finite (whether a model needs cond: the core's check). New
 * references in *x_init / *cond (NULL for None); -1 with an exception set otherwise. */
static int
rsm_rollout_inputs(PyObject *module, const char *func, const rsm_model *model, int64_t rows,
                   PyObject *x_init_obj, PyObject *cond_obj, rsm_py_tensor **x_init,
                   rsm_py_tensor **cond)
{
    *x_init = *cond = NULL;
    const struct rsm_backend *be = model->backend; /* device models: device arrays (device_py.c) */
    if (x_init_obj != Py_None) {
        *x_init = rsm_py_matrix_arg_on(module, be, x_init_obj, func, "x_init", model->dtype, rows,
                                       model->dim);
        if (!*x_init || rsm_py_check_on(module, be, *x_init, model->dtype, func, "x_init", 0) < 0)
            return -1;
    }
    return rsm_py_cond_arg_on(module, be, func, model->dtype, model->cond_dim, rows, cond_obj,
                              cond);
}

/* The arguments every rollout entry point starts with: reward (a callable or None), path and
 * model (with its lock), and the row count `count_name`=count the outputs are sized from before
 * the core runs (the core checks it again, with the same message). */
static int
rsm_rollout_targets(PyObject *module, const char *func, PyObject *reward_obj, PyObject *path_obj,
                    PyObject *model_obj, const char *count_name, long long count,
                    const rsm_path **path, rsm_model *model, PyThread_type_lock *lock)
{
    if (reward_obj != Py_None && !PyCallable_Check(reward_obj)) {
        rsm_py_raisef(PyExc_TypeError, func, "reward must be callable or None, got %s",
                      Py_TYPE(reward_obj)->tp_name);
        return -1;
    }
    *path = rsm_py_path_arg(module, path_obj, func, "path");
    if (!*path || rsm_py_model_arg(module, model_obj, func, model, lock) < 0) return -1;
    if (count < 1) {
        rsm_py_raisef(PyExc_ValueError, func, "%s=%lld must be >= 1", count_name, count);
        return -1;
    }
    return 0;
}

static PyObject *
rsm_py_sample(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"model",
                             "path",
                             "n",
                             "sampler",
                             "ts",
                             "noise_level",
                             "eta",
                             "seed",
                             "x_init",
                             "cond",
                             "window_begin",
                             "window_end",
                             "branch_steps",
                             "branch_factor",
                             "return_trajectory",
                             "pcpo_weight",
                             "reward",
                             "row_offset",
                             NULL};
    PyObject *model_obj, *path_obj, *ts_obj, *x_init_obj = Py_None, *cond_obj = Py_None,
                                             *branch_obj = Py_None, *reward_obj = Py_None;
    long long n, window_begin = 0, window_end = -1, branch_factor = 1;
    const char *sampler;
    double noise_level = 0.7, eta = 1.0;
    unsigned long long seed = 0;
    int return_trajectory = 0;
    double pcpo_weight = 0.0;
    long long row_offset = 0; /* data parallelism: the global index of row 0 (sampler.h) */
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OOLsO|ddKOOLLOLpdOL", kwlist, &model_obj, &path_obj, &n, &sampler,
            &ts_obj, &noise_level, &eta, &seed, &x_init_obj, &cond_obj, &window_begin, &window_end,
            &branch_obj, &branch_factor, &return_trajectory, &pcpo_weight, &reward_obj,
            &row_offset))
        return NULL;
    const char *func = "sample";
    const rsm_path *path;
    rsm_model model;
    PyThread_type_lock lock;
    if (rsm_rollout_targets(module, func, reward_obj, path_obj, model_obj, "n", n, &path, &model,
                            &lock) < 0)
        return NULL;
    rsm_py_sampler_args sa;
    PyObject *result = NULL;
    rsm_py_tensor *x_init = NULL, *cond = NULL;
    rsm_py_tensor *x_final = NULL, *xs = NULL, *means = NULL, *stds = NULL, *log_probs = NULL,
                  *noises = NULL, *outputs = NULL, *rows = NULL;
    if (rsm_sampler_args_parse(module, func, sampler, ts_obj, noise_level, eta, window_begin,
                               window_end, branch_obj, branch_factor, seed, &sa) < 0)
        goto done;
    sa.cfg.pcpo_weight = pcpo_weight;
    sa.cfg.row_offset = row_offset;
    rsm_status status = rsm_sampler_check(path, &sa.cfg);
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        goto done;
    }
    const rsm_dtype dtype = model.dtype;
    const int64_t D = model.dim, S = sa.cfg.steps;
    if (rsm_rollout_inputs(module, func, &model, n, x_init_obj, cond_obj, &x_init, &cond) < 0)
        goto done;
    int64_t N; /* overflow-checked in the core (csrc/checked.h), then the binding's own bound */
    status = rsm_sampler_final_rows(&sa.cfg, n, D, &N);
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        goto done;
    }
    if (N > ((int64_t)1 << 31) / (D > 0 ? D : 1)) {
        rsm_py_raisef(PyExc_ValueError, func, "branching gives %lld rows: too many", (long long)N);
        goto done;
    }
    int64_t shape_final[2] = {N, D};
    int64_t shape_xs[3] = {S + 1, N, D};
    int64_t shape_steps[3] = {S, N, D};
    int64_t shape_lp[2] = {S, N};
    int64_t shape_rows = S + 1;
    /* on a device model's device (the rollout writes them through its backend), except the row
     * counters, which the loop keeps on the host (backend.h) */
    const struct rsm_backend *be = model.backend;
    x_final = rsm_py_tensor_new_on(module, be, dtype, 2, shape_final, 0);
    if (!x_final) goto done;
    if (return_trajectory) {
        xs = rsm_py_tensor_new_on(module, be, dtype, 3, shape_xs, 0);
        means = rsm_py_tensor_new_on(module, be, dtype, 3, shape_steps, 0);
        noises = rsm_py_tensor_new_on(module, be, dtype, 3, shape_steps, 0);
        outputs = rsm_py_tensor_new_on(module, be, dtype, 3, shape_steps, 0);
        stds = rsm_py_tensor_new_on(module, be, dtype, 1, &S, 0);
        log_probs = rsm_py_tensor_new_on(module, be, dtype, 2, shape_lp, 0);
        rows = rsm_py_tensor_new(module, RSM_I64, 1, &shape_rows, 0);
        if (!xs || !means || !noises || !outputs || !stds || !log_probs || !rows) goto done;
    }
    int64_t nfe = 0;
    /* with a reward: the C rollout calls it once on x (rollout.h), holding the interpreter lock
     * only inside the call */
    rsm_py_reward_callback reward;
    rsm_py_reward_init(&reward, reward_obj == Py_None ? NULL : reward_obj, (PyObject *)x_final,
                       lock);
    Py_BEGIN_ALLOW_THREADS
    rsm_py_reward_lock_model(&reward);
    if (dtype == RSM_F32) {
        rsm_trajectory_f32 tr = {RSM_PY_PTR(x_final), RSM_PY_PTR(xs),        RSM_PY_PTR(means),
                                 RSM_PY_PTR(stds),    RSM_PY_PTR(log_probs), RSM_PY_PTR(noises),
                                 RSM_PY_PTR(outputs), RSM_PY_PTR(rows),      0};
        status = rsm_rollout_f32(&model, path, &sa.cfg, n, RSM_PY_PTR(x_init), RSM_PY_PTR(cond),
                                 &tr, rsm_py_reward_hook(&reward));
        nfe = tr.nfe;
    } else {
        rsm_trajectory_f64 tr = {RSM_PY_PTR(x_final), RSM_PY_PTR(xs),        RSM_PY_PTR(means),
                                 RSM_PY_PTR(stds),    RSM_PY_PTR(log_probs), RSM_PY_PTR(noises),
                                 RSM_PY_PTR(outputs), RSM_PY_PTR(rows),      0};
        status = rsm_rollout_f64(&model, path, &sa.cfg, n, RSM_PY_PTR(x_init), RSM_PY_PTR(cond),
                                 &tr, rsm_py_reward_hook(&reward));
        nfe = tr.nfe;
    }
    rsm_py_reward_unlock_model(&reward);
    Py_END_ALLOW_THREADS
    if (rsm_py_reward_finish(&reward, status, func) < 0) {
        rsm_py_reward_clear(&reward);
        goto done;
    }
    if (return_trajectory) {
        result = Py_BuildValue("{s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:L,s:O}", "x", x_final, "xs",
                               xs, "ts", sa.ts, "means", means, "stds", stds, "log_probs",
                               log_probs, "noises", noises, "outputs", outputs, "rows", rows, "nfe",
                               (long long)nfe, "reward", reward.result ? reward.result : Py_None);
    } else {
        result = Py_BuildValue("{s:O,s:L,s:O}", "x", x_final, "nfe", (long long)nfe, "reward",
                               reward.result ? reward.result : Py_None);
    }
    rsm_py_reward_clear(&reward);
done:
    rsm_sampler_args_clear(&sa);
    Py_XDECREF(x_init);
    Py_XDECREF(cond);
    Py_XDECREF(x_final);
    Py_XDECREF(xs);
    Py_XDECREF(means);
    Py_XDECREF(stds);
    Py_XDECREF(log_probs);
    Py_XDECREF(noises);
    Py_XDECREF(outputs);
    Py_XDECREF(rows);
    return result;
}

/* branch_rollout(model, path, ts, roots, root_sampler, branch_sampler, budget, branch_seeds,
 *                seed=0, root_eta=0, branch_eta=1, noise_level=0.7, pcpo_weight=0, x_init=None,
 *                cond=None, reward=None) -> dict(root_xs, x_next, outputs, noises, log_probs, x0,
 *                nfe, reward): the ODE root + single-step branches of rollout.h, then reward(x0).
 */
static PyObject *
rsm_py_branch_rollout(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {
        "model",          "path",        "ts",           "roots",  "root_sampler",
        "branch_sampler", "budget",      "branch_seeds", "seed",   "root_eta",
        "branch_eta",     "noise_level", "pcpo_weight",  "x_init", "cond",
        "reward",         "row_offset",  NULL};
    PyObject *model_obj, *path_obj, *ts_obj, *budget_obj, *seeds_obj,
        *x_init_obj = Py_None, *cond_obj = Py_None, *reward_obj = Py_None;
    long long roots;
    const char *root_name, *branch_name;
    unsigned long long seed = 0;
    double root_eta = 0.0, branch_eta = 1.0, noise_level = 0.7, pcpo_weight = 0.0;
    long long row_offset = 0; /* data parallelism: the global index of root 0 */
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OOOLssOO|KddddOOOL", kwlist, &model_obj, &path_obj, &ts_obj, &roots,
            &root_name, &branch_name, &budget_obj, &seeds_obj, &seed, &root_eta, &branch_eta,
            &noise_level, &pcpo_weight, &x_init_obj, &cond_obj, &reward_obj, &row_offset))
        return NULL;
    const char *func = "branch_rollout";
    const rsm_path *path;
    rsm_model model;
    PyThread_type_lock lock;
    if (rsm_rollout_targets(module, func, reward_obj, path_obj, model_obj, "roots", roots, &path,
                            &model, &lock) < 0)
        return NULL;
    rsm_py_sampler_args root_args, branch_args;
    memset(&branch_args, 0, sizeof(branch_args));
    PyObject *result = NULL;
    rsm_py_tensor *budget = NULL, *seeds = NULL, *x_init = NULL, *cond = NULL, *root_xs = NULL,
                  *x_next = NULL, *outputs = NULL, *noises = NULL, *log_probs = NULL, *x0 = NULL;
    if (rsm_sampler_args_parse(module, func, root_name, ts_obj, noise_level, root_eta, 0, -1,
                               Py_None, 1, seed, &root_args) < 0)
        goto done;
    if (rsm_sampler_args_parse(module, func, branch_name, ts_obj, noise_level, branch_eta, 0, -1,
                               Py_None, 1, 0, &branch_args) < 0)
        goto done;
    branch_args.cfg.pcpo_weight = pcpo_weight;
    root_args.cfg.row_offset = row_offset;
    const int64_t S = root_args.cfg.steps, D = model.dim;
    const rsm_dtype dtype = model.dtype;
    budget = rsm_py_vector_arg(module, budget_obj, func, "budget", RSM_I64, S);
    if (!budget) goto done;
    seeds = rsm_py_vector_arg(module, seeds_obj, func, "branch_seeds", RSM_U64, S);
    if (!seeds) goto done;
    rsm_branch_config bc = {root_args.cfg, branch_args.cfg,
                            (const int64_t *)rsm_py_tensor_data(budget),
                            (const uint64_t *)rsm_py_tensor_data(seeds)};
    rsm_status status = rsm_branch_check(path, &bc);
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        goto done;
    }
    if (rsm_rollout_inputs(module, func, &model, roots, x_init_obj, cond_obj, &x_init, &cond) < 0)
        goto done;
    int64_t R; /* overflow-checked in the core (csrc/checked.h), then the binding's own bound */
    status = rsm_branch_rows(&bc, roots, D, &R);
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        goto done;
    }
    if (R > ((int64_t)1 << 31) / (D > 0 ? D : 1)) {
        rsm_py_raisef(PyExc_ValueError, func, "the budget gives %lld rows: too many", (long long)R);
        goto done;
    }
    int64_t shape_root[3] = {S + 1, roots, D}, shape_rows[2] = {R, D};
    root_xs = rsm_py_tensor_new_on(module, model.backend, dtype, 3, shape_root, 0);
    x_next = rsm_py_tensor_new_on(module, model.backend, dtype, 2, shape_rows, 0);
    outputs = rsm_py_tensor_new_on(module, model.backend, dtype, 2, shape_rows, 0);
    noises = rsm_py_tensor_new_on(module, model.backend, dtype, 2, shape_rows, 0);
    log_probs = rsm_py_tensor_new_on(module, model.backend, dtype, 1, &R, 0);
    x0 = rsm_py_tensor_new_on(module, model.backend, dtype, 2, shape_rows, 0);
    if (!root_xs || !x_next || !outputs || !noises || !log_probs || !x0) goto done;
    int64_t nfe = 0;
    rsm_py_reward_callback reward;
    rsm_py_reward_init(&reward, reward_obj == Py_None ? NULL : reward_obj, (PyObject *)x0, lock);
    Py_BEGIN_ALLOW_THREADS
    rsm_py_reward_lock_model(&reward);
    if (dtype == RSM_F32) {
        rsm_branch_out_f32 out = {RSM_PY_PTR(root_xs),
                                  RSM_PY_PTR(x_next),
                                  RSM_PY_PTR(outputs),
                                  RSM_PY_PTR(noises),
                                  RSM_PY_PTR(log_probs),
                                  RSM_PY_PTR(x0),
                                  0};
        status = rsm_branch_rollout_f32(&model, path, &bc, roots, RSM_PY_PTR(x_init),
                                        RSM_PY_PTR(cond), &out, rsm_py_reward_hook(&reward));
        nfe = out.nfe;
    } else {
        rsm_branch_out_f64 out = {RSM_PY_PTR(root_xs),
                                  RSM_PY_PTR(x_next),
                                  RSM_PY_PTR(outputs),
                                  RSM_PY_PTR(noises),
                                  RSM_PY_PTR(log_probs),
                                  RSM_PY_PTR(x0),
                                  0};
        status = rsm_branch_rollout_f64(&model, path, &bc, roots, RSM_PY_PTR(x_init),
                                        RSM_PY_PTR(cond), &out, rsm_py_reward_hook(&reward));
        nfe = out.nfe;
    }
    rsm_py_reward_unlock_model(&reward);
    Py_END_ALLOW_THREADS
    if (rsm_py_reward_finish(&reward, status, func) == 0)
        result =
            Py_BuildValue("{s:O,s:O,s:O,s:O,s:O,s:O,s:L,s:O}", "root_xs", root_xs, "x_next", x_next,
                          "outputs", outputs, "noises", noises, "log_probs", log_probs, "x0", x0,
                          "nfe", (long long)nfe, "reward", reward.result ? reward.result : Py_None);
    rsm_py_reward_clear(&reward);
done:
    rsm_sampler_args_clear(&root_args);
    rsm_sampler_args_clear(&branch_args);
    Py_XDECREF(budget);
    Py_XDECREF(seeds);
    Py_XDECREF(x_init);
    Py_XDECREF(cond);
    Py_XDECREF(root_xs);
    Py_XDECREF(x_next);
    Py_XDECREF(outputs);
    Py_XDECREF(noises);
    Py_XDECREF(log_probs);
    Py_XDECREF(x0);
    return result;
}

/* transition_log_prob(model, path, sampler, ts, step, x, x_next, noise_level, eta, cond,
 *                     window_begin, window_end) -> (log_prob[n], mean[n, D], output[n, D]) */
static PyObject *
rsm_py_transition_log_prob(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {
        "model",       "path", "sampler", "ts",           "step",       "x",           "x_next",
        "noise_level", "eta",  "cond",    "window_begin", "window_end", "pcpo_weight", NULL};
    PyObject *model_obj, *path_obj, *ts_obj, *x_obj, *x_next_obj, *cond_obj = Py_None;
    const char *sampler;
    long long step, window_begin = 0, window_end = -1;
    double noise_level = 0.7, eta = 1.0, pcpo_weight = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOsOLOO|ddOLLd", kwlist, &model_obj, &path_obj,
                                     &sampler, &ts_obj, &step, &x_obj, &x_next_obj, &noise_level,
                                     &eta, &cond_obj, &window_begin, &window_end, &pcpo_weight))
        return NULL;
    const char *func = "log_prob";
    const rsm_path *path = rsm_py_path_arg(module, path_obj, func, "path");
    if (!path) return NULL;
    rsm_model model;
    PyThread_type_lock lock;
    if (rsm_py_model_arg(module, model_obj, func, &model, &lock) < 0) return NULL;
    rsm_py_sampler_args sa;
    PyObject *result = NULL;
    rsm_py_tensor *x = NULL, *x_next = NULL, *cond = NULL, *lp = NULL, *mean = NULL, *out = NULL;
    if (rsm_sampler_args_parse(module, func, sampler, ts_obj, noise_level, eta, window_begin,
                               window_end, Py_None, 1, 0, &sa) < 0)
        goto done;
    sa.cfg.pcpo_weight = pcpo_weight;
    const rsm_dtype dtype = model.dtype;
    const struct rsm_backend *be = model.backend; /* device models: device arrays */
    x = rsm_py_matrix_arg_on(module, be, x_obj, func, "x", dtype, -1, model.dim);
    if (!x || rsm_py_check_on(module, be, x, dtype, func, "x", 0) < 0) goto done;
    int64_t n = x->t.shape[0];
    x_next = rsm_py_matrix_arg_on(module, be, x_next_obj, func, "x_next", dtype, n, model.dim);
    if (!x_next || rsm_py_check_on(module, be, x_next, dtype, func, "x_next", 0) < 0) goto done;
    if (rsm_py_cond_arg_on(module, be, func, dtype, model.cond_dim, n, cond_obj, &cond) < 0)
        goto done;
    lp = rsm_py_tensor_new_on(module, model.backend, dtype, 1, &n, 0);
    mean = rsm_py_tensor_new_on(module, model.backend, dtype, 2, x->t.shape, 0);
    out = rsm_py_tensor_new_on(module, model.backend, dtype, 2, x->t.shape, 0);
    if (!lp || !mean || !out) goto done;
    rsm_status status;
    Py_BEGIN_ALLOW_THREADS
    if (lock) PyThread_acquire_lock(lock, WAIT_LOCK);
    if (dtype == RSM_F32)
        status = rsm_transition_log_prob_f32(&model, path, &sa.cfg, step, n, RSM_PY_PTR(x),
                                             RSM_PY_PTR(x_next), RSM_PY_PTR(cond), RSM_PY_PTR(lp),
                                             RSM_PY_PTR(mean), RSM_PY_PTR(out));
    else
        status = rsm_transition_log_prob_f64(&model, path, &sa.cfg, step, n, RSM_PY_PTR(x),
                                             RSM_PY_PTR(x_next), RSM_PY_PTR(cond), RSM_PY_PTR(lp),
                                             RSM_PY_PTR(mean), RSM_PY_PTR(out));
    if (lock) PyThread_release_lock(lock);
    Py_END_ALLOW_THREADS
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        goto done;
    }
    result = Py_BuildValue("(OOO)", lp, mean, out);
done:
    rsm_sampler_args_clear(&sa);
    Py_XDECREF(x);
    Py_XDECREF(x_next);
    Py_XDECREF(cond);
    Py_XDECREF(lp);
    Py_XDECREF(mean);
    Py_XDECREF(out);
    return result;
}

/* step_coefficients(path, sampler, ts, noise_level, eta, window_begin, window_end) -> list of dicts
 */
static PyObject *
rsm_py_step_coefficients(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"path",         "sampler",    "ts",          "noise_level", "eta",
                             "window_begin", "window_end", "pcpo_weight", NULL};
    PyObject *path_obj, *ts_obj;
    const char *sampler;
    double noise_level = 0.7, eta = 1.0, pcpo_weight = 0.0;
    long long window_begin = 0, window_end = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OsO|ddLLd", kwlist, &path_obj, &sampler,
                                     &ts_obj, &noise_level, &eta, &window_begin, &window_end,
                                     &pcpo_weight))
        return NULL;
    const rsm_path *path = rsm_py_path_arg(module, path_obj, "step_coefficients", "path");
    if (!path) return NULL;
    rsm_py_sampler_args sa;
    if (rsm_sampler_args_parse(module, "step_coefficients", sampler, ts_obj, noise_level, eta,
                               window_begin, window_end, Py_None, 1, 0, &sa) < 0) {
        rsm_sampler_args_clear(&sa);
        return NULL;
    }
    sa.cfg.pcpo_weight = pcpo_weight;
    rsm_status status = rsm_sampler_check(path, &sa.cfg);
    if (status != RSM_OK) {
        rsm_sampler_args_clear(&sa);
        return rsm_py_raise(status, "step_coefficients");
    }
    PyObject *list = PyList_New(sa.cfg.steps);
    for (int64_t i = 0; list && i < sa.cfg.steps; i++) {
        rsm_step_coef s = rsm_sampler_step_coef(path, &sa.cfg, i);
        PyObject *d = Py_BuildValue("{s:d,s:d,s:d,s:d,s:d,s:d,s:O,s:O,s:d,s:d,s:d,s:d}", "t", s.t,
                                    "t_next", s.t_next, "dt", s.dt, "A", s.A, "K", s.K, "std",
                                    s.std, "stochastic", s.stochastic ? Py_True : Py_False, "heun",
                                    s.heun ? Py_True : Py_False, "v_x", s.v_x, "v_u", s.v_u,
                                    "v_x_next", s.v_x_next, "v_u_next", s.v_u_next);
        if (!d) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, d);
    }
    rsm_sampler_args_clear(&sa);
    return list;
}

static PyMethodDef rsm_sampler_methods[] = {
    {"sample", (PyCFunction)(void (*)(void))rsm_py_sample, METH_VARARGS | METH_KEYWORDS,
     "sample(...) -> dict"},
    {"branch_rollout", (PyCFunction)(void (*)(void))rsm_py_branch_rollout,
     METH_VARARGS | METH_KEYWORDS,
     "branch_rollout(...) -> dict: ODE root + single-step branches, then reward(x0) (rollout.h)"},
    {"transition_log_prob", (PyCFunction)(void (*)(void))rsm_py_transition_log_prob,
     METH_VARARGS | METH_KEYWORDS, "transition_log_prob(...) -> (log_prob, mean, output)"},
    {"step_coefficients", (PyCFunction)(void (*)(void))rsm_py_step_coefficients,
     METH_VARARGS | METH_KEYWORDS, "per-step (A, K, std) of a sampler"},
    {NULL, NULL, 0, NULL},
};

int
rsm_py_sampler_exec(PyObject *module)
{
    return PyModule_AddFunctions(module, rsm_sampler_methods);
}
