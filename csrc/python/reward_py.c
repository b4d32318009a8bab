/* reward_py.c: a Python reward callable as the reward hook of the C rollouts
 * (csrc/train/rollout.h). The rollout runs with the interpreter lock released; the hook lets go
 * of the model's lock (the sampling is over, and a reward may use the model, or another thread
 * may be waiting for it), takes the interpreter lock, calls reward(x0) once with the rsm.Tensor
 * over the batch's terminal samples, keeps the return value or the exception, and gives the
 * interpreter lock back. The binding re-raises that exception unchanged after the rollout. */
#include "binding.h"

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
rsm_py_reward_init(rsm_py_reward_callback *r, PyObject *callable, PyObject *x0, PyThread_type_lock lock)
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
