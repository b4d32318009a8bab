/* train_py.c: the binding of the training entry points: pretraining (csrc/train/pretrain.h) and
 * the fine-tuning update (csrc/train/update.h).
 *
 *   pretrain_steps(model, opt, path, data, cond, batch_size, t_min, t_max, lr, warmup_steps,
 *                  seed, first_step, num_steps, decay_steps=0, min_lr_ratio=0, cond_dropout=0,
 *                  null_cond=None) -> (losses, grad_norms)
 *   train_update(policy, ref, path, blocks, normalizer, linear_only=False, mean_over_dims=False,
 *                opt=None, epochs=0, lr=nan) -> dict
 *
 * blocks: a sequence of UpdateBlock, one per trained transition, each built with the keyword
 *   arguments form ('score_matching' | 'ppo' | 'log_ratio' | 'matching'), t (float), x [n, D],
 *   cond ([n, cond_dim] or None), coef [n, 14] float64 (objective rows), u_old, psi, noise
 *   ([n, D] or None), u_ref (a writable [n, D] buffer), ref_ready (bool: u_ref already holds the
 *   reference outputs), anchor_current (bool), kl_report (float), and checked then.
 * epochs = 0: the gradient only (opt must be None) -> dict(grads [P], loss [B], kl [B],
 *   clip_fraction [B], nfe). epochs >= 1: that many optimizer steps of `opt` at `lr` ->
 *   dict(loss [E, B], kl [E, B], clip_fraction [E, B], grad_norms [E], nfe); all or nothing.
 * The GIL is released for the whole computation.
 */
#include "binding.h"

#include <math.h>

#include "structmember.h"

#include "../optim.h"
#include "../train/pretrain.h"
#include "../train/update.h"

/* ---- pretraining -------------------------------------------------------------------------- */

/* pretrain_steps(model, opt, path, data, cond, batch_size, t_min, t_max, lr, warmup_steps, seed,
 *                first_step, num_steps) -> (losses, grad_norms) as float64 tensors;
 * grad_rows=(a, b) (data parallelism): no step, the (loss share, gradient) of rows [a, b) of
 * step first_step's batch (rsm_pretrain_grad) */
static PyObject *
rsm_py_pretrain_steps(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {
        "model",     "opt",         "path",         "data",         "cond",      "batch_size",
        "t_min",     "t_max",       "lr",           "warmup_steps", "seed",      "first_step",
        "num_steps", "decay_steps", "min_lr_ratio", "cond_dropout", "null_cond", "grad_rows",
        NULL};
    PyObject *model_obj, *opt_obj, *path_obj, *data_obj, *cond_obj, *null_obj = Py_None;
    long long grad_rows[2] = {-1, -1};
    long long batch_size, warmup_steps, first_step, num_steps, decay_steps = 0;
    double t_min, t_max, lr, min_lr_ratio = 0.0, cond_dropout = 0.0;
    unsigned long long seed;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOLdddLKLL|LddO(LL)", kwlist, &model_obj,
                                     &opt_obj, &path_obj, &data_obj, &cond_obj, &batch_size, &t_min,
                                     &t_max, &lr, &warmup_steps, &seed, &first_step, &num_steps,
                                     &decay_steps, &min_lr_ratio, &cond_dropout, &null_obj,
                                     &grad_rows[0], &grad_rows[1]))
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
    /* a device model: data, cond, null_cond, the gradient buffer and the optimizer state on its
     * device (device_py.c); the per-step losses and norms are host doubles (backend.h) */
    const struct rsm_backend *be = model.backend;
    if (rsm_py_on_device(be) != rsm_py_on_device(rsm_py_adamw_backend(opt_obj)) ||
        (rsm_py_on_device(be) && rsm_py_adamw_backend(opt_obj) != be)) {
        rsm_py_raisef(PyExc_ValueError, func,
                      "opt and model are on different devices: build the optimizer from "
                      "model.params (rsm.AdamW(model))");
        return NULL;
    }
    data = rsm_py_matrix_arg_on(module, be, data_obj, func, "data", model.dtype, -1, model.dim);
    if (!data || rsm_py_check_on(module, be, data, model.dtype, func, "data", 0) < 0) goto done;
    if (rsm_py_cond_arg_on(module, be, func, model.dtype, model.cond_dim, data->t.shape[0],
                           cond_obj, &cond) < 0)
        goto done;
    if (null_obj != Py_None) {
        null_cond = rsm_py_vector_arg_on(module, be, null_obj, func, "null_cond", model.dtype,
                                         model.cond_dim);
        if (!null_cond || rsm_py_check_on(module, be, null_cond, model.dtype, func, "null_cond",
                                          0) < 0)
            goto done;
    }
    int64_t steps = num_steps > 0 ? num_steps : 0;
    int64_t num_params = model.num_params;
    losses = rsm_py_tensor_new(module, RSM_F64, 1, &steps, 1);
    norms = rsm_py_tensor_new(module, RSM_F64, 1, &steps, 1);
    grads = rsm_py_tensor_new_on(module, be, model.dtype, 1, &num_params, 0);
    if (!losses || !norms || !grads) goto done;
    rsm_pretrain_config cfg = {batch_size,   t_min,
                               t_max,        lr,
                               warmup_steps, decay_steps,
                               min_lr_ratio, (uint64_t)seed,
                               cond_dropout, null_cond ? rsm_py_tensor_data(null_cond) : NULL};
    rsm_status status;
    double slice_loss = 0.0;
    const int slice = grad_rows[0] >= 0;
    Py_BEGIN_ALLOW_THREADS
    if (lock) PyThread_acquire_lock(lock, WAIT_LOCK);
    if (slice)
        status = rsm_pretrain_grad(&model, path, &cfg, rsm_py_tensor_data(data),
                                   cond ? rsm_py_tensor_data(cond) : NULL, data->t.shape[0],
                                   first_step, grad_rows[0], grad_rows[1],
                                   rsm_py_tensor_data(grads), &slice_loss);
    else
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
    result = slice ? Py_BuildValue("(dO)", slice_loss, grads)
                   : Py_BuildValue("(OO)", losses, norms);
done:
    Py_XDECREF(data);
    Py_XDECREF(cond);
    Py_XDECREF(losses);
    Py_XDECREF(norms);
    Py_XDECREF(grads);
    Py_XDECREF(null_cond);
    return result;
}

/* ---- the update block ------------------------------------------------------------------------ */

/* rsm._C.UpdateBlock: one block of the update (csrc/train/update.h) as the C struct the core reads.
 * Its arrays are converted once, when it is built, and their shapes checked against each other
 * there (messages name the keyword argument); train_update then only checks it against the policy
 * (dtype, dim, cond_dim) and copies the struct. It holds a reference to every tensor its pointers
 * point into; after a call that filled u_ref, its ref_ready is 1 (later calls reuse u_ref). */
typedef struct {
    PyObject_HEAD rsm_update_block blk;
    rsm_dtype dtype;  /* of x and of every state-shaped array */
    int64_t dim;      /* x's columns */
    int64_t cond_dim; /* cond's columns (0 without cond) */
    PyObject *x, *cond, *coef, *u_old, *psi, *noise, *u_ref; /* rsm.Tensor or None */
} rsm_py_update_block;

#define RSM_COEF_COLS ((int64_t)(sizeof(rsm_objective_row) / sizeof(double)))

/* The keyword argument `name` as a [rows, cols] tensor (rows / cols < 0: any) in *slot (None when
 * absent and optional); `out`: written by the update, so it must be writable (no copy). */
static int
rsm_update_block_array(PyObject *module, PyObject *obj, const char *name, rsm_dtype dtype,
                       int64_t rows, int64_t cols, int optional, int out, PyObject **slot)
{
    const char *func = "UpdateBlock";
    if (!obj || obj == Py_None) {
        if (!optional) {
            rsm_py_raisef(PyExc_TypeError, func, "%s is required", name);
            return -1;
        }
        *slot = Py_NewRef(Py_None);
        return 0;
    }
    rsm_py_tensor *t = out ? rsm_py_tensor_out_arg(module, obj, func, name, dtype)
                           : rsm_py_matrix_arg(module, obj, func, name, dtype, rows, cols);
    if (!t) return -1;
    *slot = (PyObject *)t;
    if (out && (t->t.ndim != 2 || t->t.shape[0] != rows || t->t.shape[1] != cols)) {
        rsm_py_raisef(PyExc_ValueError, func, "%s must have shape [%lld, %lld] (as x)", name,
                      (long long)rows, (long long)cols);
        return -1;
    }
    return 0;
}

/* The keyword argument `name` as a double (absent: `absent`). */
static int
rsm_update_block_number(PyObject *obj, const char *name, double absent, double *value)
{
    *value = obj ? PyFloat_AsDouble(obj) : absent;
    if (*value == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        rsm_py_raisef(PyExc_TypeError, "UpdateBlock", "%s must be a number, got %s", name,
                      Py_TYPE(obj)->tp_name);
        return -1;
    }
    return 0;
}

static void *
rsm_update_block_data(PyObject *slot)
{
    return slot == Py_None ? NULL : rsm_py_tensor_data((rsm_py_tensor *)slot);
}

/* UpdateBlock(*, form, t, x, coef, u_ref, cond=None, u_old=None, psi=None, noise=None,
 *             ref_ready=False, anchor_current=False, kl_report=0.0) */
static PyObject *
rsm_update_block_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"form",           "t",         "x",   "coef",  "u_ref",
                             "cond",           "u_old",     "psi", "noise", "ref_ready",
                             "anchor_current", "kl_report", NULL};
    const char *func = "UpdateBlock";
    PyObject *form = NULL, *t = NULL, *x = NULL, *coef = NULL, *u_ref = NULL, *cond = NULL,
             *u_old = NULL, *psi = NULL, *noise = NULL, *kl_report = NULL;
    int ref_ready = 0, anchor_current = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOOOOOOOppO:UpdateBlock", kwlist, &form, &t,
                                     &x, &coef, &u_ref, &cond, &u_old, &psi, &noise, &ref_ready,
                                     &anchor_current, &kl_report))
        return NULL;
    if (!form || !t)
        return rsm_py_raisef(PyExc_TypeError, func, "%s is required", form ? "t" : "form");
    PyObject *module = rsm_module_of_type(type);
    rsm_py_update_block *self = (rsm_py_update_block *)PyType_GenericAlloc(type, 0);
    if (!self) return NULL; /* zeroed: every array slot NULL */
    rsm_update_block *blk = &self->blk;
    const char *form_name = PyUnicode_Check(form) ? PyUnicode_AsUTF8(form) : NULL;
    if (!form_name) {
        PyErr_Clear();
        rsm_py_raisef(PyExc_TypeError, func, "form must be a string");
        goto fail;
    }
    if (rsm_py_parse_form(form_name, func, "form", &blk->form) < 0) goto fail;
    /* t and kl_report finite: the core's check */
    if (rsm_update_block_number(t, "t", NAN, &blk->t) < 0 ||
        rsm_update_block_number(kl_report, "kl_report", 0.0, &blk->kl_report) < 0)
        goto fail;
    if (!x) {
        rsm_py_raisef(PyExc_TypeError, func, "x is required");
        goto fail;
    }
    /* x fixes the dtype (float32 or float64) and the shape [n, D] every other array follows */
    rsm_py_tensor *xt = rsm_py_real_arg(module, x, func, "x");
    if (!xt) goto fail;
    self->x = (PyObject *)xt;
    if (xt->t.ndim != 2) {
        rsm_py_raisef(PyExc_ValueError, func, "x must have shape [n, d], got %d dimensions",
                      (int)xt->t.ndim);
        goto fail;
    }
    const rsm_dtype dtype = rsm_tensor_dtype(&xt->t);
    const int64_t n = xt->t.shape[0], D = xt->t.shape[1];
    const int64_t C = RSM_COEF_COLS;
    if (rsm_update_block_array(module, coef, "coef", RSM_F64, n, C, 0, 0, &self->coef) < 0 ||
        rsm_update_block_array(module, u_ref, "u_ref", dtype, n, D, 0, 1, &self->u_ref) < 0 ||
        rsm_update_block_array(module, cond, "cond", dtype, n, -1, 1, 0, &self->cond) < 0 ||
        rsm_update_block_array(module, u_old, "u_old", dtype, n, D, 1, 0, &self->u_old) < 0 ||
        rsm_update_block_array(module, psi, "psi", dtype, n, D, 1, 0, &self->psi) < 0 ||
        rsm_update_block_array(module, noise, "noise", dtype, n, D, 1, 0, &self->noise) < 0)
        goto fail;
    self->dtype = dtype;
    self->dim = D;
    self->cond_dim = self->cond == Py_None ? 0 : ((rsm_py_tensor *)self->cond)->t.shape[1];
    blk->rows = n;
    blk->x = rsm_py_tensor_data(xt);
    blk->cond = rsm_update_block_data(self->cond);
    blk->coef = (const rsm_objective_row *)rsm_update_block_data(self->coef);
    blk->u_old = rsm_update_block_data(self->u_old);
    blk->psi = rsm_update_block_data(self->psi);
    blk->noise = rsm_update_block_data(self->noise);
    blk->u_ref = rsm_update_block_data(self->u_ref);
    blk->ref_ready = ref_ready;
    blk->anchor_current = anchor_current;
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

static void
rsm_update_block_dealloc(rsm_py_update_block *self)
{
    PyTypeObject *type = Py_TYPE(self);
    Py_XDECREF(self->x);
    Py_XDECREF(self->cond);
    Py_XDECREF(self->coef);
    Py_XDECREF(self->u_old);
    Py_XDECREF(self->psi);
    Py_XDECREF(self->noise);
    Py_XDECREF(self->u_ref);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyMemberDef rsm_update_block_members[] = {
    {"x", T_OBJECT, offsetof(rsm_py_update_block, x), READONLY, "states [n, D]"},
    {"cond", T_OBJECT, offsetof(rsm_py_update_block, cond), READONLY, "conditions [n, C] or None"},
    {"coef", T_OBJECT, offsetof(rsm_py_update_block, coef), READONLY, "objective rows [n, 14]"},
    {"u_old", T_OBJECT, offsetof(rsm_py_update_block, u_old), READONLY, "[n, D] or None"},
    {"psi", T_OBJECT, offsetof(rsm_py_update_block, psi), READONLY, "[n, D] or None"},
    {"noise", T_OBJECT, offsetof(rsm_py_update_block, noise), READONLY, "[n, D] or None"},
    {"u_ref", T_OBJECT, offsetof(rsm_py_update_block, u_ref), READONLY, "reference outputs [n, D]"},
    {"t", T_DOUBLE, offsetof(rsm_py_update_block, blk.t), READONLY, "time of every row"},
    {"rows", T_LONGLONG, offsetof(rsm_py_update_block, blk.rows), READONLY, "n"},
    {"kl_report", T_DOUBLE, offsetof(rsm_py_update_block, blk.kl_report), READONLY, "(1/2) w^2"},
    {"ref_ready", T_INT, offsetof(rsm_py_update_block, blk.ref_ready), READONLY,
     "1 once u_ref holds the reference outputs"},
    {"anchor_current", T_INT, offsetof(rsm_py_update_block, blk.anchor_current), READONLY,
     "1: anchor on the current outputs (ReFL)"},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot rsm_update_block_slots[] = {
    {Py_tp_new, rsm_update_block_new},
    {Py_tp_dealloc, rsm_update_block_dealloc},
    {Py_tp_members, rsm_update_block_members},
    {Py_tp_doc, "UpdateBlock(*, form, t, x, coef, u_ref, cond=None, u_old=None, psi=None, "
                "noise=None, ref_ready=False, anchor_current=False, kl_report=0.0): one block of "
                "train_update (csrc/train/update.h), checked when built"},
    {0, NULL},
};

static PyType_Spec rsm_update_block_spec = {"rsm._C.UpdateBlock", sizeof(rsm_py_update_block), 0,
                                            Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
                                            rsm_update_block_slots};

/* blocks[b] as the core's struct: an UpdateBlock of the policy's dtype, dim and cond_dim. */
static int
rsm_update_block_arg(PyObject *module, PyObject *obj, const char *func, int64_t b,
                     const rsm_model *policy, rsm_update_block *blk)
{
    if (!PyObject_TypeCheck(obj, rsm_state(module)->update_block_type)) {
        rsm_py_raisef(PyExc_TypeError, func, "blocks[%lld] must be an rsm._C.UpdateBlock, got %s",
                      (long long)b, Py_TYPE(obj)->tp_name);
        return -1;
    }
    const rsm_py_update_block *ub = (const rsm_py_update_block *)obj;
    if (ub->dtype != policy->dtype) {
        rsm_py_raisef(PyExc_TypeError, func, "blocks[%lld].x must be %s (the policy's dtype)",
                      (long long)b, policy->dtype == RSM_F32 ? "float32" : "float64");
        return -1;
    }
    if (ub->dim != policy->dim) {
        rsm_py_raisef(PyExc_ValueError, func,
                      "blocks[%lld].x must have shape [n, %lld], got [n, %lld]", (long long)b,
                      (long long)policy->dim, (long long)ub->dim);
        return -1;
    }
    *blk = ub->blk;
    /* an unconditional policy reads no condition; a conditional one reads cond_dim columns */
    if (policy->cond_dim == 0)
        blk->cond = NULL;
    else if (blk->cond && ub->cond_dim != policy->cond_dim) {
        rsm_py_raisef(PyExc_ValueError, func,
                      "blocks[%lld].cond must have shape [n, %lld], got [n, %lld]", (long long)b,
                      (long long)policy->cond_dim, (long long)ub->cond_dim);
        return -1;
    }
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
    /* a tuple of its own: the blocks (and the arrays they hold) stay alive while the GIL is
     * released, whatever happens to the caller's list */
    PyObject *seq = PySequence_Tuple(blocks_obj);
    if (!seq) return NULL;
    const int64_t nblocks = (int64_t)PyTuple_GET_SIZE(seq);
    const int64_t E = epochs > 0 ? epochs : 1;
    PyObject *result = NULL;
    rsm_update_block *blocks = PyMem_Calloc((size_t)(nblocks > 0 ? nblocks : 1), sizeof(*blocks));
    rsm_update_block_stats *stats =
        PyMem_Calloc((size_t)(E * (nblocks > 0 ? nblocks : 1)), sizeof(*stats));
    rsm_py_tensor *grads = NULL, *loss = NULL, *kl = NULL, *clip = NULL, *norms = NULL;
    if (!blocks || !stats) {
        PyErr_NoMemory();
        goto done;
    }
    for (int64_t b = 0; b < nblocks; b++)
        if (rsm_update_block_arg(module, PyTuple_GET_ITEM(seq, b), func, b, &policy, &blocks[b]) <
            0)
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
    /* the reference outputs filled by this call stay in the blocks' u_ref buffers */
    for (int64_t b = 0; b < nblocks; b++)
        ((rsm_py_update_block *)PyTuple_GET_ITEM(seq, b))->blk.ref_ready = blocks[b].ref_ready;
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
    PyMem_Free(blocks);
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
    if (rsm_py_add_type(module, &rsm_update_block_spec, &rsm_state(module)->update_block_type,
                        "UpdateBlock") < 0)
        return -1;
    return PyModule_AddFunctions(module, rsm_train_methods);
}
