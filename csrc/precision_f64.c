/* precision_f64.c: instantiates every numeric template (*_real.c) in float64 (see real.h). */
#define RSM_REAL_BITS 64
#include "rng_real.c"
#include "ops/linear_real.c"
#include "path_real.c"
#include "ops/gelu_real.c"
#include "ops/layernorm_real.c"
#include "ops/attention_real.c"
#include "nn/mlp_real.c"
#include "nn/dit_real.c"
#include "sampler_real.c"
#include "optim_real.c"
#include "train/pretrain_real.c"
#include "objective_real.c"
#include "nn/guided_real.c"
#include "train/update_real.c"
#include "train/rollout_real.c"
#include "backend_cpu_real.c"
#include "backend_check_real.c"

/* every entry of real_api.h's list, declared again: the compiler checks each against its
 * definition above */
RSM_DECLARE_REAL_API(RSM_REAL_API)
