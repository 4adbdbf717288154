"""Reduction: a sum (of values, absolute values or squares) or a mean over
all axes from one axis on.

Row sums and element-wise products, the same on both devices, so written
once with the array module of the bottom.
"""
import numpy as np

from layers.base import Layer, register
from layers.shape_ops import canonical_axis
from netdef.device import array_module


@register("Reduction")
class ReductionLayer(Layer):
    """Caffe's Reduction.

    reduction_param: operation (SUM, ASUM, SUMSQ, MEAN; default SUM), axis
    (0; negative counts from the end), coeff (1). The bottom is read as
    ``(num, dim)``: ``num`` the product of the dims before ``axis``, ``dim``
    the rest. top: the bottom's dims before ``axis`` (shape ``()`` for axis
    0), each ``coeff *`` the row's sum of x, |x| or x^2, or its mean.
    Backward: ``coeff * dy`` times 1 (SUM), 1/dim (MEAN), sign(x) (ASUM,
    0 at 0) or 2x (SUMSQ).
    """

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.reduction_param
        self.operation = p.ReductionOp.Name(p.operation)

    def reshape(self, bottoms, tops):
        p = self.param.reduction_param
        shape = bottoms[0].shape
        axis = canonical_axis(self, int(p.axis), shape, field="reduction_param.axis")
        self.num = int(np.prod(shape[:axis]))
        self.dim = int(np.prod(shape[axis:]))
        coeff = self.dtype.type(p.coeff)
        if self.operation == "MEAN":
            # The mean of no values is NaN, as Caffe's 0 * (coeff / 0).
            coeff = coeff / self.dtype.type(self.dim) if self.dim else self.dtype.type(np.nan)
        self.coeff = coeff
        tops[0].reshape(shape[:axis])

    def forward_cpu(self, bottoms, tops):
        xp = array_module(bottoms[0].data)
        rows = bottoms[0].data.reshape(self.num, self.dim)
        if self.operation == "ASUM":
            rows = xp.abs(rows)
        elif self.operation == "SUMSQ":
            rows = rows * rows
        tops[0].data.reshape(self.num)[...] = rows.sum(axis=1) * self.coeff

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        xp = array_module(bottoms[0].data)
        scale = tops[0].diff.reshape(self.num, 1) * self.coeff
        rows = bottoms[0].data.reshape(self.num, self.dim)
        diff = bottoms[0].diff.reshape(self.num, self.dim)
        if self.operation == "ASUM":
            diff[...] = xp.sign(rows) * scale
        elif self.operation == "SUMSQ":
            diff[...] = 2 * scale * rows
        else:
            diff[...] = scale

    forward_gpu = forward_cpu
    backward_gpu = backward_cpu
