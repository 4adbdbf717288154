"""ArgMax: the indices (and optionally the values) of the top_k largest
entries, over all of an item's values or along one axis.

The selection is a sort, the same on both devices, so it is written once
with the array module of the bottom.
"""
import numpy as np

from layers.base import NoGradientLayer, register
from layers.shape_ops import canonical_axis
from netdef.device import array_module, is_gpu_array


def top_k_rows(values, k):
    """The ``k`` largest entries of each row of ``values`` ``(R, D)``,
    largest first: ``(indices, values)``, each ``(R, k)``.

    Order as Caffe's (value, index) pairs sorted descending: of equal
    values the one with the higher index comes first.
    """
    xp = array_module(values)
    dim = values.shape[1]
    # A stable ascending sort of the negated, reversed rows keeps equal
    # values in reversed order, i.e. higher original index first.
    key = -values[:, ::-1]
    order = key.argsort(axis=1) if is_gpu_array(key) else np.argsort(key, axis=1, kind="stable")
    indices = dim - 1 - order[:, :k]
    return indices, xp.take_along_axis(values, indices, axis=1)


@register("ArgMax")
class ArgMaxLayer(NoGradientLayer):
    """Caffe's ArgMax.

    argmax_param: top_k (1), out_max_val (false), axis (unset).
    Without ``axis``: each item's values (all axes after the first) are
    flattened to D; the top is ``(N, 1, top_k, 1, ...)`` with the indices,
    or ``(N, 2, top_k, 1, ...)`` with the indices in channel 0 and the
    values in channel 1 when ``out_max_val``; it has the bottom's number of
    axes, at least 3. With ``axis``: the top is the bottom's shape with
    ``top_k`` along ``axis``, holding the indices, or the values when
    ``out_max_val``. Indices are stored as floats in the top's dtype. Of
    equal values the higher index ranks first. No gradient.
    """

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.argmax_param
        self.top_k = int(p.top_k)
        self.out_max_val = bool(p.out_max_val)
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise self.definition_error(f"argmax_param.top_k must be >= 1, found {self.top_k}")

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        if self.has_axis:
            axis = canonical_axis(self, int(self.param.argmax_param.axis), shape,
                                  field="argmax_param.axis")
            where = f"along axis {axis}"
            top_shape = shape[:axis] + (self.top_k,) + shape[axis + 1:]
        else:
            if len(shape) < 1:
                raise self.shape_error(0, "at least 1 axis (items along axis 0)", shape)
            # One line per item, over all of its values.
            axis = 1
            shape = (shape[0], int(np.prod(shape[1:])))
            where = "per item (all axes after the first)"
            top_shape = [1] * max(len(bottoms[0].shape), 3)
            top_shape[0], top_shape[1], top_shape[2] = shape[0], 1 + self.out_max_val, self.top_k
        # The bottom read as (outer, dim, inner): a line of dim values per
        # (outer, inner) pair.
        self.lines = (int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1:])))
        if self.top_k > self.lines[1]:
            raise self.shape_error(0, f"at least top_k = {self.top_k} values {where}",
                                   bottoms[0].shape)
        tops[0].reshape(tuple(top_shape))

    def forward_cpu(self, bottoms, tops):
        outer, dim, inner = self.lines
        k, top = self.top_k, tops[0].data
        lines = bottoms[0].data.reshape(outer, dim, inner).swapaxes(1, 2).reshape(-1, dim)
        indices, values = top_k_rows(lines, k)
        if self.has_axis:
            result = values if self.out_max_val else indices
            top.reshape(outer, k, inner)[...] = result.reshape(outer, inner, k).swapaxes(1, 2)
            return
        rows = top.reshape(outer, 1 + self.out_max_val, k)
        rows[:, 0] = indices
        if self.out_max_val:
            rows[:, 1] = values

    forward_gpu = forward_cpu
