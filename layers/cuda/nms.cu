// Greedy non-maximum suppression with 64-bit suppression masks (the design of
// py-faster-rcnn's GPU NMS), written without shared memory so that the host
// shim can run it too. Boxes are sorted by decreasing score before the call.
//
//   nms_mask:  one thread per (box i, column block c of 64 boxes); word
//              mask[i * col_blocks + c] has bit k set when box j = 64 c + k,
//              j > i, overlaps box i with IoU > thresh.
//   nms_sweep: one block of threads walks the boxes in order, keeping a box
//              unless a kept box's mask has its bit, and stops after max_out
//              boxes (see below; runs on the host shim as one thread).
//
// The IoU uses exactly the operations of layers.boxes.bbox_overlaps in the
// same order; the products go through mul_rn so that the GPU compiler cannot
// fuse them with the following addition (an FMA rounds once where NumPy
// rounds twice), which keeps the threshold decisions of both paths identical.
#include "common.cuh"

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#ifdef REAL_IS_DOUBLE
DEVICE real mul_rn(real a, real b) { return __dmul_rn(a, b); }
#else
DEVICE real mul_rn(real a, real b) { return __fmul_rn(a, b); }
#endif
#else
DEVICE real mul_rn(real a, real b) { return a * b; }
#endif

DEVICE real box_area(const real* b) {
  return mul_rn(b[2] - b[0] + (real)1, b[3] - b[1] + (real)1);
}

DEVICE real box_iou(const real* a, const real area_a, const real* b) {
  const real iw = min(a[2], b[2]) - max(a[0], b[0]) + (real)1;
  const real ih = min(a[3], b[3]) - max(a[1], b[1]) + (real)1;
  const real inter = mul_rn(max(iw, (real)0), max(ih, (real)0));
  if (!(inter > (real)0)) return (real)0;
  return inter / (area_a + box_area(b) - inter);
}

KERNEL void FN(nms_mask)(const long long n, const int col_blocks,
                         const real* boxes, const real thresh,
                         unsigned long long* mask) {
  CUDA_KERNEL_LOOP(index, n * col_blocks) {
    const long long i = index / col_blocks;
    const long long block_start = (index % col_blocks) * 64;
    const long long end = min(block_start + 64, n);
    const real* a = boxes + 4 * i;
    const real area_a = box_area(a);
    unsigned long long bits = 0;
    for (long long j = max(block_start, i + 1); j < end; ++j) {
      if (box_iou(a, area_a, boxes + 4 * j) > thresh) {
        bits |= 1ULL << (j - block_start);
      }
    }
    mask[index] = bits;
  }
}

// Host shim: the sweep's block of threads is a single thread, which runs
// every thread-strided loop in full; the barriers have nothing to wait for.
// (The GPU build uses the real threadIdx / blockDim / __syncthreads.)
#if !(defined(__CUDACC_RTC__) || defined(__CUDACC__))
namespace {
struct HostDim { unsigned x; };
const HostDim threadIdx = {0};
const HostDim blockDim = {1};
}
static inline void __syncthreads() {}
#endif

// Launched as ONE block of threads (n = THREADS_PER_BLOCK work items).
// removed: col_blocks zeroed words; keep: n slots; num_kept: 1 slot.
// Column block by column block: thread 0 walks the block's 64 boxes (a chain
// of dependent decisions, one mask word read per kept box); after a barrier,
// the threads OR the mask rows of the boxes just kept into the later words
// of `removed`, one word per thread. Shared memory is not needed: the
// barrier makes the block's global writes visible to all its threads.
KERNEL void FN(nms_sweep)(const long long n, const int col_blocks,
                          const unsigned long long* mask,
                          unsigned long long* removed, long long* keep,
                          long long* num_kept, const long long max_out) {
  long long before = 0;  // boxes kept in earlier column blocks
  for (int c = 0; c < col_blocks; ++c) {
    if (threadIdx.x == 0) {
      long long count = before;
      unsigned long long current = removed[c];
      const long long first = (long long)c * 64;
      const long long end = min(first + 64, n);
      for (long long i = first; i < end && count < max_out; ++i) {
        if ((current >> (i - first)) & 1ULL) continue;
        keep[count++] = i;
        current |= mask[i * col_blocks + c];
      }
      num_kept[0] = count;
    }
    __syncthreads();
    const long long after = num_kept[0];
    if (after >= max_out) break;
    for (long long d = c + 1 + (long long)threadIdx.x; d < col_blocks; d += blockDim.x) {
      unsigned long long bits = 0;
      for (long long k = before; k < after; ++k) bits |= mask[keep[k] * col_blocks + d];
      removed[d] |= bits;
    }
    before = after;
    __syncthreads();
  }
}
