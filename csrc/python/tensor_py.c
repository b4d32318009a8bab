/* tensor_py.c: placeholder, replaced by the rsm.Tensor implementation. */
#include "binding.h"

int
rsm_py_tensor_exec(PyObject *module)
{
    (void)module;
    return 0;
}
