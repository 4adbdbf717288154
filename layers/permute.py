"""Caffe-SSD's ``Permute``: reorders the axes of a blob.

``permute_param { order: ... }`` lists the new order of the axes, each axis
at most once; axes not listed follow in their own order (Caffe-SSD's rule),
so SSD's ``order: 0 order: 2 order: 3 order: 1`` turns (N, C, H, W) into
(N, H, W, C). Backward applies the inverse permutation to the top's diff.

The math is a transpose and a copy, the same on both devices, so the GPU
path is the CPU path run on CuPy arrays (``xp``), no kernel of its own.
"""
import numpy as np

from layers.base import Layer, register


def full_order(layer, order, num_axes):
    """``order`` completed with the unlisted axes in their order; a
    definition error names the layer when an entry repeats or is out of range."""
    order = [int(a) for a in order]
    for axis in order:
        if axis >= num_axes:
            raise layer.definition_error(
                f"permute_param.order {order} names axis {axis}, but bottom "
                f"'{layer.bottom_name(0)}' has {num_axes} axes")
    if len(set(order)) != len(order):
        raise layer.definition_error(
            f"permute_param.order {order} repeats an axis; each axis may appear once")
    return order + [a for a in range(num_axes) if a not in order]


@register("Permute")
class PermuteLayer(Layer):
    """bottom: any shape (D0, ..., Dk); top: the axes in ``order``.
    Not in place (the top has another shape)."""

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        if tops[0] is bottoms[0] or self.top_name(0) in self.param.bottom:
            raise self.definition_error(
                f"top '{self.top_name(0)}' is also the bottom; Permute does not work in place")
        self.requested = list(self.param.permute_param.order)

    def reshape(self, bottoms, tops):
        shape = tuple(bottoms[0].shape)
        self.order = full_order(self, self.requested, len(shape))
        self.inverse = list(np.argsort(self.order))
        tops[0].reshape(tuple(shape[a] for a in self.order))

    def forward_cpu(self, bottoms, tops):
        tops[0].data[...] = bottoms[0].data.transpose(self.order)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            bottoms[0].diff[...] = tops[0].diff.transpose(self.inverse)

    # The same array operations run on CuPy arrays.
    forward_gpu = forward_cpu
    backward_gpu = backward_cpu
