"""Smooth L1 box-regression losses: SmoothL1Loss (py-faster-rcnn) and
SmoothL1LossOHEM (the Caffe fork py-R-FCN trains with).

For prediction x, target t, inside weights w_in and outside weights w_out
(DESIGN.md section 4)::

    d = w_in * (x - t)
    f(d) = 0.5 * s^2 * d^2     if |d| < 1 / s^2
           |d| - 0.5 / s^2     otherwise
    loss = sum(w_out * f(d)) / normalizer

with s = ``smooth_l1_loss_param.sigma`` (default 1; py-faster-rcnn's RPN
uses 3). Absent weights are 1.

Shapes: targets and weights must match the prediction in Caffe's legacy
4-axis view (``layers.softmax.legacy_shape``): ``(R, 8)`` fits
``(R, 8, 1, 1)``, as it does in Caffe, whose checks compare num, channels,
height and width.
"""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch
from layers.softmax import contiguous, legacy_shape, loss_normalizer, read_normalization, work_buffer
from netdef.device import array_module

_BOTTOM_ROLES = ("pred", "target", "inside_weights", "outside_weights")


@register("SmoothL1Loss")
class SmoothL1LossLayer(Layer):
    """py-faster-rcnn's smooth L1 loss, normalized by the batch size N =
    pred.shape[0] (at least 1).

    bottoms: pred ``(N, ...)``, target, and optionally inside_weights and
    outside_weights (2 or 4 bottoms: weights come as a pair, as in
    py-faster-rcnn), all of pred's shape (legacy view).
    top: the loss, shape ``()``.

    Backward: d pred = ``w_in * w_out * f'(d) * loss_weight / N`` with
    f'(d) = s^2 d inside the quadratic zone and sign(d) outside; d target is
    its negative (given when asked for, as the fork does). Weights take no
    gradient. The derivative is exact where f is smooth; at |d| = 1/s^2 it
    takes the outer branch.
    """

    min_bottoms = 2
    max_bottoms = 4
    exact_tops = 1
    is_loss = True

    def layer_setup(self, bottoms, tops):
        sigma = float(self.param.smooth_l1_loss_param.sigma)
        if not sigma > 0:
            raise self.definition_error(f"smooth_l1_loss_param.sigma must be > 0, found {sigma:g}")
        self.sigma2 = sigma * sigma
        self.has_inside, self.has_outside = self._weight_layout(len(bottoms))
        # Work arrays, sized in reshape.
        self.errors = self.slope = None

    def _weight_layout(self, n):
        """(has inside weights, has outside weights) for n bottoms."""
        if n == 3:
            raise self.definition_error(
                "takes 2 bottoms (pred, target) or 4 (pred, target, inside_weights, "
                "outside_weights), found 3: give both weights or neither")
        return n == 4, n == 4

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2

    def reshape(self, bottoms, tops):
        pred = bottoms[0].shape
        if len(pred) == 0:
            raise self.shape_error(0, "at least one axis (the batch)", pred)
        want = legacy_shape(pred)
        for i in range(1, len(bottoms)):
            if legacy_shape(bottoms[i].shape) != want:
                raise self.shape_error(
                    i, f"the shape of '{self.bottom_name(0)}' {tuple(pred)} for the "
                    f"{_BOTTOM_ROLES[i]} (compared as N, C, H, W)", bottoms[i].shape)
        xp, dtype = array_module(bottoms[0].data), bottoms[0].data.dtype
        # Per element: the weighted loss, and its derivative with respect to pred.
        self.errors = work_buffer(self.errors, xp, pred, dtype)
        self.slope = work_buffer(self.slope, xp, pred, dtype)
        tops[0].reshape(())

    def _normalizer(self, bottoms):
        return max(float(bottoms[0].shape[0]), 1.0)

    # -- inputs shaped like pred ---------------------------------------------------
    def _inputs(self, bottoms):
        shape = bottoms[0].shape
        arrays = [contiguous(b.data).reshape(shape) for b in bottoms]
        x, t = arrays[0], arrays[1]
        w_in = arrays[2] if self.has_inside else None
        w_out = arrays[3] if self.has_outside else None
        return x, t, w_in, w_out

    # -- forward ----------------------------------------------------------------------
    def forward_cpu(self, bottoms, tops):
        x, t, w_in, w_out = self._inputs(bottoms)
        real = x.dtype.type
        sigma2 = real(self.sigma2)
        d = x - t
        if w_in is not None:
            d = d * w_in
        ad = np.abs(d)
        quadratic = ad < real(1) / sigma2
        f = np.where(quadratic, real(0.5) * sigma2 * d * d, ad - real(0.5) / sigma2)
        g = np.where(quadratic, sigma2 * d, np.where(d > 0, real(1), real(-1)))
        if w_in is not None:
            g = g * w_in
        if w_out is not None:
            f = f * w_out
            g = g * w_out
        self.errors[...] = f
        self.slope[...] = g
        self._finish_forward(bottoms, tops)

    def forward_gpu(self, bottoms, tops):
        x, t, w_in, w_out = self._inputs(bottoms)
        real = x.dtype.type
        launch("smooth_l1.cu", "smooth_l1_forward", x.dtype, x.size,
               (np.int64(x.size), x, t,
                np.int32(w_in is not None), x if w_in is None else w_in,
                np.int32(w_out is not None), x if w_out is None else w_out,
                real(self.sigma2), self.errors, self.slope))
        self._finish_forward(bottoms, tops)

    def _finish_forward(self, bottoms, tops):
        tops[0].data[...] = self.errors.sum() / self._normalizer(bottoms)

    # -- backward (the same array math on both devices) ---------------------------
    def backward_cpu(self, tops, propagate_down, bottoms):
        scale = tops[0].diff / self._normalizer(bottoms)
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                grad = self.slope * (scale * sign)
                bottoms[i].diff[...] = grad.reshape(bottoms[i].shape)

    backward_gpu = backward_cpu


@register("SmoothL1LossOHEM")
class SmoothL1LossOHEMLayer(SmoothL1LossLayer):
    """The smooth L1 loss of the Caffe fork py-R-FCN trains with, plus a
    per-RoI loss top for OHEM.

    bottoms: pred ``(N, C, ...)``, target, optionally inside weights (the
    fork's third bottom, e.g. ``bbox_loss_weights_ohem``) and optionally
    outside weights (a fourth bottom, which the fork does not have).
    tops: the loss ``()``; optionally the per-RoI loss ``(N, 1, H, W)``
    (legacy view of pred): the sum over the C coordinates of w_out * f(d)
    at each (n, h, w), before normalization.

    ``loss_param.normalization`` as the fork defines it: FULL and VALID both
    divide by N x H x W (nothing is ignored here), BATCH_SIZE by N,
    PRE_FIXED by ``loss_param.pre_fixed_normalizer`` (py-R-FCN: 128), NONE by
    1; the legacy ``normalize`` is honoured; the normalizer is at least 1.
    ``smooth_l1_loss_param.sigma`` is honoured too (default 1, the fork's
    fixed value).

    Backward as SmoothL1Loss; the per-RoI top carries no gradient (as in the
    fork). The fork's gradient omits the inside weight (equal for 0/1
    weights); this one is exact.
    """

    max_bottoms = 4
    min_tops = 1
    max_tops = 2
    exact_tops = None

    def layer_setup(self, bottoms, tops):
        super().layer_setup(bottoms, tops)
        loss_param = self.param.loss_param
        self.normalization = read_normalization(loss_param)
        self.pre_fixed_normalizer = float(loss_param.pre_fixed_normalizer)

    def _weight_layout(self, n):
        return n >= 3, n == 4

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        if len(tops) >= 2:
            tops[1].reshape(self._per_roi_shape(bottoms[0].shape))

    @staticmethod
    def _per_roi_shape(shape):
        legacy = legacy_shape(shape)
        return (legacy[0], 1) + legacy[2:]

    def _normalizer(self, bottoms):
        legacy = legacy_shape(bottoms[0].shape)
        num = legacy[0]
        inner = int(np.prod(legacy[2:], dtype=np.int64))
        return loss_normalizer(self.normalization, full=num * inner, batch=num,
                               pre_fixed=self.pre_fixed_normalizer)

    def _finish_forward(self, bottoms, tops):
        super()._finish_forward(bottoms, tops)
        if len(tops) >= 2:
            legacy = legacy_shape(bottoms[0].shape)
            inner = int(np.prod(legacy[2:], dtype=np.int64))
            per_coordinate = self.errors.reshape(legacy[0], legacy[1], inner)
            tops[1].data[...] = per_coordinate.sum(axis=1).reshape(tops[1].shape)
