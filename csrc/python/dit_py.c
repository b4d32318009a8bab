/* dit_py.c: the binding of the DiT backbone (rsm._C.DiTCore), its LoRA form and a test hook that
 * runs one op's forward and backward (finite-difference tests of each op).
 *
 * Same pattern as MLPCore (compute_py.c): the core struct plus a lock guarding its activation
 * buffers while the GIL is released; forward(keep=True) returns a token naming the saved
 * activations, which any later forward invalidates. A LoRA DiTCore borrows the base parameters
 * of another DiTCore and keeps a reference to it, so the base outlives the adapters.
 */
#include "binding.h"

#include <math.h>
#include <string.h>

#include "../nn/dit.h"

typedef struct {
    PyObject_HEAD
    rsm_dit dit;
    PyThread_type_lock lock;
    PyObject *base; /* the DiTCore whose parameters a LoRA model borrows, or NULL */
    int initialised;
} rsm_py_dit;

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
        if (name && strcmp(name, "attn") == 0) *targets |= RSM_DIT_LORA_ATTN;
        else if (name && strcmp(name, "mlp") == 0) *targets |= RSM_DIT_LORA_MLP;
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
    static char *kwlist[] = {"image_size", "channels", "patch", "width", "depth", "heads",
                             "num_classes", "temb_dim", "dtype", "seed", "checkpoint", "base",
                             "rank", "alpha", "targets", NULL};
    long long image_size = 0, channels = 0, patch = 1, width = 0, depth = 0, heads = 1,
              num_classes = 0, temb_dim = 64, rank = 0;
    unsigned long long seed = 0;
    int checkpoint = 0;
    double alpha = 0;
    PyObject *dtype_obj = NULL, *base = Py_None, *targets_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|LLLLLLLLOKpOLdO", kwlist, &image_size,
                                     &channels, &patch, &width, &depth, &heads, &num_classes,
                                     &temb_dim, &dtype_obj, &seed, &checkpoint, &base, &rank,
                                     &alpha, &targets_obj))
        return -1;
    if (self->initialised) {
        PyErr_SetString(PyExc_RuntimeError, "DiT(): already initialised");
        return -1;
    }
    rsm_status status;
    if (base != Py_None) {
        PyObject *module = rsm_module_of_type(Py_TYPE(self));
        if (!PyObject_TypeCheck(base, rsm_state(module)->dit_type) ||
            !((rsm_py_dit *)base)->initialised) {
            rsm_py_raisef(PyExc_TypeError, "lora", "ref must be an rsm.DiT");
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
        if (rsm_py_parse_model_dtype(dtype_obj, "DiT", &dtype) < 0) return -1;
        rsm_dit_config config = {image_size, channels, patch, width, depth, heads, num_classes,
                                 temb_dim, checkpoint, dtype};
        status = rsm_dit_init(&self->dit, config, (uint64_t)seed);
        if (status != RSM_OK) {
            rsm_py_raise(status, "DiT");
            return -1;
        }
    }
    self->lock = PyThread_allocate_lock();
    if (!self->lock) {
        PyErr_NoMemory();
        return -1;
    }
    self->initialised = 1;
    return 0;
}

static void
rsm_dit_py_dealloc(rsm_py_dit *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->initialised) rsm_dit_free(&self->dit);
    if (self->lock) PyThread_free_lock(self->lock);
    Py_CLEAR(self->base);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static int
rsm_dit_py_traverse(rsm_py_dit *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->base);
    return 0;
}

static int
rsm_dit_py_clear(rsm_py_dit *self)
{
    /* base is only borrowed from while this object lives; it is cleared at dealloc */
    (void)self;
    return 0;
}

static int
rsm_dit_ready(rsm_py_dit *self, const char *func)
{
    if (!self->initialised) {
        rsm_py_raisef(PyExc_RuntimeError, func, "the model is not initialised");
        return -1;
    }
    return 0;
}

static PyObject *
rsm_dit_py_forward(rsm_py_dit *self, PyObject *args, PyObject *kwargs)
{
    if (rsm_dit_ready(self, "forward") < 0) return NULL;
    rsm_model model = rsm_dit_as_model(&self->dit);
    return rsm_py_model_forward(rsm_module_of_type(Py_TYPE(self)), &model, self->lock, args, kwargs);
}

static PyObject *
rsm_dit_py_vjp(rsm_py_dit *self, PyObject *args, PyObject *kwargs)
{
    if (rsm_dit_ready(self, "vjp") < 0) return NULL;
    rsm_model model = rsm_dit_as_model(&self->dit);
    return rsm_py_model_vjp(rsm_module_of_type(Py_TYPE(self)), &model, self->lock, args, kwargs);
}

static PyObject *
rsm_dit_py_backward(rsm_py_dit *self, PyObject *args)
{
    if (rsm_dit_ready(self, "backward") < 0) return NULL;
    rsm_model model = rsm_dit_as_model(&self->dit);
    return rsm_py_model_backward(rsm_module_of_type(Py_TYPE(self)), &model, self->lock, args);
}

static PyObject *
rsm_dit_py_activation_bytes(rsm_py_dit *self, PyObject *arg)
{
    long long n = PyLong_AsLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    if (rsm_dit_ready(self, "activation_bytes") < 0) return NULL;
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
    if (rsm_dit_ready(self, "reset_parameters") < 0) return NULL;
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    rsm_status status = rsm_dit_reset_parameters(&self->dit, (uint64_t)seed);
    PyThread_release_lock(self->lock);
    if (status != RSM_OK) return rsm_py_raise(status, "reset_parameters");
    Py_RETURN_NONE;
}

static PyObject *
rsm_dit_py_get_params(rsm_py_dit *self, void *closure)
{
    if (rsm_dit_ready(self, "params") < 0) return NULL;
    int64_t n = rsm_dit_num_trainable(&self->dit);
    return (PyObject *)rsm_py_tensor_view(rsm_module_of_type(Py_TYPE(self)), (PyObject *)self,
                                          rsm_dit_trainable(&self->dit), self->dit.config.dtype, 1,
                                          &n, 0);
}

/* the base parameters (for a LoRA model: base's, read-only here) */
static PyObject *
rsm_dit_py_get_base_params(rsm_py_dit *self, void *closure)
{
    if (rsm_dit_ready(self, "base_params") < 0) return NULL;
    int64_t n = self->dit.layout.num_params;
    return (PyObject *)rsm_py_tensor_view(rsm_module_of_type(Py_TYPE(self)), (PyObject *)self,
                                          self->dit.params, self->dit.config.dtype, 1, &n,
                                          self->base != NULL);
}

static PyObject *
rsm_dit_py_get_config(rsm_py_dit *self, void *closure)
{
    const rsm_dit_config *c = &self->dit.config;
    return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:O,s:s}", "image_size",
                         (long long)c->image_size, "channels", (long long)c->channels, "patch",
                         (long long)c->patch, "width", (long long)c->width, "depth",
                         (long long)c->depth, "heads", (long long)c->heads, "num_classes",
                         (long long)c->num_classes, "temb_dim", (long long)c->temb_dim,
                         "checkpoint", c->checkpoint ? Py_True : Py_False, "dtype",
                         rsm_dtype_name(c->dtype));
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
        "qkv_w", (long long)l->qkv_w, "qkv_b", (long long)l->qkv_b, "proj_w",
        (long long)l->proj_w, "proj_b", (long long)l->proj_b, "fc1_w", (long long)l->fc1_w,
        "fc1_b", (long long)l->fc1_b, "fc2_w", (long long)l->fc2_w, "fc2_b", (long long)l->fc2_b,
        "final_ada_w", (long long)l->final_ada_w, "final_ada_b", (long long)l->final_ada_b,
        "out_w", (long long)l->out_w, "out_b", (long long)l->out_b, "num_params",
        (long long)l->num_params);
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
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    if (self->dit.config.checkpoint != on) {
        self->dit.config.checkpoint = on;
        self->dit.generation += 1; /* the saved activations were laid out for the other mode */
        self->dit.saved_rows = -1;
    }
    PyThread_release_lock(self->lock);
    return 0;
}

static PyMethodDef rsm_dit_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))rsm_dit_py_forward, METH_VARARGS | METH_KEYWORDS, "forward(x, t, cond=None, keep=False)"},
    {"vjp", (PyCFunction)(void (*)(void))rsm_dit_py_vjp, METH_VARARGS | METH_KEYWORDS, "vjp(x, t, cotangent, cond=None) -> (out, dx, dparams)"},
    {"backward", (PyCFunction)rsm_dit_py_backward, METH_VARARGS, "backward(cotangent, token) -> (dx, dparams)"},
    {"activation_bytes", (PyCFunction)rsm_dit_py_activation_bytes, METH_O, "activation_bytes(n): bytes of activations saved by a forward of n rows"},
    {"reset_parameters", (PyCFunction)rsm_dit_py_reset_parameters, METH_O, "reset_parameters(seed)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rsm_dit_getset[] = {
    {"params", (getter)rsm_dit_py_get_params, NULL, "trainable flat parameters (writable zero-copy view): the adapters of a LoRA model", NULL},
    {"base_params", (getter)rsm_dit_py_get_base_params, NULL, "base flat parameters (read-only for a LoRA model)", NULL},
    {"config", (getter)rsm_dit_py_get_config, NULL, "configuration", NULL},
    {"layout", (getter)rsm_dit_py_get_layout, NULL, "offsets in the flat parameter buffer", NULL},
    {"lora", (getter)rsm_dit_py_get_lora, NULL, "LoRA layout, or None", NULL},
    {"checkpoint", (getter)rsm_dit_py_get_checkpoint, (setter)rsm_dit_py_set_checkpoint, "gradient checkpointing", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot rsm_dit_slots[] = {
    {Py_tp_init, rsm_dit_py_init},
    {Py_tp_dealloc, rsm_dit_py_dealloc},
    {Py_tp_traverse, rsm_dit_py_traverse},
    {Py_tp_clear, rsm_dit_py_clear},
    {Py_tp_methods, rsm_dit_methods},
    {Py_tp_getset, rsm_dit_getset},
    {Py_tp_doc, "DiTCore(image_size, channels, patch, width, depth, heads, num_classes, temb_dim=64, dtype='float32', seed=0, checkpoint=False) or DiTCore(base=core, rank=, alpha=, targets=, seed=)"},
    {0, NULL},
};

static PyType_Spec rsm_dit_spec = {"rsm._C.DiTCore", sizeof(rsm_py_dit), 0,
                                   Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, rsm_dit_slots};

int
rsm_py_dit_model(PyObject *module, PyObject *obj, const char *func, rsm_model *model,
                 PyThread_type_lock *lock)
{
    if (!PyObject_TypeCheck(obj, rsm_state(module)->dit_type)) return 0;
    rsm_py_dit *d = (rsm_py_dit *)obj;
    if (rsm_dit_ready(d, func) < 0) return -1;
    *model = rsm_dit_as_model(&d->dit);
    *lock = d->lock;
    return 1;
}

/* dit_op(name, sizes, inputs, cotangent) -> (out, grads): one op's forward and backward in
 * float64 (test hook for the finite-difference checks of tests/test_dit_ops.py, not API).
 * Output and gradient sizes per op are those of rsm_dit_op_f64 (dit_real.c). */
static PyObject *
rsm_py_dit_op(PyObject *module, PyObject *args)
{
    const char *name;
    PyObject *sizes_obj, *inputs_obj, *cot_obj;
    if (!PyArg_ParseTuple(args, "sOOO", &name, &sizes_obj, &inputs_obj, &cot_obj)) return NULL;
    int64_t sz[8] = {0};
    Py_ssize_t ns = PySequence_Size(sizes_obj);
    if (ns < 1 || ns > 8) return rsm_py_raisef(PyExc_ValueError, "dit_op", "1..8 sizes");
    for (Py_ssize_t i = 0; i < ns; i++) {
        PyObject *v = PySequence_GetItem(sizes_obj, i);
        sz[i] = v ? PyLong_AsLongLong(v) : -1;
        Py_XDECREF(v);
        if (PyErr_Occurred()) return NULL;
    }
    Py_ssize_t ni = PySequence_Size(inputs_obj);
    if (ni < 1 || ni > 4) return rsm_py_raisef(PyExc_ValueError, "dit_op", "1..4 inputs");
    rsm_py_tensor *in[4] = {NULL}, *grads[4] = {NULL}, *cot = NULL, *out = NULL;
    PyObject *result = NULL;
    const double *in_ptr[4] = {NULL};
    double *grad_ptr[4] = {NULL};
    for (Py_ssize_t i = 0; i < ni; i++) {
        PyObject *v = PySequence_GetItem(inputs_obj, i);
        if (!v) goto done;
        in[i] = rsm_py_tensor_arg(module, v, "dit_op", "inputs", RSM_F64);
        Py_DECREF(v);
        if (!in[i]) goto done;
        int64_t len = rsm_tensor_numel(&in[i]->t);
        grads[i] = rsm_py_tensor_new(module, RSM_F64, 1, &len, 1);
        if (!grads[i]) goto done;
        in_ptr[i] = rsm_py_tensor_data(in[i]);
        grad_ptr[i] = rsm_py_tensor_data(grads[i]);
    }
    cot = rsm_py_tensor_arg(module, cot_obj, "dit_op", "cotangent", RSM_F64);
    if (!cot) goto done;
    int64_t out_len = rsm_tensor_numel(&cot->t);
    out = rsm_py_tensor_new(module, RSM_F64, 1, &out_len, 1);
    if (!out) goto done;
    rsm_status status = rsm_dit_op_f64(name, sz, in_ptr, rsm_py_tensor_data(cot),
                                       rsm_py_tensor_data(out), grad_ptr);
    if (status != RSM_OK) {
        rsm_py_raise(status, "dit_op");
        goto done;
    }
    PyObject *glist = PyTuple_New(ni);
    if (!glist) goto done;
    for (Py_ssize_t i = 0; i < ni; i++) PyTuple_SET_ITEM(glist, i, Py_NewRef((PyObject *)grads[i]));
    result = Py_BuildValue("(ON)", out, glist);
done:
    for (int i = 0; i < 4; i++) {
        Py_XDECREF(in[i]);
        Py_XDECREF(grads[i]);
    }
    Py_XDECREF(cot);
    Py_XDECREF(out);
    return result;
}

static PyMethodDef rsm_dit_functions[] = {
    {"dit_op", rsm_py_dit_op, METH_VARARGS, "dit_op(name, sizes, inputs, cotangent) -> (out, grads) [test hook]"},
    {NULL, NULL, 0, NULL},
};

int
rsm_py_dit_exec(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &rsm_dit_spec, NULL);
    if (!type) return -1;
    rsm_state(module)->dit_type = (PyTypeObject *)type;
    if (PyModule_AddObjectRef(module, "DiTCore", type) < 0) return -1;
    if (PyModule_AddFunctions(module, rsm_dit_functions) < 0) return -1;
    return 0;
}
