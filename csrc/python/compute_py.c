/* compute_py.c: models, paths, samplers, optimizers and pretraining entry points. */
#include "binding.h"

int
rsm_py_compute_exec(PyObject *module)
{
    (void)module;
    return 0;
}
