/* objective_py.c: binding of the RSM objective and the group advantages (csrc/objective.h). */
#include "binding.h"

#include <stddef.h>
#include <string.h>

#include "../objective.h"

#define RSM_OBJECTIVE_ROW_FIELDS 14
_Static_assert(sizeof(rsm_objective_row) == RSM_OBJECTIVE_ROW_FIELDS * sizeof(double),
               "rsm_objective_row must be 14 doubles (the binding passes a [R, 14] matrix)");

/* Exported (binding.h): the objective form named `name`; `what` names the argument. */
int
rsm_py_parse_form(const char *name, const char *func, const char *what, rsm_objective_form *form)
{
    if (strcmp(name, "score_matching") == 0)
        *form = RSM_FORM_SCORE_MATCHING;
    else if (strcmp(name, "ppo") == 0)
        *form = RSM_FORM_PPO;
    else if (strcmp(name, "log_ratio") == 0)
        *form = RSM_FORM_LOG_RATIO;
    else if (strcmp(name, "matching") == 0)
        *form = RSM_FORM_MATCHING;
    else {
        rsm_py_raisef(PyExc_ValueError, func,
                      "%s must be 'score_matching', 'ppo', 'log_ratio' or 'matching', got '%s'",
                      what, name);
        return -1;
    }
    return 0;
}

/* An optional [R, D] array of `dtype`, or NULL for None. */
static int
rsm_optional_rows(PyObject *module, PyObject *obj, const char *name, rsm_dtype dtype, int64_t rows,
                  int64_t dim, rsm_py_tensor **out)
{
    *out = NULL;
    if (obj == Py_None) return 0;
    rsm_py_tensor *t = rsm_py_tensor_arg(module, obj, "objective", name, dtype);
    if (!t) return -1;
    if (t->t.ndim != 2 || t->t.shape[0] != rows || t->t.shape[1] != dim) {
        rsm_py_raisef(PyExc_ValueError, "objective", "%s must have shape [%lld, %lld]", name,
                      (long long)rows, (long long)dim);
        Py_DECREF(t);
        return -1;
    }
    *out = t;
    return 0;
}

/* objective(form, u, u_old, u_ref, psi, noise, coef[R, 14], anchor_old, linear_only,
 *           mean_over_dims, normalizer) -> dict(loss, cotangent, log_ratio, active,
 *                                               clip_fraction, kl) */
static PyObject *
rsm_py_objective(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"form",       "u",    "u_old",      "u_ref",       "psi",
                             "noise",      "coef", "anchor_old", "linear_only", "mean_over_dims",
                             "normalizer", NULL};
    const char *form_name;
    PyObject *u_obj, *u_old_obj, *u_ref_obj, *psi_obj, *noise_obj, *coef_obj;
    int anchor_old = 0, linear_only = 0, mean_over_dims = 0;
    double normalizer = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sOOOOOO|pppd", kwlist, &form_name, &u_obj,
                                     &u_old_obj, &u_ref_obj, &psi_obj, &noise_obj, &coef_obj,
                                     &anchor_old, &linear_only, &mean_over_dims, &normalizer))
        return NULL;
    rsm_objective_config cfg = {0};
    if (rsm_py_parse_form(form_name, "objective", "form", &cfg.form) < 0) return NULL;
    cfg.anchor_old = anchor_old;
    cfg.linear_only = linear_only;
    cfg.mean_over_dims = mean_over_dims;
    cfg.normalizer = normalizer;
    PyObject *result = NULL;
    rsm_py_tensor *u = NULL, *u_old = NULL, *u_ref = NULL, *psi = NULL, *noise = NULL, *coef = NULL,
                  *cot = NULL, *log_ratio = NULL, *active = NULL;
    /* the dtype of u decides the precision */
    u = rsm_py_real_arg(module, u_obj, "objective", "u");
    if (!u) return NULL;
    const rsm_dtype dtype = rsm_tensor_dtype(&u->t);
    if (u->t.ndim != 2) {
        rsm_py_raisef(PyExc_ValueError, "objective", "u must have shape [rows, dim]");
        goto done;
    }
    int64_t R = u->t.shape[0], D = u->t.shape[1];
    if (rsm_optional_rows(module, u_old_obj, "u_old", dtype, R, D, &u_old) < 0 ||
        rsm_optional_rows(module, u_ref_obj, "u_ref", dtype, R, D, &u_ref) < 0 ||
        rsm_optional_rows(module, psi_obj, "psi", dtype, R, D, &psi) < 0 ||
        rsm_optional_rows(module, noise_obj, "noise", dtype, R, D, &noise) < 0)
        goto done;
    coef = rsm_py_tensor_arg(module, coef_obj, "objective", "coef", RSM_F64);
    if (!coef) goto done;
    if (coef->t.ndim != 2 || coef->t.shape[0] != R ||
        coef->t.shape[1] != RSM_OBJECTIVE_ROW_FIELDS) {
        rsm_py_raisef(PyExc_ValueError, "objective", "coef must have shape [%lld, %d]",
                      (long long)R, RSM_OBJECTIVE_ROW_FIELDS);
        goto done;
    }
    int64_t shape_rd[2] = {R, D};
    cot = rsm_py_tensor_new(module, dtype, 2, shape_rd, 0);
    log_ratio = rsm_py_tensor_new(module, RSM_F64, 1, &R, 0);
    active = rsm_py_tensor_new(module, RSM_BOOL, 1, &R, 0);
    if (!cot || !log_ratio || !active) goto done;
    rsm_objective_stats stats = {0};
    rsm_status status;
    Py_BEGIN_ALLOW_THREADS
    if (dtype == RSM_F32)
        status = rsm_objective_f32(&cfg, R, D, (const rsm_objective_row *)RSM_PY_PTR(coef),
                                   RSM_PY_PTR(u), RSM_PY_PTR(u_old), RSM_PY_PTR(u_ref),
                                   RSM_PY_PTR(psi), RSM_PY_PTR(noise), RSM_PY_PTR(cot),
                                   RSM_PY_PTR(log_ratio), RSM_PY_PTR(active), &stats);
    else
        status = rsm_objective_f64(&cfg, R, D, (const rsm_objective_row *)RSM_PY_PTR(coef),
                                   RSM_PY_PTR(u), RSM_PY_PTR(u_old), RSM_PY_PTR(u_ref),
                                   RSM_PY_PTR(psi), RSM_PY_PTR(noise), RSM_PY_PTR(cot),
                                   RSM_PY_PTR(log_ratio), RSM_PY_PTR(active), &stats);
    Py_END_ALLOW_THREADS
    if (status != RSM_OK) {
        rsm_py_raise(status, "objective");
        goto done;
    }
    result = Py_BuildValue("{s:d,s:O,s:O,s:O,s:d,s:d}", "loss", stats.loss, "cotangent", cot,
                           "log_ratio", log_ratio, "active", active, "clip_fraction",
                           stats.clip_fraction, "kl", stats.kl);
done:
    Py_XDECREF(u);
    Py_XDECREF(u_old);
    Py_XDECREF(u_ref);
    Py_XDECREF(psi);
    Py_XDECREF(noise);
    Py_XDECREF(coef);
    Py_XDECREF(cot);
    Py_XDECREF(log_ratio);
    Py_XDECREF(active);
    return result;
}

/* group_advantages(rewards, keys=None, eps=1e-4, adv_clip=5, center_only=False) -> (adv, mask) */
static PyObject *
rsm_py_group_advantages(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"rewards", "keys", "eps", "adv_clip", "center_only", NULL};
    PyObject *rewards_obj, *keys_obj = Py_None;
    double eps = 1e-4, adv_clip = 5.0;
    int center_only = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|Oddp", kwlist, &rewards_obj, &keys_obj, &eps,
                                     &adv_clip, &center_only))
        return NULL;
    rsm_py_tensor *rewards =
        rsm_py_tensor_arg(module, rewards_obj, "group_advantages", "rewards", RSM_F64);
    if (!rewards) return NULL;
    rsm_py_tensor *keys = NULL, *adv = NULL, *mask = NULL;
    PyObject *result = NULL;
    int64_t R = rsm_tensor_numel(&rewards->t);
    if (rewards->t.ndim != 1) {
        rsm_py_raisef(PyExc_ValueError, "group_advantages", "rewards must be 1-d");
        goto done;
    }
    if (keys_obj != Py_None) {
        keys = rsm_py_tensor_arg(module, keys_obj, "group_advantages", "keys", RSM_I64);
        if (!keys) goto done;
        if (keys->t.ndim != 1 || keys->t.shape[0] != R) {
            rsm_py_raisef(PyExc_ValueError, "group_advantages", "keys must have shape [%lld]",
                          (long long)R);
            goto done;
        }
    }
    adv = rsm_py_tensor_new(module, RSM_F64, 1, &R, 0);
    mask = rsm_py_tensor_new(module, RSM_BOOL, 1, &R, 0);
    if (!adv || !mask) goto done;
    rsm_status status =
        rsm_group_advantages(R, RSM_PY_PTR(rewards), RSM_PY_PTR(keys), eps, adv_clip, center_only,
                             RSM_PY_PTR(adv), RSM_PY_PTR(mask));
    if (status != RSM_OK) {
        rsm_py_raise(status, "group_advantages");
        goto done;
    }
    result = Py_BuildValue("(OO)", adv, mask);
done:
    Py_XDECREF(rewards);
    Py_XDECREF(keys);
    Py_XDECREF(adv);
    Py_XDECREF(mask);
    return result;
}

static PyMethodDef rsm_objective_methods[] = {
    {"objective", (PyCFunction)(void (*)(void))rsm_py_objective, METH_VARARGS | METH_KEYWORDS,
     "objective(form, u, u_old, u_ref, psi, noise, coef, ...) -> dict"},
    {"group_advantages", (PyCFunction)(void (*)(void))rsm_py_group_advantages,
     METH_VARARGS | METH_KEYWORDS, "group_advantages(rewards, keys, eps, adv_clip, center_only)"},
    {NULL, NULL, 0, NULL},
};

int
rsm_py_objective_exec(PyObject *module)
{
    return PyModule_AddFunctions(module, rsm_objective_methods);
}
