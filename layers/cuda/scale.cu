// Broadcast multiply and add (Caffe's Scale and Bias layers).
//
// bottom[0] is seen as (outer, dim, inner); element i meets operand element
// (i / inner) % dim. x and y may be the same array (in place): each element
// is read before it is written. The operand reductions of backward are done
// by the caller with xp.sum.
#include "common.cuh"

// y = x * scale; also dx = dy * scale in backward.
KERNEL void FN(scale_forward)(const long long n, const real* x,
                              const real* scale, real* y,
                              const long long dim, const long long inner) {
  CUDA_KERNEL_LOOP(i, n) {
    y[i] = x[i] * scale[(i / inner) % dim];
  }
}

// y = x * scale + bias (Scale with bias_term; bias has the scale's shape).
KERNEL void FN(scale_bias_forward)(const long long n, const real* x,
                                   const real* scale, const real* bias, real* y,
                                   const long long dim, const long long inner) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long d = (i / inner) % dim;
    y[i] = x[i] * scale[d] + bias[d];
  }
}

// y = x + bias.
KERNEL void FN(bias_forward)(const long long n, const real* x,
                             const real* bias, real* y,
                             const long long dim, const long long inner) {
  CUDA_KERNEL_LOOP(i, n) {
    y[i] = x[i] + bias[(i / inner) % dim];
  }
}
