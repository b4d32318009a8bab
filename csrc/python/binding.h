/* binding.h: what the files of the CPython binding (rsm._C) share.
 *
 * The binding is thin: it parses arguments, converts tensors (DLPack in and out), maps rsm_status
 * to Python exceptions and wraps Python callables. Numerical work happens in the C core (csrc/),
 * with the GIL released around it.
 *
 * Files:  module.c      module definition, multi-phase init, module state, errors, build_info
 *         tensor_py.c   the rsm.Tensor type, from_dlpack, __dlpack__ (DLPack producer/consumer)
 *         compute_py.c  models, paths, samplers, optimizers, pretraining entry points
 *         objective_py.c  the RSM objective and group advantages
 *         dit_py.c      the DiT backbone (DiTCore), LoRA, and the op test hook
 *         guidance_py.c classifier-free guidance: the guided model core and its combination
 *         update_py.c   the fine-tuning update (objective, backward, optimizer steps in one call)
 */
#ifndef RSM_BINDING_H
#define RSM_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../status.h"
#include "../tensor.h"

typedef struct rsm_module_state {
    PyTypeObject *tensor_type;   /* rsm.Tensor (tensor_py.c) */
    PyTypeObject *mlp_type;      /* rsm._C.MLPCore (compute_py.c) */
    PyTypeObject *gmm_type;      /* rsm._C.GaussianMixtureCore (compute_py.c) */
    PyTypeObject *path_type;     /* rsm._C.PathCore (compute_py.c) */
    PyTypeObject *adamw_type;    /* rsm._C.AdamWCore (compute_py.c) */
    PyTypeObject *dit_type;      /* rsm._C.DiTCore (dit_py.c) */
    PyTypeObject *guided_type;   /* rsm._C.GuidedCore (guidance_py.c) */
} rsm_module_state;

extern PyModuleDef rsm_module_def;

rsm_module_state *rsm_state(PyObject *module);
/* The rsm._C module from an instance of one of its heap types. */
PyObject *rsm_module_of_type(PyTypeObject *type);

/* Raise the Python exception that matches `status`, with the core's last message prefixed by
 * "func(): ". Returns NULL so callers can `return rsm_py_raise(...)`. RSM_ERR_CALLBACK keeps the
 * exception that is already set. */
PyObject *rsm_py_raise(rsm_status status, const char *func);
/* Same, with an explicit message (printf-style); the message is prefixed by "func(): ". */
PyObject *rsm_py_raisef(PyObject *exc_type, const char *func, const char *fmt, ...);

/* ---- rsm.Tensor (tensor_py.c) ------------------------------------------------------------- */

typedef struct rsm_py_tensor {
    PyObject_HEAD
    rsm_tensor t;          /* the view: data, device, dtype, shape, strides */
    void *own_data;        /* rsm_malloc'd buffer owned by this object, or NULL */
    PyObject *base;        /* an object kept alive by this view (e.g. a model for .params), or NULL */
    void *managed;         /* an imported DLManagedTensor(Versioned) whose deleter we call, or NULL */
    int managed_versioned; /* 1 if `managed` is a DLManagedTensorVersioned */
    PyObject *weakreflist;
} rsm_py_tensor;

int rsm_py_tensor_exec(PyObject *module);

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

/* ---- compute entry points (compute_py.c) -------------------------------------------------- */
int rsm_py_compute_exec(PyObject *module);
/* The dtype argument of a model constructor ('float32' / 'float64'). */
int rsm_py_parse_model_dtype(PyObject *obj, const char *func, rsm_dtype *out);

struct rsm_adamw;
struct rsm_path;
/* An AdamWCore / PathCore argument -> its C object (borrowed); NULL with a TypeError naming
 * `argname` otherwise. */
struct rsm_adamw *rsm_py_adamw_arg(PyObject *module, PyObject *obj, const char *func,
                                   const char *argname);
const struct rsm_path *rsm_py_path_arg(PyObject *module, PyObject *obj, const char *func,
                                       const char *argname);

/* ---- the DiT (dit_py.c) --------------------------------------------------------------------- */
int rsm_py_dit_exec(PyObject *module);
struct rsm_model;
/* obj a DiTCore: fill *model (vtable) and *lock, return 1; not a DiTCore: 0; error: -1. */
int rsm_py_dit_model(PyObject *module, PyObject *obj, const char *func, struct rsm_model *model,
                     PyThread_type_lock *lock);

#include "../nn/model.h"

/* A model argument (any model core of this module) -> its vtable, plus the lock that guards its
 * activations (NULL if it has none); -1 with an exception set otherwise. */
int rsm_py_model_arg(PyObject *module, PyObject *obj, const char *func, rsm_model *model,
                     PyThread_type_lock *lock);
/* The forward / vjp / backward methods every model core shares, run through `model`'s vtable
 * under `lock` (compute_py.c): forward(x, t, cond=None, keep=False), vjp(x, t, cotangent,
 * cond=None), backward(cotangent, token). */
PyObject *rsm_py_model_forward(PyObject *module, const rsm_model *model, PyThread_type_lock lock,
                               PyObject *args, PyObject *kwargs);
PyObject *rsm_py_model_vjp(PyObject *module, const rsm_model *model, PyThread_type_lock lock,
                           PyObject *args, PyObject *kwargs);
PyObject *rsm_py_model_backward(PyObject *module, const rsm_model *model, PyThread_type_lock lock,
                                PyObject *args);

/* ---- classifier-free guidance (guidance_py.c) ---------------------------------------------- */
int rsm_py_guidance_exec(PyObject *module);
/* A GuidedCore -> the guided model's vtable (its inner model resolved now) and the inner lock. */
int rsm_py_guided_model(PyObject *module, PyObject *obj, const char *func, rsm_model *model,
                        PyThread_type_lock *lock);

/* ---- the RSM objective (objective_py.c) ---------------------------------------------------- */
int rsm_py_objective_exec(PyObject *module);
#include "../objective.h"
/* The objective form named `name` ('score_matching', 'ppo', 'log_ratio', 'matching'); a
 * ValueError naming `func` and the argument `what` otherwise. */
int rsm_py_parse_form(const char *name, const char *func, const char *what,
                      rsm_objective_form *form);

/* ---- the fine-tuning update (update_py.c) --------------------------------------------------- */
int rsm_py_update_exec(PyObject *module);

/* ---- a Python reward callable as the rollouts' reward hook (reward_py.c) --------------------- */
#include "../train/rollout.h"
typedef struct rsm_py_reward_callback {
    rsm_reward_hook hook;
    PyObject *callable;        /* borrowed: reward(x0), or NULL (no reward) */
    PyObject *x0;              /* borrowed: the rsm.Tensor over the buffer the rollout fills */
    PyThread_type_lock lock;   /* the model's lock, or NULL */
    int lock_held;             /* `lock` is held (rsm_py_reward_lock_model); the hook lets go */
    PyObject *result;          /* new reference: what the callable returned */
    PyObject *exc_type, *exc_value, *exc_tb; /* what it raised */
} rsm_py_reward_callback;
void rsm_py_reward_init(rsm_py_reward_callback *r, PyObject *callable, PyObject *x0, PyThread_type_lock lock);
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
