"""Fused steps of the graph plan: several layers run as one, same results.

The Net's plan (``netdef.plan``) replaces runs of adjacent layers with these
steps when every blob a user can read keeps its Caffe meaning (the chains
work in place, so only the last value of the blob was ever visible):

- ``FoldedConvolution``: Convolution -> frozen BatchNorm / Scale (in place)
  -> ReLU (in place). The per-channel affine ``y = x * a + b`` of the
  frozen layers is folded into the convolution (weights ``a * W``, bias
  ``a * bias + b``), recomputed every pass from the real parameters, so
  training updates ``W`` as if unfolded. Backward turns the top diff into
  the diff of the raw convolution output (``dy * a``, zero where the ReLU
  was off) in place, then runs the convolution's own backward.
- ``FrozenAffine``: frozen BatchNorm / Scale (-> ReLU) in place on a blob
  that no convolution just produced: one pass instead of two or three.
- ``SumReLU``: Eltwise SUM of two bottoms -> ReLU (in place on its top).
- ``SharedSplit``: a Split whose tops are views of its bottom (no copy);
  backward still sums the tops' diffs.

Every step's ``backward(relu_mode="normal")`` takes the ReLU rule of the
call (``layers.neuron.RELU_MODES``), so a visualization mode reaches the
ReLUs fused into a step as it reaches a ReLU layer run by itself.

The element-wise work is written once per device: NumPy in cache-sized
chunks on the CPU, one kernel of ``layers/cuda/fused.cu`` on the GPU.
"""
import concurrent.futures
import os

import numpy as np

from layers.cpu_threads import split_pass
from layers.kernels import launch
from layers.neuron import relu_mode_backward
from netdef.device import array_module, is_gpu_array

# Rows of a (rows, spatial) view processed per NumPy call: about this many
# bytes, so the two or three passes of one fused operation run in L2 cache.
CHUNK_BYTES = 1 << 18
# Arrays of at least this many bytes are split between two threads (NumPy
# releases the GIL in its loops): element-wise passes are bound by one
# core's memory bandwidth, and a second core nearly doubles it (measured
# 1.4-1.6x on the development machine). Smaller arrays, e.g. the tiny
# R-FCN's, stay on one thread, where the hand-off would cost more.
PARALLEL_BYTES = 1 << 22
_THREADS = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)
_executor = None


def _each_chunk(rows, row_bytes, work):
    """Call ``work(slice)`` over [0, rows) in cache-sized slices, on two
    threads (one half each) for large arrays."""
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))

    def run(lo, hi):
        for start in range(lo, hi, step):
            work(slice(start, min(start + step, hi)))

    if _THREADS < 2 or rows * row_bytes < PARALLEL_BYTES or rows < 2 * step:
        run(0, rows)
        return
    global _executor
    if _executor is None:
        _executor = concurrent.futures.ThreadPoolExecutor(_THREADS - 1)
    half = (rows // 2 + step - 1) // step * step
    other = _executor.submit(run, half, rows)
    run(0, half)
    other.result()


def _planes(array):
    """(N * C, S) view of an (N, C, ...) array."""
    return array.reshape(array.shape[0] * array.shape[1], -1)


def _geometry(array):
    spatial = int(np.prod(array.shape[2:], dtype=np.int64))
    return np.int64(array.shape[1]), np.int64(spatial)


def affine_forward(x, a, b, y, relu):
    """y = x * a[c] + b[c] (then max(., 0) when ``relu``) for NCHW ``x``
    and per-channel ``a``, ``b`` (C,); ``y`` may be ``x``."""
    if is_gpu_array(x):
        launch("fused.cu", "affine_forward", x.dtype, x.size,
               (np.int64(x.size), x, a, b, y, *_geometry(x), np.int32(relu)))
        return
    rows_a, rows_b = np.tile(a, x.shape[0])[:, None], np.tile(b, x.shape[0])[:, None]
    x2, y2 = _planes(x), _planes(y)

    def work(r):
        np.multiply(x2[r], rows_a[r], out=y2[r])
        np.add(y2[r], rows_b[r], out=y2[r])
        if relu:
            np.maximum(y2[r], 0, out=y2[r])
    _each_chunk(x2.shape[0], x2[:1].nbytes, work)


def bias_relu(y, b, relu):
    """y += b[c] (then max(., 0) when ``relu``), in place, for NCHW ``y``."""
    if is_gpu_array(y):
        launch("fused.cu", "bias_relu", y.dtype, y.size,
               (np.int64(y.size), y, b, *_geometry(y), np.int32(relu)))
        return
    rows_b = np.tile(b, y.shape[0])[:, None]
    y2 = _planes(y)

    def work(r):
        np.add(y2[r], rows_b[r], out=y2[r])
        if relu:
            np.maximum(y2[r], 0, out=y2[r])
    _each_chunk(y2.shape[0], y2[:1].nbytes, work)


def affine_backward(y, dy, a, dx, relu):
    """dx = dy * a[c], zero where ``y`` (the ReLU's output) is not positive
    when ``relu``; ``a`` None means 1. ``dx`` may be ``dy``."""
    if is_gpu_array(y):
        xp = array_module(y)
        a = xp.ones(y.shape[1], y.dtype) if a is None else a
        launch("fused.cu", "affine_backward", y.dtype, y.size,
               (np.int64(y.size), y, dy, a, dx, *_geometry(y), np.int32(relu)))
        return
    rows_a = None if a is None else np.tile(a, y.shape[0])[:, None]
    in_place = dx is dy
    y2, dy2, dx2 = _planes(y), _planes(dy), _planes(dx)

    def work(r):
        if rows_a is not None:
            np.multiply(dy2[r], rows_a[r], out=dx2[r])
        elif not in_place:
            dx2[r] = dy2[r]
        if relu:
            np.multiply(dx2[r], y2[r] > 0, out=dx2[r])
    _each_chunk(y2.shape[0], y2[:1].nbytes, work)


def sum2_forward(x0, x1, c0, c1, y, relu):
    """y = c0 * x0 + c1 * x1 (then max(., 0) when ``relu``)."""
    if is_gpu_array(x0):
        launch("fused.cu", "sum2_forward", x0.dtype, x0.size,
               (np.int64(x0.size), x0, x1, x0.dtype.type(c0), x0.dtype.type(c1), y,
                np.int32(relu)))
        return
    x0, x1, y = x0.reshape(-1), x1.reshape(-1), y.reshape(-1)

    def work(r):
        if c0 == 1 and c1 == 1:
            np.add(x0[r], x1[r], out=y[r])
        else:
            _scaled(x0[r], c0, y[r])
            y[r] += x1[r] * y.dtype.type(c1)
        if relu:
            np.maximum(y[r], 0, out=y[r])
    _each_chunk(y.size, y.itemsize, work)


def _scaled(x, c, out):
    if c == 1:
        out[...] = x
    else:
        np.multiply(x, out.dtype.type(c), out=out)


def masked_scale(y, dy, coeff, dx, relu):
    """dx = coeff * dy, zero where ``y`` is not positive when ``relu``."""
    if is_gpu_array(y):
        launch("fused.cu", "masked_scale", y.dtype, y.size,
               (np.int64(y.size), y, dy, y.dtype.type(coeff), dx, np.int32(relu)))
        return
    skip_copy = dx is dy and coeff == 1
    y, dy, dx = y.reshape(-1), dy.reshape(-1), dx.reshape(-1)

    def work(r):
        if not skip_copy:
            _scaled(dy[r], coeff, dx[r])
        if relu:
            np.multiply(dx[r], y[r] > 0, out=dx[r])
    _each_chunk(y.size, y.itemsize, work)


def compose_affine(layers):
    """(a, b) of the per-channel affines of ``layers`` (frozen BatchNorm /
    Scale, in order) applied one after the other."""
    a = b = None
    for layer in layers:
        a_k, b_k = layer.frozen_affine()
        a_k, b_k = a_k.reshape(-1), b_k.reshape(-1)
        a, b = (a_k, b_k) if a is None else (a * a_k, b * a_k + b_k)
    return a, b


def _mode_relu(relu, blob, mode):
    """Apply a visualization mode's ReLU rule to ``blob.diff`` in place
    (``blob.data`` holds the ReLU's output). Returns whether Caffe's ReLU
    mask is still to be applied: only in "normal" mode, which keeps the
    fused kernels' one pass."""
    if relu and mode != "normal":
        relu_mode_backward(blob.data, blob.diff, blob.diff, mode)
        return False
    return relu


def _fold(workspace, weight, a, folded):
    """folded (O, ...) = weight * a[o] (on the CPU, large weights split
    between threads by output channel)."""
    xp = array_module(weight)
    if xp is not np:
        xp.multiply(weight, a.reshape(-1, 1, 1, 1), out=folded)
        return

    def fold(_, lo, hi):
        np.multiply(weight[lo:hi], a[lo:hi, None, None, None], out=folded[lo:hi])
    split_pass(workspace, weight.shape[0], fold, weight.size)


class FoldedConvolution:
    """Convolution, its frozen affine layers and ReLU, on the conv's top.

    ``affine`` lists the BatchNorm / Scale layers (may be empty: a
    Convolution + ReLU); ``relu`` says whether a ReLU ends the chain.
    """

    def __init__(self, conv, affine, relu, bottoms, top, propagate_down, need_backward,
                 conv_backward):
        self.conv, self.affine, self.relu = conv, list(affine), relu
        self.bottoms, self.top = bottoms, top
        self.propagate_down, self.need_backward = propagate_down, need_backward
        self.conv_backward = conv_backward  # False: only the chain's diff is wanted
        self.scale = None
        self._checked_shape = None

    def forward(self):
        self.conv.reshape(self.bottoms, [self.top])
        _check_chain(self.affine, self.top, self)
        weight = self.conv.blobs[0].data
        bias = self.conv.blobs[1].data if self.conv.bias_term else None
        if self.affine:
            a, b = compose_affine(self.affine)
            self.scale = a
            # Scratch: the convolution consumes the folded weights at once
            # (a fresh array per pass would page-fault in megabytes).
            folded = self.conv.workspace.array("folded_weight", weight.shape, weight.dtype)
            _fold(self.conv.workspace, weight, a, folded)
            weight = folded
            bias = b if bias is None else bias * a + b
        if is_gpu_array(weight):
            # The bias and the ReLU as one kernel after the GEMMs.
            self.conv.forward_with(self.bottoms, [self.top], weight, None)
            xp = array_module(weight)
            bias_relu(self.top.data, bias if bias is not None else
                      xp.zeros(weight.shape[0], weight.dtype), self.relu)
        else:
            self.conv.forward_with(self.bottoms, [self.top], weight, bias, relu=self.relu)

    def backward(self, relu_mode="normal"):
        if not self.need_backward:
            return
        relu = _mode_relu(self.relu, self.top, relu_mode)
        if self.affine or relu:
            affine_backward(self.top.data, self.top.diff, self.scale if self.affine else None,
                            self.top.diff, relu)
        if self.conv_backward:
            self.conv.backward([self.top], self.propagate_down, self.bottoms)


class FrozenAffine:
    """Frozen BatchNorm / Scale layers (and a ReLU) in place on one blob."""

    def __init__(self, affine, relu, blob, need_backward):
        self.affine, self.relu, self.blob = list(affine), relu, blob
        self.need_backward = need_backward
        self.scale = None
        self._checked_shape = None

    def forward(self):
        _check_chain(self.affine, self.blob, self)
        a, b = compose_affine(self.affine)
        self.scale = a
        affine_forward(self.blob.data, a, b, self.blob.data, self.relu)

    def backward(self, relu_mode="normal"):
        if self.need_backward:
            relu = _mode_relu(self.relu, self.blob, relu_mode)
            affine_backward(self.blob.data, self.blob.diff, self.scale, self.blob.diff, relu)


def _check_chain(layers, blob, step):
    """Run the chain's own shape checks when the blob's shape changes."""
    if blob.shape != step._checked_shape:
        for layer in layers:
            layer.reshape([blob], [blob])
        step._checked_shape = blob.shape


class SumReLU:
    """Eltwise SUM of two bottoms into its top, then an in-place ReLU
    (``relu`` False: the sum alone, for an Eltwise the plan kept)."""

    def __init__(self, eltwise, relu, bottoms, top, propagate_down, need_backward):
        self.eltwise, self.relu = eltwise, relu
        self.bottoms, self.top = bottoms, top
        self.propagate_down, self.need_backward = propagate_down, need_backward

    def forward(self):
        self.eltwise.reshape(self.bottoms, [self.top])
        c0, c1 = self.eltwise.coeffs
        sum2_forward(self.bottoms[0].data, self.bottoms[1].data, c0, c1, self.top.data,
                     self.relu)

    def backward(self, relu_mode="normal"):
        if not self.need_backward:
            return
        top = self.top
        # The top's diff becomes the sum's, as the ReLU leaves it.
        if _mode_relu(self.relu, top, relu_mode):
            masked_scale(top.data, top.diff, 1.0, top.diff, True)
        for bottom, coeff, down in zip(self.bottoms, self.eltwise.coeffs, self.propagate_down):
            if down:
                masked_scale(top.data, top.diff, coeff, bottom.diff, False)


class SharedSplit:
    """Split whose tops share the bottom's data array (no copy)."""

    def __init__(self, split, bottom, tops, propagate_down, need_backward):
        self.split, self.bottom, self.tops = split, bottom, tops
        self.propagate_down, self.need_backward = propagate_down, need_backward

    def forward(self):
        for top in self.tops:
            top.data = self.bottom.data

    def backward(self, relu_mode="normal"):
        """(A Split has no ReLU: ``relu_mode`` changes nothing.)"""
        if not (self.need_backward and self.propagate_down[0]):
            return
        # A top whose consumers ran no backward has a zero diff: skipped.
        diffs = [top.diff for top in self.tops if top.has_diff]
        target = self.bottom.diff
        if not diffs:
            target.fill(0)
            return
        if len(diffs) == 1:
            target[...] = diffs[0]
            return
        xp = array_module(target)
        xp.add(diffs[0], diffs[1], out=target)
        for diff in diffs[2:]:
            target += diff
