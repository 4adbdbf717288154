"""Tile: copies of the bottom laid side by side along one axis."""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch
from layers.shape_ops import canonical_axis


@register("Tile")
class TileLayer(Layer):
    """Caffe's Tile.

    tile_param: axis (1; negative counts from the end), tiles (required,
    >= 1). bottom ``(d0, .., d_axis, .., dn)``; top the same with
    ``d_axis * tiles``: read as ``(outer, tiles, inner)`` with ``outer``
    the product of the dims before ``axis`` and ``inner`` the rest, each of
    the ``tiles`` slots holds the bottom's ``(outer, inner)``. Backward:
    the bottom's diff is the sum of the copies' diffs.
    """

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.tile_param
        if not p.HasField("tiles"):
            raise self.definition_error("tile_param.tiles must be given")
        self.tiles = int(p.tiles)
        if self.tiles < 1:
            raise self.definition_error(f"tile_param.tiles must be >= 1, found {self.tiles}")

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        axis = canonical_axis(self, int(self.param.tile_param.axis), shape,
                              field="tile_param.axis")
        self.outer = int(np.prod(shape[:axis]))
        self.inner = int(np.prod(shape[axis:]))
        tops[0].reshape(shape[:axis] + (shape[axis] * self.tiles,) + shape[axis + 1:])

    def forward_cpu(self, bottoms, tops):
        copies = tops[0].data.reshape(self.outer, self.tiles, self.inner)
        copies[...] = bottoms[0].data.reshape(self.outer, 1, self.inner)

    forward_gpu = forward_cpu

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            copies = tops[0].diff.reshape(self.outer, self.tiles, self.inner)
            copies.sum(axis=1, out=bottoms[0].diff.reshape(self.outer, self.inner))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dx = bottoms[0].diff
        launch("tensor_ops.cu", "tile_backward", dx.dtype, dx.size,
               (np.int64(dx.size), tops[0].diff, dx, np.int64(self.inner), np.int32(self.tiles)))
