/* reward_py.c: rewards in the binding: the analytic rewards of csrc/reward.h (reward(), at the
 * end), and a Python reward callable as the reward hook of the C rollouts
 * (csrc/train/rollout.h). The rollout runs with the interpreter lock released; the hook lets go
 * of the model's lock (the sampling is over, and a reward may use the model, or another thread
 * may be waiting for it), takes the interpreter lock, calls reward(x0) once with the rsm.Tensor
 * over the batch's terminal samples, keeps the return value or the exception, and gives the
 * interpreter lock back. The binding re-raises that exception unchanged after the rollout. */
#include "binding.h"

#include <string.h>

#include "../reward.h"

void
rsm_py_reward_lock_model(rsm_py_reward_callback *r)
{
    if (r->lock) {
        PyThread_acquire_lock(r->lock, WAIT_LOCK);
        r->lock_held = 1;
    }
}

void
rsm_py_reward_unlock_model(rsm_py_reward_callback *r)
{
    if (r->lock && r->lock_held) {
        PyThread_release_lock(r->lock);
        r->lock_held = 0;
    }
}

static rsm_status
rsm_py_reward_call(void *ctx, int64_t rows, int64_t dim, const void *x0)
{
    (void)rows;
    (void)dim;
    (void)x0; /* r->x0 is the rsm.Tensor over this very buffer */
    rsm_py_reward_callback *r = (rsm_py_reward_callback *)ctx;
    rsm_py_reward_unlock_model(r);
    rsm_status status = RSM_OK;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *out = PyObject_CallOneArg(r->callable, r->x0);
    if (out) {
        r->result = out;
    } else {
        PyErr_Fetch(&r->exc_type, &r->exc_value, &r->exc_tb);
        status = rsm_fail(RSM_ERR_CALLBACK, "the reward callable raised");
    }
    PyGILState_Release(gil);
    return status;
}

void
rsm_py_reward_init(rsm_py_reward_callback *r, PyObject *callable, PyObject *x0,
                   PyThread_type_lock lock)
{
    memset(r, 0, sizeof(*r));
    r->hook.fn = rsm_py_reward_call;
    r->hook.ctx = r;
    r->callable = callable;
    r->x0 = x0;
    r->lock = lock;
}

const rsm_reward_hook *
rsm_py_reward_hook(rsm_py_reward_callback *r)
{
    return r->callable ? &r->hook : NULL;
}

int
rsm_py_reward_finish(rsm_py_reward_callback *r, rsm_status status, const char *func)
{
    if (status == RSM_OK) return 0;
    if (status == RSM_ERR_CALLBACK && r->exc_type) {
        PyErr_Restore(r->exc_type, r->exc_value, r->exc_tb); /* the callable's, unchanged */
        r->exc_type = r->exc_value = r->exc_tb = NULL;
        return -1;
    }
    rsm_py_raise(status, func);
    return -1;
}

void
rsm_py_reward_clear(rsm_py_reward_callback *r)
{
    Py_CLEAR(r->result);
    Py_CLEAR(r->exc_type);
    Py_CLEAR(r->exc_value);
    Py_CLEAR(r->exc_tb);
}

/* ---- analytic rewards ---------------------------------------------------------------------- */

/* reward(kind, params[float64], x, with_grad) -> (rewards[n] float64, grad[n, D] or None) */
static PyObject *
rsm_py_reward(PyObject *module, PyObject *args)
{
    int kind, with_grad = 0;
    PyObject *params_obj, *x_obj;
    if (!PyArg_ParseTuple(args, "iOO|p", &kind, &params_obj, &x_obj, &with_grad)) return NULL;
    if (kind < RSM_REWARD_LINEAR || kind > RSM_REWARD_RING)
        return rsm_py_raisef(PyExc_ValueError, "reward", "unknown reward kind %d", kind);
    rsm_py_tensor *params = rsm_py_tensor_arg(module, params_obj, "reward", "params", RSM_F64);
    if (!params) return NULL;
    rsm_py_tensor *x = rsm_py_real_arg(module, x_obj, "reward", "x");
    PyObject *result = NULL;
    rsm_py_tensor *rewards = NULL, *grad = NULL;
    if (!x) goto done;
    if (x->t.ndim != 2) {
        rsm_py_raisef(PyExc_ValueError, "reward", "x must have shape [n, d]");
        goto done;
    }
    int64_t n = x->t.shape[0], dim = x->t.shape[1];
    rsm_dtype dtype = rsm_tensor_dtype(&x->t);
    rewards = rsm_py_tensor_new(module, RSM_F64, 1, &n, 0);
    if (!rewards) goto done;
    if (with_grad) {
        grad = rsm_py_tensor_new(module, dtype, 2, x->t.shape, 0);
        if (!grad) goto done;
    }
    rsm_status status =
        rsm_reward_eval((rsm_reward_kind)kind, RSM_PY_PTR(params), rsm_tensor_numel(&params->t), n,
                        dim, dtype, RSM_PY_PTR(x), RSM_PY_PTR(rewards), RSM_PY_PTR(grad));
    if (status != RSM_OK) {
        rsm_py_raise(status, "reward");
        goto done;
    }
    result = Py_BuildValue("(OO)", rewards, grad ? (PyObject *)grad : Py_None);
done:
    Py_XDECREF(params);
    Py_XDECREF(x);
    Py_XDECREF(rewards);
    Py_XDECREF(grad);
    return result;
}

static PyMethodDef rsm_reward_methods[] = {
    {"reward", rsm_py_reward, METH_VARARGS,
     "reward(kind, params, x, with_grad) -> (rewards, grad)"},
    {NULL, NULL, 0, NULL},
};

int
rsm_py_reward_exec(PyObject *module)
{
    return PyModule_AddFunctions(module, rsm_reward_methods);
}
