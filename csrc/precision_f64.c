/* precision_f64.c: instantiates every numeric template (*_real.c) in float64. */
#define RSM_REAL_BITS 64
