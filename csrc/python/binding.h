/* binding.h: what the files of the CPython binding (rsm._C) share; the one header of the binding.
 *
 * The binding is thin: it parses arguments, converts tensors (DLPack in and out), maps rsm_status
 * to Python exceptions and wraps Python callables. Numerical work happens in the C core (csrc/),
 * with the GIL released around it. Every .c file here includes this header and core headers;
 * no .c file includes another .c file (tests/test_includes.py checks it).
 *
 * Files, one concept each:
 *   module.c       module definition, multi-phase init, module state, errors, build_info
 *   args.c         argument conversion helpers: dtype names, shaped real arrays, finite values
 *   tensor_py.c    the rsm.Tensor type, from_dlpack, __dlpack__ (DLPack producer/consumer)
 *   model_py.c     the one model-type machinery over the core's vtable (nn/model.h): init, lock,
 *                  dealloc, forward / vjp / backward, and the model argument of every entry point
 *   mlp_py.c       MLPCore          dit_py.c     DiTCore (and its LoRA form)
 *   guided_py.c    GuidedCore and the guidance combination    gmm_py.c   GaussianMixtureCore
 *   external_py.c  ExternalCore: a network outside rsm (torch, numpy) through per-batch callbacks
 *   path_py.c      PathCore (schedules, parameterization changes, noising)
 *   sampler_py.c   sample, branch_rollout, transition_log_prob, step_coefficients
 *   reward_py.c    a Python reward callable as the rollouts' reward hook; the analytic rewards
 *   objective_py.c the RSM objective and group advantages
 *   optim_py.c     AdamWCore
 *   train_py.c     pretrain_steps, UpdateBlock and train_update (the fine-tuning update)
 *   rng_py.c       the counter-based random numbers (philox, random, stream_id)
 *   debug_py.c     test and benchmark hooks, not API (gemm, dit_op)
 */
#ifndef RSM_BINDING_H
#define RSM_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../nn/model.h"
#include "../objective.h"
#include "../path.h"
#include "../status.h"
#include "../tensor.h"
#include "../train/rollout.h"
#include "dlpack_api.h" /* the importer lent to rsm._cuda (tensor_py.c) */

/* The module's types, one list (X-macro): the state's fields, and what the module's traverse and
 * clear visit (module.c). */
#define RSM_MODULE_TYPES(X)                                                                        \
    X(tensor_type)       /* rsm.Tensor (tensor_py.c) */                                            \
    X(mlp_type)          /* rsm._C.MLPCore (mlp_py.c) */                                           \
    X(gmm_type)          /* rsm._C.GaussianMixtureCore (gmm_py.c) */                               \
    X(path_type)         /* rsm._C.PathCore (path_py.c) */                                         \
    X(adamw_type)        /* rsm._C.AdamWCore (optim_py.c) */                                       \
    X(dit_type)          /* rsm._C.DiTCore (dit_py.c) */                                           \
    X(guided_type)       /* rsm._C.GuidedCore (guided_py.c) */                                     \
    X(update_block_type) /* rsm._C.UpdateBlock (train_py.c) */                                    \
    X(external_type)     /* rsm._C.ExternalCore (external_py.c) */

typedef struct rsm_module_state {
#define RSM_STATE_FIELD(name) PyTypeObject *name;
    RSM_MODULE_TYPES(RSM_STATE_FIELD)
#undef RSM_STATE_FIELD
} rsm_module_state;

/* ---- the module (module.c) ----------------------------------------------------------------- */

extern PyModuleDef rsm_module_def;

rsm_module_state *rsm_state(PyObject *module);
/* The rsm._C module from an instance of one of its heap types. */
PyObject *rsm_module_of_type(PyTypeObject *type);
/* Create the heap type of `spec`, keep it in *slot (module state) and add it as `name`. */
int rsm_py_add_type(PyObject *module, PyType_Spec *spec, PyTypeObject **slot, const char *name);

/* Raise the Python exception that matches `status`, with the core's last message prefixed by
 * "func(): ". Returns NULL so callers can `return rsm_py_raise(...)`. RSM_ERR_CALLBACK keeps the
 * exception that is already set. */
PyObject *rsm_py_raise(rsm_status status, const char *func);
/* Same, with an explicit message (printf-style); the message is prefixed by "func(): ". */
PyObject *rsm_py_raisef(PyObject *exc_type, const char *func, const char *fmt, ...);

/* Each file's part of the module: its types and functions (called by module.c's exec slot). */
int rsm_py_tensor_exec(PyObject *module);
int rsm_py_path_exec(PyObject *module);
int rsm_py_mlp_exec(PyObject *module);
int rsm_py_gmm_exec(PyObject *module);
int rsm_py_dit_exec(PyObject *module);
int rsm_py_guided_exec(PyObject *module);
int rsm_py_external_exec(PyObject *module);
int rsm_py_sampler_exec(PyObject *module);
int rsm_py_reward_exec(PyObject *module);
int rsm_py_objective_exec(PyObject *module);
int rsm_py_optim_exec(PyObject *module);
int rsm_py_train_exec(PyObject *module);
int rsm_py_rng_exec(PyObject *module);
int rsm_py_debug_exec(PyObject *module);

/* ---- rsm.Tensor (tensor_py.c) ------------------------------------------------------------- */

typedef struct rsm_py_tensor {
    PyObject_HEAD rsm_tensor t; /* the view: data, device, dtype, shape, strides */
    void *own_data;             /* rsm_malloc'd buffer owned by this object, or NULL */
    PyObject *base; /* an object kept alive by this view (e.g. a model for .params), or NULL */
    void *managed;  /* an imported DLManagedTensor(Versioned) whose deleter we call, or NULL */
    int managed_versioned; /* 1 if `managed` is a DLManagedTensorVersioned */
    PyObject *weakreflist;
} rsm_py_tensor;

/* A new, owned, C-contiguous CPU tensor (uninitialised memory; zeroed if `zero`). */
rsm_py_tensor *rsm_py_tensor_new(PyObject *module, rsm_dtype dtype, int32_t ndim,
                                 const int64_t *shape, int zero);
/* A contiguous CPU view of memory owned by `base` (a new reference to base is kept). */
rsm_py_tensor *rsm_py_tensor_view(PyObject *module, PyObject *base, void *data, rsm_dtype dtype,
                                  int32_t ndim, const int64_t *shape, int readonly);
/* Any argument (rsm.Tensor, a DLPack producer such as a numpy array or a torch tensor) as a
 * C-contiguous CPU rsm.Tensor of `dtype`: the same object or a zero-copy import when possible, a
 * contiguous copy when the input is strided. A different dtype is a TypeError that names
 * `func` and `argname`; a non-CPU device is a ValueError. Returns a new reference or NULL. */
rsm_py_tensor *rsm_py_tensor_arg(PyObject *module, PyObject *obj, const char *func,
                                 const char *argname, rsm_dtype dtype);
/* `obj` as an rsm.Tensor on a device of type `device_type` (kDLCPU or kDLCUDA), zero-copy, any
 * dtype and strides; a tensor on another device is a ValueError naming `argname` and the device.
 * The importer of the device ops (rsm._cuda borrows it through dlpack_api.h). */
rsm_py_tensor *rsm_py_tensor_on(PyObject *module, PyObject *obj, const char *func,
                                const char *argname, int device_type);
/* The same, but when the argument is used as an output: it must be writable (no copy is made:
 * a strided or read-only output is an error). */
rsm_py_tensor *rsm_py_tensor_out_arg(PyObject *module, PyObject *obj, const char *func,
                                     const char *argname, rsm_dtype dtype);
/* Typed pointer to the first element. */
static inline void *
rsm_py_tensor_data(rsm_py_tensor *self)
{
    return rsm_tensor_ptr(&self->t);
}
/* The data of an optional tensor (NULL for none). */
#define RSM_PY_PTR(t) ((t) ? rsm_py_tensor_data(t) : NULL)

/* ---- argument conversion (args.c) ----------------------------------------------------------
 * Type conversion with messages that name the function and the argument. What the core checks
 * itself (a value's range, a configuration's consistency) is left to the core's status message. */

/* 'float32' / 'float64' (obj NULL: float32); a ValueError naming `func` otherwise. */
int rsm_py_parse_real_dtype(PyObject *obj, const char *func, rsm_dtype *out);
/* A [rows, cols] argument of `dtype`; rows / cols < 0 mean any. */
rsm_py_tensor *rsm_py_matrix_arg(PyObject *module, PyObject *obj, const char *func,
                                 const char *name, rsm_dtype dtype, int64_t rows, int64_t cols);
/* A [len] argument of `dtype`; len < 0 means any. */
rsm_py_tensor *rsm_py_vector_arg(PyObject *module, PyObject *obj, const char *func,
                                 const char *name, rsm_dtype dtype, int64_t len);
/* A float32 or float64 argument (the dtype of whatever was passed). */
rsm_py_tensor *rsm_py_real_arg(PyObject *module, PyObject *obj, const char *func, const char *name);
/* Every value finite and in [0, 1] (times; t = 1 is noise) / every value finite. */
int rsm_py_check_times(rsm_py_tensor *t, rsm_dtype dtype, const char *func, const char *name);
int rsm_py_check_finite(rsm_py_tensor *t, rsm_dtype dtype, const char *func, const char *name);

/* ---- the model types (model_py.c; mlp_py.c, dit_py.c, guided_py.c, gmm_py.c) ---------------
 * Every model core is an rsm_py_model followed by its core struct. The shared machinery runs
 * init bookkeeping, the lock, dealloc / traverse / clear and the forward / vjp / backward methods
 * through the core's vtable; a model file supplies its ops (below), its constructor and its
 * specific getters. */

struct rsm_py_model;
typedef struct rsm_py_model_ops {
    const char *name; /* the constructor's name in messages ("MLP", "DiT", ...) */
    int reinit;       /* __init__ may run again on an initialised object (it frees the old core) */
    /* The core vtable of an initialised model; *lock is preset to the model's own lock (a
     * guided model replaces it by its inner model's). 0, or -1 with an exception set. */
    int (*as_model)(PyObject *module, struct rsm_py_model *self, const char *func, rsm_model *model,
                    PyThread_type_lock *lock);
    /* Free the core state if `initialised`, and drop the references the object owns. */
    void (*release)(struct rsm_py_model *self);
    /* Visit / clear the Python references the object owns (NULL: none). */
    int (*traverse)(struct rsm_py_model *self, visitproc visit, void *arg);
    int (*clear)(struct rsm_py_model *self);
} rsm_py_model_ops;

typedef struct rsm_py_model {
    PyObject_HEAD const rsm_py_model_ops *ops; /* set by __init__ */
    PyThread_type_lock lock; /* guards the activations while the GIL is released, or NULL */
    int initialised;
} rsm_py_model;

/* At the start of a model's __init__: set its ops; an initialised object is a RuntimeError
 * "<name>(): already initialised" unless ops->reinit. */
int rsm_py_model_init_begin(rsm_py_model *self, const rsm_py_model_ops *ops);
/* After the core state is initialised: the lock (if `with_lock`), then initialised = 1. On
 * failure the core state is released. */
int rsm_py_model_init_end(rsm_py_model *self, int with_lock);
/* The slots every model type shares. */
void rsm_py_model_dealloc(PyObject *self);
int rsm_py_model_traverse(PyObject *self, visitproc visit, void *arg);
int rsm_py_model_clear(PyObject *self);
/* RuntimeError "func(): the model is not initialised" unless it is. */
int rsm_py_model_ready(rsm_py_model *self, const char *func);
/* The methods every model core may list: forward(x, t, cond=None, keep=False),
 * vjp(x, t, cotangent, cond=None), backward(cotangent, token). */
PyObject *rsm_py_model_forward_method(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *rsm_py_model_vjp_method(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *rsm_py_model_backward_method(PyObject *self, PyObject *args);
/* The entries every model type lists: its slots (dealloc, traverse, clear) and, for a trainable
 * core, the three methods above (forward also for the guided core, RSM_PY_MODEL_FORWARD). */
/* clang-format off */
#define RSM_PY_MODEL_SLOTS                                                                         \
    {Py_tp_dealloc, rsm_py_model_dealloc}, {Py_tp_traverse, rsm_py_model_traverse},                \
        {Py_tp_clear, rsm_py_model_clear}
#define RSM_PY_MODEL_FORWARD(doc)                                                                  \
    {"forward", (PyCFunction)(void (*)(void))rsm_py_model_forward_method,                          \
     METH_VARARGS | METH_KEYWORDS, doc}
#define RSM_PY_MODEL_METHODS                                                                       \
    RSM_PY_MODEL_FORWARD("forward(x, t, cond=None, keep=False)"),                                  \
        {"vjp", (PyCFunction)(void (*)(void))rsm_py_model_vjp_method,                              \
         METH_VARARGS | METH_KEYWORDS, "vjp(x, t, cotangent, cond=None) -> (out, dx, dparams)"},   \
        {"backward", (PyCFunction)rsm_py_model_backward_method, METH_VARARGS,                      \
         "backward(cotangent, token) -> (dx, dparams)"}
/* clang-format on */

/* A model argument (any model core of this module) -> its vtable, plus the lock that guards its
 * activations (NULL if it has none); -1 with an exception set otherwise. */
int rsm_py_model_arg(PyObject *module, PyObject *obj, const char *func, rsm_model *model,
                     PyThread_type_lock *lock);
/* The cond argument of a model with `cond_dim` over `rows` rows: None -> NULL (whether the model
 * needs a condition is the core's check, with its message); else a finite [rows, cond_dim] array
 * of `dtype` (a new reference), an error for an unconditional model. */
int rsm_py_cond_arg(PyObject *module, const char *func, rsm_dtype dtype, int64_t cond_dim,
                    int64_t rows, PyObject *cond_obj, rsm_py_tensor **cond);
/* Checked (x[n, dim], t[n], cond) of `model` (new references or NULL). */
int rsm_py_model_inputs(PyObject *module, const char *func, const rsm_model *model, PyObject *x_obj,
                        PyObject *t_obj, PyObject *cond_obj, rsm_py_tensor **x, rsm_py_tensor **t,
                        rsm_py_tensor **cond);

/* ---- models on a device (device_py.c) ------------------------------------------------------
 * be: a model's backend (rsm_model.backend); NULL or the CPU backend gives the CPU helper each
 * one wraps, unchanged. On a device: arrays are device tensors of the model's dtype, on its
 * device, C-contiguous (refused naming the argument otherwise, no copy), and new tensors come
 * from be->alloc, freed through be->free when the last view goes. */
struct rsm_backend;
int rsm_py_on_device(const struct rsm_backend *be);
/* None -> NULL (the CPU); the capsule of rsm.cuda.backend_table(device) -> its table. */
const struct rsm_backend *rsm_py_backend_arg(PyObject *obj, const char *func);
/* A new block of `be` holding a copy of `bytes` host bytes (waits for the copy), or NULL with
 * an exception naming `func`. How a model core's host-initialised buffers reach the device. */
void *rsm_py_device_copy_in(const struct rsm_backend *be, const void *host, size_t bytes,
                            const char *func);
/* A Python object owning device block `ptr` of `be` (freed with it; on failure freed now). */
PyObject *rsm_py_device_block(const struct rsm_backend *be, void *ptr);
rsm_py_tensor *rsm_py_tensor_new_on(PyObject *module, const struct rsm_backend *be,
                                    rsm_dtype dtype, int32_t ndim, const int64_t *shape, int zero);
rsm_py_tensor *rsm_py_tensor_view_on(PyObject *module, const struct rsm_backend *be,
                                     PyObject *base, void *data, rsm_dtype dtype, int32_t ndim,
                                     const int64_t *shape, int readonly);
rsm_py_tensor *rsm_py_matrix_arg_on(PyObject *module, const struct rsm_backend *be, PyObject *obj,
                                    const char *func, const char *name, rsm_dtype dtype,
                                    int64_t rows, int64_t cols);
rsm_py_tensor *rsm_py_vector_arg_on(PyObject *module, const struct rsm_backend *be, PyObject *obj,
                                    const char *func, const char *name, rsm_dtype dtype,
                                    int64_t len);
/* rsm_py_check_finite (times=0) or rsm_py_check_times (times=1), on a host copy on a device. */
int rsm_py_check_on(PyObject *module, const struct rsm_backend *be, rsm_py_tensor *t,
                    rsm_dtype dtype, const char *func, const char *name, int times);
/* set_params(src) of a model core: a flat [n] array of `dtype` copied into its parameter block
 * `dst` (host -> host, host -> device, device -> device on `be`), under `lock`. */
PyObject *rsm_py_set_params(PyObject *module, const struct rsm_backend *be, PyThread_type_lock lock,
                            void *dst, rsm_dtype dtype, int64_t n, PyObject *arg);
/* The backend of an AdamWCore (NULL: its state is on the host), optim_py.c. */
const struct rsm_backend *rsm_py_adamw_backend(PyObject *opt);
/* rsm_py_cond_arg of a model on `be`. */
int rsm_py_cond_arg_on(PyObject *module, const struct rsm_backend *be, const char *func,
                       rsm_dtype dtype, int64_t cond_dim, int64_t rows, PyObject *cond_obj,
                       rsm_py_tensor **cond);

/* ---- other core objects as arguments (path_py.c, optim_py.c, objective_py.c) ---------------- */

struct rsm_adamw;
/* An AdamWCore / PathCore argument -> its C object (borrowed); NULL with a TypeError naming
 * `argname` otherwise. */
struct rsm_adamw *rsm_py_adamw_arg(PyObject *module, PyObject *obj, const char *func,
                                   const char *argname);
const rsm_path *rsm_py_path_arg(PyObject *module, PyObject *obj, const char *func,
                                const char *argname);
/* The objective form named `name` ('score_matching', 'ppo', 'log_ratio', 'matching'); a
 * ValueError naming `func` and the argument `what` otherwise. */
int rsm_py_parse_form(const char *name, const char *func, const char *what,
                      rsm_objective_form *form);

/* ---- a Python reward callable as the rollouts' reward hook (reward_py.c) --------------------- */
typedef struct rsm_py_reward_callback {
    rsm_reward_hook hook;
    PyObject *callable;      /* borrowed: reward(x0), or NULL (no reward) */
    PyObject *x0;            /* borrowed: the rsm.Tensor over the buffer the rollout fills */
    PyThread_type_lock lock; /* the model's lock, or NULL */
    int lock_held;           /* `lock` is held (rsm_py_reward_lock_model); the hook lets go */
    PyObject *result;        /* new reference: what the callable returned */
    PyObject *exc_type, *exc_value, *exc_tb; /* what it raised */
} rsm_py_reward_callback;
void rsm_py_reward_init(rsm_py_reward_callback *r, PyObject *callable, PyObject *x0,
                        PyThread_type_lock lock);
/* Without the interpreter lock, around the rollout: take the model's lock / give it back unless
 * the hook already did. */
void rsm_py_reward_lock_model(rsm_py_reward_callback *r);
void rsm_py_reward_unlock_model(rsm_py_reward_callback *r);
/* The hook to pass to the rollout: NULL when there is no callable. */
const rsm_reward_hook *rsm_py_reward_hook(rsm_py_reward_callback *r);
/* With the interpreter lock, after the rollout: 0 on RSM_OK; else -1 with the callable's own
 * exception restored (RSM_ERR_CALLBACK) or the core's error raised as from `func`. */
int rsm_py_reward_finish(rsm_py_reward_callback *r, rsm_status status, const char *func);
void rsm_py_reward_clear(rsm_py_reward_callback *r);

#endif /* RSM_BINDING_H */
