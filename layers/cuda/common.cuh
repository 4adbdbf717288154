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
