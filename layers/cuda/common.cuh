// Shared header of every kernel file in layers/cuda/.
//
// The same source compiles three ways:
//   * by NVRTC (CuPy's RawModule at run time, and the compile test in CI),
//   * by nvcc,
//   * as plain host C++ (the "shim" used by the test suite to run kernels on
//     a machine without a GPU): the grid-stride loop becomes a serial loop and
//     atomicAdd becomes +=, which is exact when a single thread runs.
//
// Element type: `real` is float, or double when REAL_IS_DOUBLE is defined
// (the loader compiles each file once per dtype). Entry points are declared
// `KERNEL void FN(name)(...)`, which exports `name_f32` or `name_f64`.
// Counts and indices are `long long` (pass numpy.int64), small integer
// parameters `int` (pass numpy.int32), reals `real` (pass the array dtype).

#ifdef REAL_IS_DOUBLE
typedef double real;
#define FN(name) name##_f64
#else
typedef float real;
#define FN(name) name##_f32
#endif

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)

#define KERNEL extern "C" __global__
#define DEVICE __device__ __forceinline__
#define CUDA_KERNEL_LOOP(i, n)                                               \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;      \
       i < (n); i += (long long)blockDim.x * gridDim.x)

#else  // host shim

#include <math.h>
#include <algorithm>
using std::max;
using std::min;

#define KERNEL extern "C"
#define DEVICE static inline
#define CUDA_KERNEL_LOOP(i, n) for (long long i = 0; i < (n); ++i)

template <typename T>
static inline T atomicAdd(T* address, T value) {
  T old = *address;
  *address = old + value;
  return old;
}

#endif

// A product that is never fused with a following add into an FMA (NVRTC
// contracts a * b + c by default), so that values later floored or ceiled
// (bin bounds, sample positions) equal the NumPy path's, which rounds the
// product and the sum separately. The host shim builds with -std=c++14,
// which does not contract either.
#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#ifdef REAL_IS_DOUBLE
#define MUL_RN(a, b) __dmul_rn((a), (b))
#else
#define MUL_RN(a, b) __fmul_rn((a), (b))
#endif
#else
#define MUL_RN(a, b) ((a) * (b))
#endif

// CUDA's round() and C's round() both take halves away from zero; the NumPy
// paths use layers.roi_pooling.round_half_away, with the same rule.

// Element `index` of a C-contiguous stack of (rows, cols) planes: which
// plane, row and column. Every kernel that runs one thread per element of
// an (..., rows, cols) array starts with this.
struct PlanePos {
  long long plane;
  int row, col;
};

DEVICE PlanePos plane_pos(const long long index, const int rows, const int cols) {
  PlanePos p;
  p.col = (int)(index % cols);
  p.row = (int)((index / cols) % rows);
  p.plane = index / cols / rows;
  return p;
}

// Top element `index` of an RoI layer's output (R, C, pooled_h, pooled_w):
// RoI r, channel c, bin (ph, pw). Shared by ROIPooling, PSROIPooling,
// ROIAlign and PSROIAlign, whose tops all have this layout.
struct RoiBin {
  long long r;
  int c, ph, pw;
};

DEVICE RoiBin roi_bin(const long long index, const int channels, const int pooled_h,
                      const int pooled_w) {
  const PlanePos p = plane_pos(index, pooled_h, pooled_w);
  RoiBin t;
  t.pw = p.col;
  t.ph = p.row;
  t.c = (int)(p.plane % channels);
  t.r = p.plane / channels;
  return t;
}

// Input channel of bin (ph, pw) of class c in the position-sensitive layers
// (PSROIPooling, PSROIAlign): the k x k score maps of a class are adjacent.
DEVICE int ps_channel(const RoiBin& t, const int k) { return (t.c * k + t.ph) * k + t.pw; }

// Offset of the (height, width) input plane `channel` of the image that RoI
// t.r belongs to; rois is (R, 5) [batch_index, x1, y1, x2, y2].
DEVICE long long roi_plane(const real* rois, const RoiBin& t, const int channel,
                           const int channels, const int height, const int width) {
  const long long b = (long long)rois[t.r * 5];  // checked to lie in [0, N) by the host
  return (b * channels + channel) * height * width;
}
