"""Caffe-SSD's ``Normalize``: L2 normalization with a learned scale
(ParseNet's; SSD applies it to VGG16's conv4_3).

For a bottom (N, C, ...) seen as (N, C, S) with S the product of the
trailing axes, and ``s`` the scale (one per channel, or one shared):

    r = sqrt(sum of x^2 over the group + eps)
    y = s * x / r

The group is all of one image's C * S values (``across_spatial: true``,
Caffe-SSD's default) or the C values at one position (``across_spatial:
false``, as SSD300 sets it). ``channel_shared`` (default true) shares one
scale (a blob of shape (), as Caffe-SSD stores it) instead of C of them
(shape (C,)); ``scale_filler`` initializes it (default constant 1), ``eps``
defaults to 1e-10. Gradients, with g = dy * s:

    dx = g / r - x * (sum over the group of g * x) / r^3
    ds = sum of dy * x / r   (over N and S per channel; over all when shared)

The CPU path is these formulas as NumPy reductions and broadcasts; the GPU
path runs them as the kernels of ``layers/cuda/normalize.cu`` (the group
sums in two deterministic stages: over the channels per position, then over
the positions per group).
"""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch
from netdef.device import array_module
from netdef.fillers import fill


@register("Normalize")
class NormalizeLayer(Layer):
    """bottom: (N, C, ...) with at least 2 axes; top: the same shape.
    Param blob 0: the scale, () when channel_shared, else (C,). Keeps the
    norms ``r`` ((N, 1, 1) or (N, 1, S)) from forward to backward. Not in
    place: backward reads the bottom data."""

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.norm_param
        self.across_spatial = bool(p.across_spatial)
        self.channel_shared = bool(p.channel_shared)
        self.eps = float(p.eps)
        if tops[0] is bottoms[0] or self.top_name(0) in self.param.bottom:
            raise self.definition_error(
                f"top '{self.top_name(0)}' is also the bottom; Normalize does not work "
                "in place (backward needs the bottom data)")
        shape = self._grouped_shape(bottoms[0].shape)
        filler = type(p.scale_filler)()
        if p.HasField("scale_filler"):
            filler.CopyFrom(p.scale_filler)
        else:
            filler.type = "constant"
            filler.value = 1.0
        blob = self.new_param_blob(() if self.channel_shared else (shape[1],))
        blob.data[...] = self.device.xp.asarray(fill(filler, blob.shape, self.rng()),
                                                dtype=self.dtype)
        self.blobs = [blob]
        self.norm = None

    def _grouped_shape(self, shape):
        shape = tuple(shape)
        if len(shape) < 2:
            raise self.shape_error(0, "at least 2 axes (N, C, ...)", shape)
        spatial = 1
        for d in shape[2:]:
            spatial *= int(d)
        return (int(shape[0]), int(shape[1]), spatial)

    def reshape(self, bottoms, tops):
        self.grouped = self._grouped_shape(bottoms[0].shape)
        if not self.channel_shared and self.blobs[0].shape[0] != self.grouped[1]:
            raise self.shape_error(
                0, f"{self.blobs[0].shape[0]} channels (the scale's length)", bottoms[0].shape)
        tops[0].reshape(tuple(bottoms[0].shape))
        n, _, s = self.grouped
        norm_shape = (n, 1, 1) if self.across_spatial else (n, 1, s)
        if self.norm is None or tuple(self.norm.shape) != norm_shape:
            self.norm = self.device.xp.zeros(norm_shape, dtype=self.dtype)

    def _group_sum(self, values):
        """Sums over each normalization group of (N, C, S) ``values``."""
        axes = (1, 2) if self.across_spatial else (1,)
        return values.sum(axis=axes, keepdims=True)

    def _scale(self):
        """The scale broadcastable against (N, C, S)."""
        scale = self.blobs[0].data
        return scale if self.channel_shared else scale.reshape(1, -1, 1)

    def forward_cpu(self, bottoms, tops):
        x = bottoms[0].data.reshape(self.grouped)
        xp = array_module(x)
        self.norm[...] = xp.sqrt(self._group_sum(x * x) + self.dtype.type(self.eps))
        tops[0].data.reshape(self.grouped)[...] = x / self.norm * self._scale()

    def backward_cpu(self, tops, propagate_down, bottoms):
        x = bottoms[0].data.reshape(self.grouped)
        dy = tops[0].diff.reshape(self.grouped)
        normalized = x / self.norm
        if self.param_needs_gradient(0):
            product = dy * normalized
            if self.channel_shared:
                self.blobs[0].diff[...] += product.sum()
            else:
                self.blobs[0].diff[...] += product.sum(axis=(0, 2))
        if propagate_down[0]:
            g = dy * self._scale()
            dx = (g - normalized * self._group_sum(g * normalized)) / self.norm
            bottoms[0].diff.reshape(self.grouped)[...] = dx

    # -- GPU ---------------------------------------------------------------------------
    def _kernel_geometry(self):
        """(count, channels, spatial, across) as the kernels take them."""
        n, c, s = self.grouped
        return np.int64(n * c * s), np.int64(c), np.int64(s), np.int32(self.across_spatial)

    def _kernel_scale(self):
        """The scale array and the step between channels' entries (0 when shared)."""
        return self.blobs[0].data, np.int64(0 if self.channel_shared else 1)

    def _group_layout(self):
        """(groups, positions per group): images and their positions when
        across_spatial, else every position alone."""
        n, _, s = self.grouped
        return (n, s) if self.across_spatial else (n * s, 1)

    def forward_gpu(self, bottoms, tops):
        x = bottoms[0].data
        n, c, s = self.grouped
        count, channels, spatial, across = self._kernel_geometry()
        sums = self.workspace.array("normalize_position_sums", (n * s,), x.dtype)
        launch("normalize.cu", "normalize_sum_squares", x.dtype, n * s,
               (np.int64(n * s), channels, spatial, x, sums))
        groups, width = self._group_layout()
        launch("normalize.cu", "normalize_group_norms", x.dtype, groups,
               (np.int64(groups), np.int64(width), sums, x.dtype.type(self.eps), self.norm))
        launch("normalize.cu", "normalize_forward", x.dtype, count,
               (count, channels, spatial, across, x, self.norm, *self._kernel_scale(),
                tops[0].data))

    def backward_gpu(self, tops, propagate_down, bottoms):
        x, dy = bottoms[0].data, tops[0].diff
        n, c, s = self.grouped
        count, channels, spatial, across = self._kernel_geometry()
        if self.param_needs_gradient(0):
            terms = self.workspace.array("normalize_scale_terms", (c, s), x.dtype)
            launch("normalize.cu", "normalize_scale_terms", x.dtype, c * s,
                   (np.int64(c * s), np.int64(n), channels, spatial, across, x, dy, self.norm,
                    terms))
            self.blobs[0].diff[...] += terms.sum() if self.channel_shared else terms.sum(axis=1)
        if propagate_down[0]:
            sums = self.workspace.array("normalize_position_sums", (n * s,), x.dtype)
            launch("normalize.cu", "normalize_scaled_dot", x.dtype, n * s,
                   (np.int64(n * s), channels, spatial, across, dy, x, self.norm,
                    *self._kernel_scale(), sums))
            groups, width = self._group_layout()
            dot = sums
            if width > 1:
                dot = self.workspace.array("normalize_group_dots", (groups,), x.dtype)
                launch("normalize.cu", "normalize_group_sums", x.dtype, groups,
                       (np.int64(groups), np.int64(width), sums, dot))
            launch("normalize.cu", "normalize_backward", x.dtype, count,
                   (count, channels, spatial, across, x, dy, self.norm, dot,
                    *self._kernel_scale(), bottoms[0].diff))
