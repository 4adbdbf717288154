// Backward passes of the tensor utility layers (layers/tile.py,
// layers/embed.py, layers/indexing.py). Their forwards are gathers and
// copies written with the array module.
//
// Indices arrive as the reals the bottoms hold (Caffe's convention) and are
// truncated to integers here; the host has checked that they are in range.
#include "common.cuh"

// Tile: dx (outer, inner) is the sum over the `tiles` copies of dy
// (outer, tiles, inner). One thread per bottom element, summing in copy
// order.
KERNEL void FN(tile_backward)(const long long n, const real* dy, real* dx,
                              const long long inner, const int tiles) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long outer = i / inner;
    const long long j = i % inner;
    const real* copy = dy + outer * tiles * inner + j;
    real sum = 0;
    for (int t = 0; t < tiles; ++t) {
      sum += copy[(long long)t * inner];
    }
    dx[i] = sum;
  }
}

// Row scatter-add, the backward of a row gather: row index[m] of dst
// (rows, inner) takes row m of src (M, inner). Rows may repeat, hence
// atomicAdd; dst keeps what it held (the caller zeroes it where the diff
// is overwritten). One thread per element of src. Embed's weight gradient
// (rows = input_dim, inner = num_output) and BatchReindex's data gradient
// (rows = items, inner = the item size).
KERNEL void FN(scatter_add_rows)(const long long n, const real* index, const real* src,
                                 real* dst, const long long inner) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long row = (long long)index[i / inner];
    atomicAdd(dst + row * inner + i % inner, src[i]);
  }
}
