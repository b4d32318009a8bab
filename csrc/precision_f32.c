/* precision_f32.c: instantiates every numeric template (*_real.c) in float32. */
#define RSM_REAL_BITS 32
