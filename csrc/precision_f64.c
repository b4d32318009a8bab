/* precision_f64.c: instantiates every numeric template (*_real.c) in float64. */
#define RSM_REAL_BITS 64
#include "ops/linear_real.c"
#include "path_real.c"
#include "nn/mlp_real.c"
#include "sampler_real.c"
#include "optim_real.c"
#include "train/pretrain_real.c"
#include "objective_real.c"
#include "nn/guided_real.c"
