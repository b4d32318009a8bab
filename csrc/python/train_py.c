/* train_py.c: the binding of the training entry points: pretraining (csrc/train/pretrain.h) and
 * the fine-tuning update (csrc/train/update.h).
 *
 *   pretrain_steps(model, opt, path, data, cond, batch_size, t_min, t_max, lr, warmup_steps,
 *                  seed, first_step, num_steps, decay_steps=0, min_lr_ratio=0, cond_dropout=0,
 *                  null_cond=None) -> (losses, grad_norms)
 *   train_update(policy, ref, path, blocks, normalizer, linear_only=False, mean_over_dims=False,
 *                opt=None, epochs=0, lr=nan) -> dict
 *
 * blocks: a sequence of dicts, one per trained transition, with keys
 *   form ('score_matching' | 'ppo' | 'log_ratio' | 'matching'), t (float), x [n, D],
 *   cond ([n, cond_dim] or None), coef [n, 14] float64 (objective rows), u_old, psi, noise
 *   ([n, D] or None), u_ref (a writable [n, D] buffer), ref_ready (bool: u_ref already holds the
 *   reference outputs), anchor_current (bool), kl_report (float).
 * epochs = 0: the gradient only (opt must be None) -> dict(grads [P], loss [B], kl [B],
 *   clip_fraction [B], nfe). epochs >= 1: that many optimizer steps of `opt` at `lr` ->
 *   dict(loss [E, B], kl [E, B], clip_fraction [E, B], grad_norms [E], nfe); all or nothing.
 * The GIL is released for the whole computation.
 */
#include "binding.h"

#include <math.h>
#include <string.h>

#include "../optim.h"
#include "../train/pretrain.h"
#include "../train/update.h"

/* ---- pretraining -------------------------------------------------------------------------- */

/* pretrain_steps(model, opt, path, data, cond, batch_size, t_min, t_max, lr, warmup_steps, seed,
 *                first_step, num_steps) -> (losses, grad_norms) as float64 tensors */
static PyObject *
rsm_py_pretrain_steps(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {
        "model",     "opt",         "path",         "data",         "cond",      "batch_size",
        "t_min",     "t_max",       "lr",           "warmup_steps", "seed",      "first_step",
        "num_steps", "decay_steps", "min_lr_ratio", "cond_dropout", "null_cond", NULL};
    PyObject *model_obj, *opt_obj, *path_obj, *data_obj, *cond_obj, *null_obj = Py_None;
    long long batch_size, warmup_steps, first_step, num_steps, decay_steps = 0;
    double t_min, t_max, lr, min_lr_ratio = 0.0, cond_dropout = 0.0;
    unsigned long long seed;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOLdddLKLL|LddO", kwlist, &model_obj,
                                     &opt_obj, &path_obj, &data_obj, &cond_obj, &batch_size, &t_min,
                                     &t_max, &lr, &warmup_steps, &seed, &first_step, &num_steps,
                                     &decay_steps, &min_lr_ratio, &cond_dropout, &null_obj))
        return NULL;
    const char *func = "pretrain";
    rsm_model model;
    PyThread_type_lock lock;
    if (rsm_py_model_arg(module, model_obj, func, &model, &lock) < 0) return NULL;
    /* a model without parameters (the mixture): the core's TypeError says so */
    rsm_adamw *opt = rsm_py_adamw_arg(module, opt_obj, func, "opt");
    if (!opt) return NULL;
    const rsm_path *path = rsm_py_path_arg(module, path_obj, func, "path");
    if (!path) return NULL;
    rsm_py_tensor *data = NULL, *cond = NULL, *losses = NULL, *norms = NULL, *grads = NULL,
                  *null_cond = NULL;
    PyObject *result = NULL;
    data = rsm_py_matrix_arg(module, data_obj, func, "data", model.dtype, -1, model.dim);
    if (!data || rsm_py_check_finite(data, model.dtype, func, "data") < 0) goto done;
    if (rsm_py_cond_arg(module, func, model.dtype, model.cond_dim, data->t.shape[0], cond_obj,
                        &cond) < 0)
        goto done;
    if (null_obj != Py_None) {
        null_cond =
            rsm_py_vector_arg(module, null_obj, func, "null_cond", model.dtype, model.cond_dim);
        if (!null_cond || rsm_py_check_finite(null_cond, model.dtype, func, "null_cond") < 0)
            goto done;
    }
    int64_t steps = num_steps > 0 ? num_steps : 0;
    int64_t num_params = model.num_params;
    losses = rsm_py_tensor_new(module, RSM_F64, 1, &steps, 1);
    norms = rsm_py_tensor_new(module, RSM_F64, 1, &steps, 1);
    grads = rsm_py_tensor_new(module, model.dtype, 1, &num_params, 0);
    if (!losses || !norms || !grads) goto done;
    rsm_pretrain_config cfg = {batch_size,   t_min,
                               t_max,        lr,
                               warmup_steps, decay_steps,
                               min_lr_ratio, (uint64_t)seed,
                               cond_dropout, null_cond ? rsm_py_tensor_data(null_cond) : NULL};
    rsm_status status;
    Py_BEGIN_ALLOW_THREADS
    if (lock) PyThread_acquire_lock(lock, WAIT_LOCK);
    status = rsm_pretrain_steps(&model, opt, path, &cfg, rsm_py_tensor_data(data),
                                cond ? rsm_py_tensor_data(cond) : NULL, data->t.shape[0],
                                first_step, num_steps, rsm_py_tensor_data(grads),
                                rsm_py_tensor_data(losses), rsm_py_tensor_data(norms));
    if (lock) PyThread_release_lock(lock);
    Py_END_ALLOW_THREADS
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        goto done;
    }
    result = Py_BuildValue("(OO)", losses, norms);
done:
    Py_XDECREF(data);
    Py_XDECREF(cond);
    Py_XDECREF(losses);
    Py_XDECREF(norms);
    Py_XDECREF(grads);
    Py_XDECREF(null_cond);
    return result;
}

/* ---- the fine-tuning update ----------------------------------------------------------------- */

#define RSM_UPDATE_ARRAYS 7 /* x, cond, coef, u_old, psi, noise, u_ref */

typedef struct {
    rsm_py_tensor *held[RSM_UPDATE_ARRAYS];
    int count;
} rsm_block_refs;

static void
rsm_block_refs_clear(rsm_block_refs *refs)
{
    for (int i = 0; i < refs->count; i++) Py_XDECREF(refs->held[i]);
    refs->count = 0;
}

static int
rsm_update_form(PyObject *obj, const char *func, int64_t b, rsm_objective_form *form)
{
    const char *name = obj ? PyUnicode_AsUTF8(obj) : NULL;
    if (!name) {
        PyErr_Clear();
        rsm_py_raisef(PyExc_ValueError, func, "blocks[%lld]['form'] must be a string",
                      (long long)b);
        return -1;
    }
    char what[40];
    snprintf(what, sizeof(what), "blocks[%lld]['form']", (long long)b);
    return rsm_py_parse_form(name, func, what, form);
}

/* blocks[b][key] as a [rows, cols] array of dtype (rows < 0: any, set from it); None -> NULL
 * when optional. `out`: must be writable (no copy). */
static int
rsm_update_array(PyObject *module, PyObject *dict, const char *key, const char *func, int64_t b,
                 rsm_dtype dtype, int64_t *rows, int64_t cols, int optional, int out,
                 rsm_block_refs *refs, void **data)
{
    *data = NULL;
    PyObject *obj = PyDict_GetItemString(dict, key);
    char name[64];
    snprintf(name, sizeof(name), "blocks[%lld]['%s']", (long long)b, key);
    if (!obj || obj == Py_None) {
        if (optional) return 0;
        rsm_py_raisef(PyExc_ValueError, func, "%s is required", name);
        return -1;
    }
    rsm_py_tensor *t = out ? rsm_py_tensor_out_arg(module, obj, func, name, dtype)
                           : rsm_py_tensor_arg(module, obj, func, name, dtype);
    if (!t) return -1;
    refs->held[refs->count++] = t;
    if (t->t.ndim != 2 || t->t.shape[1] != cols || (*rows >= 0 && t->t.shape[0] != *rows)) {
        rsm_py_raisef(PyExc_ValueError, func, "%s must have shape [%lld, %lld]", name,
                      (long long)*rows, (long long)cols);
        return -1;
    }
    *rows = t->t.shape[0];
    *data = rsm_py_tensor_data(t);
    return 0;
}

static int
rsm_update_flag(PyObject *dict, const char *key, int *value)
{
    PyObject *obj = PyDict_GetItemString(dict, key);
    if (!obj) {
        *value = 0;
        return 0;
    }
    int v = PyObject_IsTrue(obj);
    if (v < 0) return -1;
    *value = v;
    return 0;
}

static int
rsm_update_number(PyObject *dict, const char *key, const char *func, int64_t b, double *value)
{
    PyObject *obj = PyDict_GetItemString(dict, key);
    double v = obj ? PyFloat_AsDouble(obj) : NAN;
    if (!obj || (v == -1.0 && PyErr_Occurred())) {
        PyErr_Clear();
        rsm_py_raisef(PyExc_ValueError, func, "blocks[%lld]['%s'] must be a number", (long long)b,
                      key);
        return -1;
    }
    *value = v;
    return 0;
}

static int
rsm_update_parse_block(PyObject *module, PyObject *dict, const char *func, int64_t b,
                       const rsm_model *policy, rsm_update_block *blk, rsm_block_refs *refs)
{
    if (!PyDict_Check(dict)) {
        rsm_py_raisef(PyExc_TypeError, func, "blocks[%lld] must be a dict", (long long)b);
        return -1;
    }
    memset(blk, 0, sizeof(*blk));
    const rsm_dtype dtype = policy->dtype;
    const int64_t D = policy->dim;
    int64_t n = -1;
    void *data;
    if (rsm_update_form(PyDict_GetItemString(dict, "form"), func, b, &blk->form) < 0) return -1;
    if (rsm_update_number(dict, "t", func, b, &blk->t) < 0 ||
        rsm_update_number(dict, "kl_report", func, b, &blk->kl_report) < 0)
        return -1;
    if (rsm_update_array(module, dict, "x", func, b, dtype, &n, D, 0, 0, refs, &data) < 0)
        return -1;
    blk->x = data;
    blk->rows = n;
    if (policy->cond_dim > 0) {
        if (rsm_update_array(module, dict, "cond", func, b, dtype, &n, policy->cond_dim, 1, 0, refs,
                             &data) < 0)
            return -1;
        blk->cond = data;
    }
    if (rsm_update_array(module, dict, "coef", func, b, RSM_F64, &n,
                         (int64_t)(sizeof(rsm_objective_row) / sizeof(double)), 0, 0, refs,
                         &data) < 0)
        return -1;
    blk->coef = (const rsm_objective_row *)data;
    if (rsm_update_array(module, dict, "u_old", func, b, dtype, &n, D, 1, 0, refs, &data) < 0)
        return -1;
    blk->u_old = data;
    if (rsm_update_array(module, dict, "psi", func, b, dtype, &n, D, 1, 0, refs, &data) < 0)
        return -1;
    blk->psi = data;
    if (rsm_update_array(module, dict, "noise", func, b, dtype, &n, D, 1, 0, refs, &data) < 0)
        return -1;
    blk->noise = data;
    if (rsm_update_array(module, dict, "u_ref", func, b, dtype, &n, D, 0, 1, refs, &data) < 0)
        return -1;
    blk->u_ref = data;
    if (rsm_update_flag(dict, "ref_ready", &blk->ref_ready) < 0 ||
        rsm_update_flag(dict, "anchor_current", &blk->anchor_current) < 0)
        return -1;
    return 0;
}

/* Locks of the policy and the reference, taken in address order (the same lock once). */
static void
rsm_update_lock(PyThread_type_lock a, PyThread_type_lock b, int acquire)
{
    if (a == b) b = NULL;
    if (a && b && (uintptr_t)b < (uintptr_t)a) {
        PyThread_type_lock s = a;
        a = b;
        b = s;
    }
    if (acquire) {
        if (a) PyThread_acquire_lock(a, WAIT_LOCK);
        if (b) PyThread_acquire_lock(b, WAIT_LOCK);
    } else {
        if (b) PyThread_release_lock(b);
        if (a) PyThread_release_lock(a);
    }
}

static PyObject *
rsm_py_train_update(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {
        "policy",         "ref", "path",   "blocks", "normalizer", "linear_only",
        "mean_over_dims", "opt", "epochs", "lr",     NULL};
    PyObject *policy_obj, *ref_obj, *path_obj, *blocks_obj, *opt_obj = Py_None;
    double normalizer, lr = NAN;
    int linear_only = 0, mean_over_dims = 0;
    long long epochs = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOd|ppOLd", kwlist, &policy_obj, &ref_obj,
                                     &path_obj, &blocks_obj, &normalizer, &linear_only,
                                     &mean_over_dims, &opt_obj, &epochs, &lr))
        return NULL;
    const char *func = "train_update";
    rsm_model policy, ref;
    PyThread_type_lock policy_lock, ref_lock;
    if (rsm_py_model_arg(module, policy_obj, func, &policy, &policy_lock) < 0) return NULL;
    if (!policy.backward)
        return rsm_py_raisef(PyExc_TypeError, func, "policy must be a trainable model (MLP, DiT)");
    if (rsm_py_model_arg(module, ref_obj, func, &ref, &ref_lock) < 0) return NULL;
    const rsm_path *path = rsm_py_path_arg(module, path_obj, func, "path");
    if (!path) return NULL;
    rsm_adamw *opt = NULL;
    if (epochs < 0)
        return rsm_py_raisef(PyExc_ValueError, func, "epochs=%lld must be >= 0", epochs);
    if (epochs > 0) {
        opt = rsm_py_adamw_arg(module, opt_obj, func, "opt");
        if (!opt) return NULL;
        if (isnan(lr)) lr = opt->config.lr;
    } else if (opt_obj != Py_None) {
        return rsm_py_raisef(PyExc_ValueError, func, "opt is only used with epochs >= 1");
    }
    PyObject *seq = PySequence_Fast(blocks_obj, "train_update(): blocks must be a sequence");
    if (!seq) return NULL;
    const int64_t nblocks = (int64_t)PySequence_Fast_GET_SIZE(seq);
    const int64_t E = epochs > 0 ? epochs : 1;
    PyObject *result = NULL;
    rsm_update_block *blocks = PyMem_Calloc((size_t)(nblocks > 0 ? nblocks : 1), sizeof(*blocks));
    rsm_block_refs *refs = PyMem_Calloc((size_t)(nblocks > 0 ? nblocks : 1), sizeof(*refs));
    rsm_update_block_stats *stats =
        PyMem_Calloc((size_t)(E * (nblocks > 0 ? nblocks : 1)), sizeof(*stats));
    rsm_py_tensor *grads = NULL, *loss = NULL, *kl = NULL, *clip = NULL, *norms = NULL;
    if (!blocks || !refs || !stats) {
        PyErr_NoMemory();
        goto done;
    }
    for (int64_t b = 0; b < nblocks; b++)
        if (rsm_update_parse_block(module, PySequence_Fast_GET_ITEM(seq, b), func, b, &policy,
                                   &blocks[b], &refs[b]) < 0)
            goto done;
    int64_t num_params = policy.num_params;
    grads = rsm_py_tensor_new(module, policy.dtype, 1, &num_params, 0);
    int64_t shape[2] = {E, nblocks};
    int32_t ndim = epochs > 0 ? 2 : 1;
    const int64_t *stat_shape = epochs > 0 ? shape : shape + 1;
    loss = rsm_py_tensor_new(module, RSM_F64, ndim, stat_shape, 1);
    kl = rsm_py_tensor_new(module, RSM_F64, ndim, stat_shape, 1);
    clip = rsm_py_tensor_new(module, RSM_F64, ndim, stat_shape, 1);
    norms = rsm_py_tensor_new(module, RSM_F64, 1, &shape[0], 1);
    if (!grads || !loss || !kl || !clip || !norms) goto done;
    rsm_update_config cfg = {linear_only, mean_over_dims, normalizer};
    int64_t nfe = 0;
    double *norm_data = rsm_py_tensor_data(norms);
    rsm_status status;
    Py_BEGIN_ALLOW_THREADS
    rsm_update_lock(policy_lock, ref_lock, 1);
    if (epochs > 0)
        status = rsm_update_steps(&cfg, path, &policy, &ref, opt, lr, epochs, nblocks, blocks,
                                  rsm_py_tensor_data(grads), stats, norm_data, &nfe);
    else
        status = rsm_update_gradient(&cfg, path, &policy, &ref, nblocks, blocks,
                                     rsm_py_tensor_data(grads), stats, &nfe);
    rsm_update_lock(policy_lock, ref_lock, 0);
    Py_END_ALLOW_THREADS
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        goto done;
    }
    double *l = rsm_py_tensor_data(loss), *k = rsm_py_tensor_data(kl),
           *c = rsm_py_tensor_data(clip);
    for (int64_t i = 0; i < E * nblocks; i++) {
        l[i] = stats[i].loss;
        k[i] = stats[i].kl;
        c[i] = stats[i].clip_fraction;
    }
    if (epochs > 0)
        result = Py_BuildValue("{s:O,s:O,s:O,s:O,s:L}", "loss", loss, "kl", kl, "clip_fraction",
                               clip, "grad_norms", norms, "nfe", (long long)nfe);
    else
        result = Py_BuildValue("{s:O,s:O,s:O,s:O,s:L}", "grads", grads, "loss", loss, "kl", kl,
                               "clip_fraction", clip, "nfe", (long long)nfe);
done:
    if (refs)
        for (int64_t b = 0; b < nblocks; b++) rsm_block_refs_clear(&refs[b]);
    PyMem_Free(blocks);
    PyMem_Free(refs);
    PyMem_Free(stats);
    Py_XDECREF(grads);
    Py_XDECREF(loss);
    Py_XDECREF(kl);
    Py_XDECREF(clip);
    Py_XDECREF(norms);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef rsm_train_methods[] = {
    {"pretrain_steps", (PyCFunction)(void (*)(void))rsm_py_pretrain_steps,
     METH_VARARGS | METH_KEYWORDS, "pretraining steps"},
    {"train_update", (PyCFunction)(void (*)(void))rsm_py_train_update, METH_VARARGS | METH_KEYWORDS,
     "train_update(policy, ref, path, blocks, normalizer, linear_only=False, "
     "mean_over_dims=False, opt=None, epochs=0, lr=nan) -> dict: the fine-tuning update"},
    {NULL, NULL, 0, NULL},
};

int
rsm_py_train_exec(PyObject *module)
{
    return PyModule_AddFunctions(module, rsm_train_methods);
}
