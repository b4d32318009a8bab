/* dit_py.c: the binding of the DiT backbone (csrc/nn/dit.h): rsm._C.DiTCore and its LoRA form.
 * (The test hook dit_op, one op's forward and backward, is in debug_py.c.)
 *
 * A model core of model_py.c (forward / vjp / backward, lock and lifetime there) with its
 * constructor and specifics. A LoRA DiTCore borrows the base parameters of another DiTCore and
 * keeps a reference to it, so the base outlives the adapters.
 */
#include "binding.h"

#include <string.h>

#include "../backend.h"
#include "../nn/dit.h"

typedef struct {
    rsm_py_model model;
    rsm_dit dit;
    PyObject *base;        /* the DiTCore whose parameters a LoRA model borrows, or NULL */
    PyObject *backend_obj; /* the capsule of dit.backend (rsm.cuda.backend_table), or NULL */
} rsm_py_dit;

/* A (full, non-LoRA) DiT on a device, as the MLP (mlp_py.c): the core draws its parameters and
 * builds its positional table on the host, then the binding moves params and pos into blocks of
 * `be` and sets dit.backend (activations and every op then go through it). `host_params`: the
 * parameters to copy (the model's own at init, a re-drawn host model's for reset_parameters).
 * rsm_dit_free frees params/pos with rsm_free (host), so rsm_dit_device_release frees them first. */
static int
rsm_dit_to_device(rsm_dit *dit, const rsm_backend *be, const void *host_params, const void *host_pos)
{
    size_t es = rsm_dtype_size(dit->config.dtype);
    void *params = rsm_py_device_copy_in(be, host_params, (size_t)dit->layout.num_params * es, "DiT");
    if (params == NULL) return -1;
    void *pos = NULL;
    if (host_pos) {
        pos = rsm_py_device_copy_in(be, host_pos, (size_t)(dit->layout.tokens * dit->config.width) * es,
                                    "DiT");
        if (pos == NULL) {
            be->free(be, params);
            return -1;
        }
    }
    if (dit->backend == NULL) rsm_free(dit->params); /* owned: the host block of rsm_dit_init */
    else dit->backend->free(dit->backend, dit->params);
    dit->params = params;
    if (pos) {
        rsm_free(dit->pos);
        dit->pos = pos;
    }
    dit->backend = be;
    return 0;
}

static void
rsm_dit_device_release(rsm_dit *dit)
{
    if (!rsm_py_on_device(dit->backend)) return;
    dit->backend->free(dit->backend, dit->params); /* a device DiT is never a LoRA: owned */
    dit->backend->free(dit->backend, dit->pos);
    dit->params = dit->pos = NULL; /* rsm_dit_free's rsm_free(NULL): no-ops */
}

static int
rsm_dit_as_model_op(PyObject *module, rsm_py_model *self, const char *func, rsm_model *model,
                    PyThread_type_lock *lock)
{
    (void)module, (void)func, (void)lock;
    *model = rsm_dit_as_model(&((rsm_py_dit *)self)->dit);
    return 0;
}

static void
rsm_dit_release(rsm_py_model *self)
{
    rsm_py_dit *d = (rsm_py_dit *)self;
    if (self->initialised) {
        rsm_dit_device_release(&d->dit);
        rsm_dit_free(&d->dit);
    }
    Py_CLEAR(d->base);
    Py_CLEAR(d->backend_obj);
}

/* base is only borrowed from while this object lives: visited, and dropped at dealloc */
static int
rsm_dit_traverse(rsm_py_model *self, visitproc visit, void *arg)
{
    Py_VISIT(((rsm_py_dit *)self)->base);
    return 0;
}

static const rsm_py_model_ops rsm_dit_ops = {
    "DiT", 0, rsm_dit_as_model_op, rsm_dit_release, rsm_dit_traverse, NULL};

static int
rsm_dit_targets(PyObject *obj, int *targets)
{
    /* a sequence of 'attn' / 'mlp' */
    *targets = 0;
    PyObject *seq = PySequence_Fast(obj, "targets must be a sequence of 'attn' and/or 'mlp'");
    if (!seq) return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        const char *name = PyUnicode_Check(PySequence_Fast_GET_ITEM(seq, i))
                               ? PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(seq, i))
                               : NULL;
        if (name && strcmp(name, "attn") == 0)
            *targets |= RSM_DIT_LORA_ATTN;
        else if (name && strcmp(name, "mlp") == 0)
            *targets |= RSM_DIT_LORA_MLP;
        else {
            Py_DECREF(seq);
            PyErr_Clear();
            rsm_py_raisef(PyExc_ValueError, "lora", "targets must name 'attn' and/or 'mlp'");
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

/* DiTCore(image_size, channels, patch, width, depth, heads, num_classes, temb_dim=64,
 *         dtype='float32', seed=0, checkpoint=False)  or  DiTCore(base=core, rank=, alpha=,
 *         targets=, seed=) for a LoRA model over base's parameters */
static int
rsm_dit_py_init(rsm_py_dit *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"image_size",  "channels", "patch",   "width", "depth",      "heads",
                             "num_classes", "temb_dim", "dtype",   "seed",  "checkpoint", "base",
                             "rank",        "alpha",    "targets", "backend", NULL};
    long long image_size = 0, channels = 0, patch = 1, width = 0, depth = 0, heads = 1,
              num_classes = 0, temb_dim = 64, rank = 0;
    unsigned long long seed = 0;
    int checkpoint = 0;
    double alpha = 0;
    PyObject *dtype_obj = NULL, *base = Py_None, *targets_obj = Py_None, *backend_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|LLLLLLLLOKpOLdOO", kwlist, &image_size,
                                     &channels, &patch, &width, &depth, &heads, &num_classes,
                                     &temb_dim, &dtype_obj, &seed, &checkpoint, &base, &rank,
                                     &alpha, &targets_obj, &backend_obj))
        return -1;
    const rsm_backend *be = rsm_py_backend_arg(backend_obj, "DiT");
    if (be == NULL && PyErr_Occurred()) return -1;
    if (rsm_py_model_init_begin(&self->model, &rsm_dit_ops) < 0) return -1;
    rsm_status status;
    if (base != Py_None) {
        PyObject *module = rsm_module_of_type(Py_TYPE(self));
        if (!PyObject_TypeCheck(base, rsm_state(module)->dit_type) ||
            !((rsm_py_dit *)base)->model.initialised) {
            rsm_py_raisef(PyExc_TypeError, "lora", "ref must be an rsm.DiT");
            return -1;
        }
        /* the core's LoRA init copies base's positional table and draws the adapters on the host:
         * a LoRA over a device DiT (or on a device) is not wired yet */
        if (rsm_py_on_device(be) || rsm_py_on_device(((rsm_py_dit *)base)->dit.backend)) {
            rsm_py_raisef(PyExc_NotImplementedError, "lora",
                          "LoRA adapters on a CUDA device are not wired yet (issue 13): build the "
                          "LoRA model on the CPU");
            return -1;
        }
        int targets;
        if (rsm_dit_targets(targets_obj, &targets) < 0) return -1;
        status = rsm_dit_init_lora(&self->dit, &((rsm_py_dit *)base)->dit, rank, alpha, targets,
                                   (uint64_t)seed);
        if (status != RSM_OK) {
            rsm_py_raise(status, "lora");
            return -1;
        }
        self->base = Py_NewRef(base);
    } else {
        rsm_dtype dtype;
        if (rsm_py_parse_real_dtype(dtype_obj, "DiT", &dtype) < 0) return -1;
        rsm_dit_config config = {image_size, channels,    patch,    width,      depth,
                                 heads,      num_classes, temb_dim, checkpoint, dtype};
        status = rsm_dit_init(&self->dit, config, (uint64_t)seed);
        if (status != RSM_OK) {
            rsm_py_raise(status, "DiT");
            return -1;
        }
        if (rsm_py_on_device(be)) {
            if (rsm_dit_to_device(&self->dit, be, self->dit.params, self->dit.pos) < 0) {
                rsm_dit_free(&self->dit);
                return -1;
            }
            self->backend_obj = Py_NewRef(backend_obj);
        }
    }
    return rsm_py_model_init_end(&self->model, 1);
}

static PyObject *
rsm_dit_py_activation_bytes(rsm_py_dit *self, PyObject *arg)
{
    long long n = PyLong_AsLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    if (rsm_py_model_ready(&self->model, "activation_bytes") < 0) return NULL;
    if (n < 0) return rsm_py_raisef(PyExc_ValueError, "activation_bytes", "n=%lld must be >= 0", n);
    int64_t bytes = rsm_dit_activation_bytes(&self->dit, n);
    if (bytes < 0)
        return rsm_py_raisef(PyExc_ValueError, "activation_bytes",
                             "n=%lld rows need more activations than any buffer rsm allocates", n);
    return PyLong_FromLongLong(bytes);
}

static PyObject *
rsm_dit_py_reset_parameters(rsm_py_dit *self, PyObject *arg)
{
    unsigned long long seed = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    if (rsm_py_model_ready(&self->model, "reset_parameters") < 0) return NULL;
    if (rsm_py_on_device(self->dit.backend)) {
        /* the draws on a host model of the same configuration (the core's rule), moved over */
        rsm_dit host;
        rsm_status status = rsm_dit_init(&host, self->dit.config, (uint64_t)seed);
        if (status != RSM_OK) return rsm_py_raise(status, "reset_parameters");
        PyThread_acquire_lock(self->model.lock, WAIT_LOCK);
        int rc = rsm_dit_to_device(&self->dit, self->dit.backend, host.params, NULL);
        PyThread_release_lock(self->model.lock);
        rsm_dit_free(&host);
        if (rc < 0) return NULL;
        Py_RETURN_NONE;
    }
    PyThread_acquire_lock(self->model.lock, WAIT_LOCK);
    rsm_status status = rsm_dit_reset_parameters(&self->dit, (uint64_t)seed);
    PyThread_release_lock(self->model.lock);
    if (status != RSM_OK) return rsm_py_raise(status, "reset_parameters");
    Py_RETURN_NONE;
}

/* set_params(src): the trainable parameters (a LoRA model: its adapters) from src */
static PyObject *
rsm_dit_py_set_params(rsm_py_dit *self, PyObject *arg)
{
    if (rsm_py_model_ready(&self->model, "set_params") < 0) return NULL;
    return rsm_py_set_params(rsm_module_of_type(Py_TYPE(self)), self->dit.backend,
                             self->model.lock, rsm_dit_trainable(&self->dit),
                             self->dit.config.dtype, rsm_dit_num_trainable(&self->dit), arg);
}

static PyObject *
rsm_dit_py_get_params(rsm_py_dit *self, void *closure)
{
    if (rsm_py_model_ready(&self->model, "params") < 0) return NULL;
    int64_t n = rsm_dit_num_trainable(&self->dit);
    return (PyObject *)rsm_py_tensor_view_on(rsm_module_of_type(Py_TYPE(self)), self->dit.backend,
                                             (PyObject *)self, rsm_dit_trainable(&self->dit),
                                             self->dit.config.dtype, 1, &n, 0);
}

/* the base parameters (for a LoRA model: base's, read-only here) */
static PyObject *
rsm_dit_py_get_base_params(rsm_py_dit *self, void *closure)
{
    if (rsm_py_model_ready(&self->model, "base_params") < 0) return NULL;
    int64_t n = self->dit.layout.num_params;
    return (PyObject *)rsm_py_tensor_view_on(rsm_module_of_type(Py_TYPE(self)), self->dit.backend,
                                             (PyObject *)self, self->dit.params,
                                             self->dit.config.dtype, 1, &n, self->base != NULL);
}

static PyObject *
rsm_dit_py_get_config(rsm_py_dit *self, void *closure)
{
    const rsm_dit_config *c = &self->dit.config;
    return Py_BuildValue(
        "{s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:O,s:s}", "image_size", (long long)c->image_size,
        "channels", (long long)c->channels, "patch", (long long)c->patch, "width",
        (long long)c->width, "depth", (long long)c->depth, "heads", (long long)c->heads,
        "num_classes", (long long)c->num_classes, "temb_dim", (long long)c->temb_dim, "checkpoint",
        c->checkpoint ? Py_True : Py_False, "dtype", rsm_dtype_name(c->dtype));
}

static PyObject *
rsm_dit_py_get_layout(rsm_py_dit *self, void *closure)
{
    const rsm_dit_layout *l = &self->dit.layout;
    return Py_BuildValue(
        "{s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,"
        "s:L,s:L,s:L,s:L,s:L,s:L}",
        "tokens", (long long)l->tokens, "patch_dim", (long long)l->patch_dim, "dim",
        (long long)l->dim, "patch_w", (long long)l->patch_w, "patch_b", (long long)l->patch_b,
        "temb_w1", (long long)l->temb_w1, "temb_b1", (long long)l->temb_b1, "temb_w2",
        (long long)l->temb_w2, "temb_b2", (long long)l->temb_b2, "class_emb",
        (long long)l->class_emb, "block0", (long long)l->block0, "block_size",
        (long long)l->block_size, "ada_w", (long long)l->ada_w, "ada_b", (long long)l->ada_b,
        "qkv_w", (long long)l->qkv_w, "qkv_b", (long long)l->qkv_b, "proj_w", (long long)l->proj_w,
        "proj_b", (long long)l->proj_b, "fc1_w", (long long)l->fc1_w, "fc1_b", (long long)l->fc1_b,
        "fc2_w", (long long)l->fc2_w, "fc2_b", (long long)l->fc2_b, "final_ada_w",
        (long long)l->final_ada_w, "final_ada_b", (long long)l->final_ada_b, "out_w",
        (long long)l->out_w, "out_b", (long long)l->out_b, "num_params", (long long)l->num_params);
}

static PyObject *
rsm_dit_py_get_lora(rsm_py_dit *self, void *closure)
{
    const rsm_dit_lora *lo = &self->dit.lora;
    if (lo->rank == 0) Py_RETURN_NONE;
    return Py_BuildValue("{s:L,s:d,s:(LLLL),s:(LLLL),s:L,s:L,s:i}", "rank", (long long)lo->rank,
                         "scale", lo->scale, "a", (long long)lo->a[0], (long long)lo->a[1],
                         (long long)lo->a[2], (long long)lo->a[3], "b", (long long)lo->b[0],
                         (long long)lo->b[1], (long long)lo->b[2], (long long)lo->b[3],
                         "block_size", (long long)lo->block_size, "num_params",
                         (long long)lo->num_params, "targets", lo->targets);
}

static PyObject *
rsm_dit_py_get_checkpoint(rsm_py_dit *self, void *closure)
{
    return PyBool_FromLong(self->dit.config.checkpoint);
}

static int
rsm_dit_py_set_checkpoint(rsm_py_dit *self, PyObject *value, void *closure)
{
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "checkpoint cannot be deleted");
        return -1;
    }
    int on = PyObject_IsTrue(value);
    if (on < 0) return -1;
    PyThread_acquire_lock(self->model.lock, WAIT_LOCK);
    if (self->dit.config.checkpoint != on) {
        self->dit.config.checkpoint = on;
        self->dit.generation += 1; /* the saved activations were laid out for the other mode */
        self->dit.saved_rows = -1;
    }
    PyThread_release_lock(self->model.lock);
    return 0;
}

static PyMethodDef rsm_dit_methods[] = {
    RSM_PY_MODEL_METHODS,
    {"activation_bytes", (PyCFunction)rsm_dit_py_activation_bytes, METH_O,
     "activation_bytes(n): bytes of activations saved by a forward of n rows"},
    {"reset_parameters", (PyCFunction)rsm_dit_py_reset_parameters, METH_O,
     "reset_parameters(seed)"},
    {"set_params", (PyCFunction)rsm_dit_py_set_params, METH_O,
     "set_params(src): copy the trainable flat parameters in (host array, or a device array on "
     "the model's device)"},
    {NULL, NULL, 0, NULL},
};

static PyObject *
rsm_dit_py_get_device(rsm_py_dit *self, void *closure)
{
    return PyUnicode_FromString(rsm_py_on_device(self->dit.backend) ? self->dit.backend->name
                                                                    : "cpu");
}

static PyGetSetDef rsm_dit_getset[] = {
    {"device", (getter)rsm_dit_py_get_device, NULL, "'cpu' or 'cuda:N' (the backend's name)",
     NULL},
    {"params", (getter)rsm_dit_py_get_params, NULL,
     "trainable flat parameters (writable zero-copy view): the adapters of a LoRA model", NULL},
    {"base_params", (getter)rsm_dit_py_get_base_params, NULL,
     "base flat parameters (read-only for a LoRA model)", NULL},
    {"config", (getter)rsm_dit_py_get_config, NULL, "configuration", NULL},
    {"layout", (getter)rsm_dit_py_get_layout, NULL, "offsets in the flat parameter buffer", NULL},
    {"lora", (getter)rsm_dit_py_get_lora, NULL, "LoRA layout, or None", NULL},
    {"checkpoint", (getter)rsm_dit_py_get_checkpoint, (setter)rsm_dit_py_set_checkpoint,
     "gradient checkpointing", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot rsm_dit_slots[] = {
    {Py_tp_init, rsm_dit_py_init},
    RSM_PY_MODEL_SLOTS,
    {Py_tp_methods, rsm_dit_methods},
    {Py_tp_getset, rsm_dit_getset},
    {Py_tp_doc, "DiTCore(image_size, channels, patch, width, depth, heads, num_classes, "
                "temb_dim=64, dtype='float32', seed=0, checkpoint=False) or DiTCore(base=core, "
                "rank=, alpha=, targets=, seed=)"},
    {0, NULL},
};

static PyType_Spec rsm_dit_spec = {"rsm._C.DiTCore", sizeof(rsm_py_dit), 0,
                                   Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, rsm_dit_slots};

int
rsm_py_dit_exec(PyObject *module)
{
    return rsm_py_add_type(module, &rsm_dit_spec, &rsm_state(module)->dit_type, "DiTCore");
}
