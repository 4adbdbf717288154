"""Greedy non-maximum suppression (NMS), on the CPU and on the GPU.

``nms(boxes, scores, thresh)`` returns the indices of the boxes kept by the
exact greedy rule of py-faster-rcnn: visit boxes by decreasing score, keep a
box unless a box kept before it overlaps it with IoU strictly greater than
``thresh``. Ties in score are visited in index order (a stable sort), so the
result is fully determined by the inputs; identical boxes suppress each other
(IoU 1) unless ``thresh >= 1``. IoU is ``layers.boxes.bbox_overlaps``'s, in
the boxes' dtype.

Both paths compute the same IoU with the same floating-point operations, so
they keep exactly the same boxes:

- NumPy (``numpy`` arrays): the sorted boxes are visited in blocks of
  ``BLOCK`` boxes. Inside a block, the pairwise IoU matrix of its surviving
  boxes is computed at once and the greedy sweep is a loop over the *kept*
  boxes only (each step jumps to the next unsuppressed box). Between blocks,
  with ``max_output``, a block's boxes are tested against every box kept so
  far in one vectorized step, so no work is done past the limit; without a
  limit, a block's kept boxes suppress all later surviving boxes in one step
  instead, so suppressed boxes drop out early. Python loops: one per block
  and one per kept box, never one per box.
- CUDA (``cupy`` arrays): the bitmask design of py-faster-rcnn's GPU NMS,
  written without shared memory (layers/cuda/nms.cu): ``nms_mask`` runs one
  thread per (box i, column block of 64 boxes) and writes a 64-bit word whose
  bit k says that box ``64 * block + k`` (later than i) has IoU > thresh with
  box i; ``nms_sweep`` (one block of threads) walks the boxes greedily, one
  column block at a time: one thread decides the block's boxes, then all
  threads OR the kept boxes' mask rows into the later words. Only the kept
  indices come back to the host. The mask takes ``8 * N * ceil(N / 64)``
  bytes (18 MB for 12000 boxes).
  The same kernels run with NumPy arrays through the host shim
  (``nms(..., use_kernel=True)``), which is how the tests check them without
  a GPU.
"""
import numpy as np

from layers.boxes import bbox_overlaps, stable_argsort
from layers.kernels import THREADS_PER_BLOCK, launch
from netdef.device import array_module, is_gpu_array

BLOCK = 256
_WORD = 64


def nms(boxes, scores, thresh, max_output=None, use_kernel=None):
    """Greedy NMS of ``boxes`` ``(N, 4)`` with ``scores`` ``(N,)``.

    thresh: a box is suppressed by a kept box when their IoU is > thresh.
    max_output: stop after this many kept boxes (None or <= 0: no limit);
        the result equals the first ``max_output`` of the unlimited one.
    use_kernel: run the CUDA kernels (default: exactly when the arrays are
        CuPy arrays; True with NumPy arrays runs them through the host shim).
    Returns int64 indices into ``boxes`` ``(K,)``, highest score first, on the
    boxes' device.
    """
    order = stable_argsort(-scores.reshape(-1))
    keep = nms_sorted(boxes[order], thresh, max_output, use_kernel)
    return order[keep]


def nms_sorted(boxes, thresh, max_output=None, use_kernel=None):
    """Greedy NMS of boxes ``(N, 4)`` already sorted by decreasing score.

    Returns int64 positions ``(K,)`` into ``boxes``, increasing. See ``nms``.
    """
    xp = array_module(boxes)
    n = int(boxes.shape[0])
    limit = n if max_output is None or max_output <= 0 else min(int(max_output), n)
    if n == 0 or limit == 0:
        return xp.zeros(0, dtype=np.int64)
    boxes = xp.ascontiguousarray(boxes)
    thresh = boxes.dtype.type(thresh)
    if use_kernel is None:
        use_kernel = is_gpu_array(boxes)
    if use_kernel:
        return _nms_kernels(boxes, thresh, limit, xp)
    return _nms_numpy(boxes, thresh, limit)


def _nms_numpy(boxes, thresh, limit):
    n = boxes.shape[0]
    # Every (kept box, later box) pair must be compared unless the later box
    # is already suppressed. With a limit, compare each block only with the
    # boxes kept before it ("lazy": no work past the limit); without one,
    # let each block's kept boxes suppress all later surviving boxes at once
    # ("eager": suppressed boxes drop out early). Same result either way.
    eager = limit == n
    alive = np.ones(n, dtype=bool)
    kept_boxes = np.empty((limit, 4), dtype=boxes.dtype)
    kept = []
    total = 0
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        block = boxes[start:stop]
        if eager:
            cand = np.flatnonzero(alive[start:stop])
        elif total:
            cand = np.flatnonzero(~(bbox_overlaps(kept_boxes[:total], block) > thresh).any(axis=0))
        else:
            cand = np.arange(stop - start)
        if cand.size == 0:
            continue
        block_kept = _greedy_in_block(block[cand], thresh, limit - total)
        block_kept = cand[block_kept]
        kept_boxes[total:total + block_kept.size] = block[block_kept]
        kept.append(start + block_kept)
        total += block_kept.size
        if total == limit:
            break
        if eager:
            later = stop + np.flatnonzero(alive[stop:])
            if later.size:
                hit = (bbox_overlaps(block[block_kept], boxes[later]) > thresh).any(axis=0)
                alive[later[hit]] = False
    return np.concatenate(kept).astype(np.int64, copy=False)


def _greedy_in_block(boxes, thresh, limit):
    """Greedy NMS of a few sorted boxes, none suppressed from outside yet:
    positions kept (at most ``limit``). Loops once per kept box."""
    over = bbox_overlaps(boxes, boxes) > thresh
    alive = np.ones(boxes.shape[0], dtype=bool)
    chosen = []
    i = 0
    while True:
        chosen.append(i)
        if len(chosen) == limit:
            break
        alive[i + 1:] &= ~over[i, i + 1:]
        rest = np.flatnonzero(alive[i + 1:])
        if rest.size == 0:
            break
        i += 1 + int(rest[0])
    return np.array(chosen, dtype=np.int64)


def _nms_kernels(boxes, thresh, limit, xp):
    n = boxes.shape[0]
    col_blocks = (n + _WORD - 1) // _WORD
    mask = xp.empty((n, col_blocks), dtype=np.uint64)
    launch("nms.cu", "nms_mask", boxes.dtype, n * col_blocks,
           (np.int64(n), np.int32(col_blocks), boxes, thresh, mask))
    removed = xp.zeros(col_blocks, dtype=np.uint64)
    keep = xp.empty(n, dtype=np.int64)
    count = xp.zeros(1, dtype=np.int64)
    # one block of threads: the sweep synchronizes them with barriers
    launch("nms.cu", "nms_sweep", boxes.dtype, THREADS_PER_BLOCK,
           (np.int64(n), np.int32(col_blocks), mask, removed, keep, count, np.int64(limit)))
    return keep[:int(count[0])]
