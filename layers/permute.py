"""Caffe-SSD's ``Permute``: reorders the axes of a blob.

``permute_param { order: ... }`` lists the new order of the axes, each axis
at most once; axes not listed follow in their own order (Caffe-SSD's rule),
so SSD's ``order: 0 order: 2 order: 3 order: 1`` turns (N, C, H, W) into
(N, H, W, C). Backward applies the inverse permutation to the top's diff.

The CPU path is NumPy's transpose; the GPU path is the gather of
``layers/cuda/permute.cu`` (one thread per top element, any number of
axes), whose backward scatters each top diff back to its bottom element.
"""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch


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
        self.index_shape = None  # the bottom shape the kernel's index arrays describe
        self.top_shape = self.bottom_strides = None


    def reshape(self, bottoms, tops):
        shape = tuple(bottoms[0].shape)
        self.order = full_order(self, self.requested, len(shape))
        self.inverse = list(np.argsort(self.order))
        tops[0].reshape(tuple(shape[a] for a in self.order))
        if self.index_shape != shape:
            self._index_arrays(shape)

    def _index_arrays(self, shape):
        """The kernel's per-top-axis top extents and bottom strides (in
        elements), on the layer's device; rebuilt only when the shape changes."""
        strides = [1] * len(shape)
        for axis in range(len(shape) - 2, -1, -1):
            strides[axis] = strides[axis + 1] * int(shape[axis + 1])
        xp = self.device.xp
        self.top_shape = xp.asarray(np.array([shape[a] for a in self.order], dtype=np.int64))
        self.bottom_strides = xp.asarray(np.array([strides[a] for a in self.order],
                                                  dtype=np.int64))
        self.index_shape = shape

    def forward_cpu(self, bottoms, tops):
        tops[0].data[...] = bottoms[0].data.transpose(self.order)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            bottoms[0].diff[...] = tops[0].diff.transpose(self.inverse)

    def _kernel_geometry(self, top):
        return (np.int64(top.size), np.int32(len(self.order)), self.top_shape,
                self.bottom_strides)

    def forward_gpu(self, bottoms, tops):
        top = tops[0].data
        launch("permute.cu", "permute_forward", top.dtype, top.size,
               self._kernel_geometry(top) + (bottoms[0].data, top))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            diff = tops[0].diff
            launch("permute.cu", "permute_backward", diff.dtype, diff.size,
                   self._kernel_geometry(diff) + (diff, bottoms[0].diff))
