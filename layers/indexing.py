"""Layers that pick items along axis 0: Filter (the items a selector marks)
and BatchReindex (the items a list of indices names), and the index check
that BatchReindex and Embed (layers/embed.py) share.

The forwards are gathers, the same on both devices, so written once with
the array module. BatchReindex's backward is a scatter-add whose rows may
repeat: on the GPU the ``scatter_add_rows`` kernel (layers/cuda/tensor_ops.cu).
"""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch
from netdef.device import array_module, to_numpy
from netdef.errors import DataError


def checked_rows(layer, bottom_index, values, rows, integral):
    """``values`` (indices stored as floats, any shape) as int64 row
    indices, truncated toward zero as Caffe casts them.

    Each value must lie in ``[0, rows)`` and, when ``integral``, be a whole
    number; the first that does not raises ``DataError`` naming the layer,
    the bottom, the value and its position. Run where the data is seen
    (forward): the values are data, not shapes.
    """
    xp = array_module(values)
    valid = (values >= 0) & (values < rows)
    if integral:
        valid &= values == xp.floor(values)
    if not bool(valid.all()):
        position = np.unravel_index(int(xp.argmin(valid)), values.shape)
        value = float(to_numpy(values)[position])
        kind = "integers" if integral else "values"
        raise DataError(
            f"{layer.where}: bottom '{layer.bottom_name(bottom_index)}' expected {kind} in "
            f"[0, {rows}), found {value:g} at position {tuple(int(p) for p in position)}")
    return values.astype(np.int64)


def refuse_index_gradient(layer, propagate_down, bottom_index, what):
    """Caffe's rule: asking for the gradient of an index bottom is an error."""
    if propagate_down[bottom_index]:
        raise layer.definition_error(
            f"cannot back-propagate to the {what} bottom "
            f"'{layer.bottom_name(bottom_index)}'; set propagate_down: false for it")


@register("Filter")
class FilterLayer(Layer):
    """Caffe's Filter.

    bottoms: one or more data blobs ``(N, ...)`` then the selector, last,
    ``(N,)`` or ``(N, 1, ...)``. tops: one per data blob, ``(S, ...)``: the
    items whose selector value is non-zero, in order. S changes from one
    forward to the next: ``reshape`` sizes the tops for all N items (the
    most they can hold, which a net's shape report shows) and ``forward``
    resizes them to S. Backward: each selected item's diff comes from its
    top row, the others' are zero. The selector takes no gradient.
    """

    min_bottoms = 2
    min_tops = 1

    def layer_setup(self, bottoms, tops):
        self.selector_index = len(bottoms) - 1
        if len(tops) != self.selector_index:
            raise self.definition_error(
                f"needs one top per data bottom ({len(bottoms) - 1}: every bottom but the "
                f"selector, last), found {len(tops)} top(s)")

    def allow_force_backward(self, bottom_index):
        return bottom_index < self.selector_index

    def reshape(self, bottoms, tops):
        last = self.selector_index
        selector = bottoms[last].shape
        if len(selector) < 1 or any(d != 1 for d in selector[1:]):
            raise self.shape_error(last, "a selector (N,) or (N, 1, ..., 1)", selector)
        for i in range(last):
            if bottoms[i].shape[:1] != selector[:1]:
                raise self.shape_error(
                    i, f"{selector[0]} items along axis 0, as the selector "
                    f"'{self.bottom_name(last)}' has", bottoms[i].shape)
        for bottom, top in zip(bottoms, tops):
            top.reshape(bottom.shape)

    def _selected(self, bottoms):
        xp = array_module(bottoms[-1].data)
        return xp.flatnonzero(bottoms[-1].data.reshape(-1))

    def forward_cpu(self, bottoms, tops):
        chosen = self._selected(bottoms)
        for bottom, top in zip(bottoms, tops):
            top.reshape((chosen.shape[0],) + bottom.shape[1:])
            top.data[...] = bottom.data[chosen]

    def backward_cpu(self, tops, propagate_down, bottoms):
        refuse_index_gradient(self, propagate_down, self.selector_index, "selector")
        chosen = self._selected(bottoms)
        for bottom, top, down in zip(bottoms, tops, propagate_down):
            if down:
                bottom.diff.fill(0)
                bottom.diff[chosen] = top.diff

    forward_gpu = forward_cpu
    backward_gpu = backward_cpu


@register("BatchReindex")
class BatchReindexLayer(Layer):
    """Caffe's BatchReindex.

    bottoms: data ``(N, ...)`` and permut ``(M,)``, item indices stored as
    floats (truncated; each in ``[0, N)``, checked in forward). top:
    ``(M, ...)``, item ``m`` being data item ``permut[m]``. Backward: each
    data item's diff is the sum of the top diffs of the rows that copied it
    (zero if none). permut takes no gradient.
    """

    exact_bottoms = 2
    exact_tops = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottoms, tops):
        data, permut = bottoms[0].shape, bottoms[1].shape
        if len(permut) != 1:
            raise self.shape_error(1, "item indices of shape (M,)", permut)
        if len(data) < 1:
            raise self.shape_error(0, "items along axis 0", data)
        tops[0].reshape(permut + data[1:])

    def forward_cpu(self, bottoms, tops):
        data = bottoms[0].data
        items = checked_rows(self, 1, bottoms[1].data, data.shape[0], integral=False)
        tops[0].data[...] = data[items]

    forward_gpu = forward_cpu

    def backward_cpu(self, tops, propagate_down, bottoms):
        refuse_index_gradient(self, propagate_down, 1, "permut")
        if propagate_down[0]:
            diff = bottoms[0].diff
            diff.fill(0)
            np.add.at(diff, bottoms[1].data.astype(np.int64), tops[0].diff)

    def backward_gpu(self, tops, propagate_down, bottoms):
        refuse_index_gradient(self, propagate_down, 1, "permut")
        if not propagate_down[0]:
            return
        diff, dy = bottoms[0].diff, tops[0].diff
        diff.fill(0)
        inner = int(np.prod(diff.shape[1:]))
        launch("tensor_ops.cu", "scatter_add_rows", dy.dtype, dy.size,
               (np.int64(dy.size), bottoms[1].data, dy, diff, np.int64(inner)))
