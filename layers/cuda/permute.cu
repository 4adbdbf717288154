// Caffe-SSD's Permute (layers/permute.py): top axis k is bottom axis
// order[k], for any number of axes. One thread per top element i: its index
// along each top axis, taken from the top's shape, times the stride of the
// bottom axis it came from gives the bottom element's offset. The host
// passes, per top axis k, top_shape[k] and bottom_strides[k] (the bottom's
// C-contiguous stride of axis order[k], in elements).
//
// Forward copies bottom[offset] to top[i]; backward copies top_diff[i] back
// to bottom_diff[offset], the inverse permutation. Every offset is hit by
// exactly one i (a permutation), so neither direction needs atomics.
#include "common.cuh"

// Offset in the bottom of top element i.
DEVICE long long permute_offset(long long i, const int axes, const long long* top_shape,
                                const long long* bottom_strides) {
  long long offset = 0;
  for (int k = axes - 1; k >= 0; --k) {
    offset += (i % top_shape[k]) * bottom_strides[k];
    i /= top_shape[k];
  }
  return offset;
}

KERNEL void FN(permute_forward)(const long long count, const int axes,
                                const long long* top_shape, const long long* bottom_strides,
                                const real* bottom, real* top) {
  CUDA_KERNEL_LOOP(i, count) {
    top[i] = bottom[permute_offset(i, axes, top_shape, bottom_strides)];
  }
}

KERNEL void FN(permute_backward)(const long long count, const int axes,
                                 const long long* top_shape, const long long* bottom_strides,
                                 const real* top_diff, real* bottom_diff) {
  CUDA_KERNEL_LOOP(i, count) {
    bottom_diff[permute_offset(i, axes, top_shape, bottom_strides)] = top_diff[i];
  }
}
