// Greedy non-maximum suppression with 64-bit suppression masks (the design of
// py-faster-rcnn's GPU NMS), written without shared memory so that the host
// shim can run it too. Boxes are sorted by decreasing score before the call.
//
//   nms_mask:  one thread per (box i, column block c of 64 boxes); word
//              mask[i * col_blocks + c] has bit k set when box j = 64 c + k,
//              j > i, overlaps box i with IoU > thresh.
//   nms_sweep: one thread walks the boxes in order, keeping a box unless a
//              kept box's mask has its bit, and stops after max_out boxes.
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

// removed: col_blocks zeroed words; keep: n slots; num_kept: 1 slot.
// Launched over one work item: a single thread does the sweep, which is a
// chain of dependent decisions; it reads one mask row per kept box.
KERNEL void FN(nms_sweep)(const long long n, const int col_blocks,
                          const unsigned long long* mask,
                          unsigned long long* removed, long long* keep,
                          long long* num_kept, const long long max_out) {
  CUDA_KERNEL_LOOP(unused, 1) {
    long long count = 0;
    for (int c = 0; c < col_blocks && count < max_out; ++c) {
      unsigned long long current = removed[c];
      const long long end = min((long long)(c + 1) * 64, n);
      for (long long i = (long long)c * 64; i < end; ++i) {
        if ((current >> (i - (long long)c * 64)) & 1ULL) continue;
        keep[count++] = i;
        if (count >= max_out) break;
        const unsigned long long* row = mask + i * col_blocks;
        current |= row[c];
        for (int d = c + 1; d < col_blocks; ++d) removed[d] |= row[d];
      }
    }
    num_kept[0] = count;
  }
}
