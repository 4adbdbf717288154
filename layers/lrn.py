"""Local response normalization (Caffe's ``LRN``, its CAFFE engine).

Both regions of ``lrn_param`` compute, per element of an (N, C, H, W) blob,

    scale = offset + (alpha / n) * (sum of x^2 over a window centred on it)
    y     = x * scale^-beta

with zeros past the edges of the window:

- ACROSS_CHANNELS: the window is the ``local_size`` channels c - half ..
  c + half at the same pixel; offset ``k``, n = ``local_size``.
- WITHIN_CHANNEL: Caffe builds it from other layers: AVE pooling of x^2 over
  ``local_size`` x ``local_size`` windows (pad ``half``, stride 1), then
  Power (power -beta, scale alpha, shift 1), then the product with x. AVE
  divides by the window's area clipped to the *padded* input; with pad
  ``half`` and stride 1 no window reaches past the padded edge, so that area
  is always local_size^2. Hence offset 1 (``k`` is not used) and
  n = ``local_size``^2.

(half = (local_size - 1) / 2.) The windows are symmetric, so the exact
derivative of that forward is, for both regions,

    dx = dy * scale^-beta - (2 * beta * alpha / n) * x * (window sum of dy * y / scale)

which is what Caffe's cross-channel backward and its chain of layers'
backwards compute. ``engine`` is ignored: cuDNN's within-channel engine
computes something else, and py-faster-rcnn's ZF asks for ``engine: CAFFE``.
"""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch

# LRNParameter.NormRegion (values of caffe.proto).
ACROSS_CHANNELS, WITHIN_CHANNEL = 0, 1


def add_window(out, values, axis, half):
    """``out += values`` shifted by every offset 1..half both ways along
    ``axis`` (a centred window sum without the centre; zeros past the ends)."""
    def cut(start, stop):
        index = [slice(None)] * values.ndim
        index[axis] = slice(start, stop)
        return tuple(index)

    for shift in range(1, half + 1):
        out[cut(shift, None)] += values[cut(None, -shift)]
        out[cut(None, -shift)] += values[cut(shift, None)]


@register("LRN")
class LRNLayer(Layer):
    """Local response normalization; see the module docstring.

    bottom: (N, C, H, W); top: the same shape. Keeps ``scale`` (N, C, H, W)
    from forward to backward. Not in place: backward reads the bottom data.
    """

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 != 1:
            raise self.definition_error(
                f"lrn_param.local_size must be odd, found {self.size}")
        self.half = (self.size - 1) // 2
        self.region = p.norm_region
        self.alpha = float(p.alpha)
        self.beta = float(p.beta)
        if self.region == ACROSS_CHANNELS:
            self.alpha_over_n = self.alpha / self.size
            self.offset = float(p.k)
        else:
            self.alpha_over_n = self.alpha / (self.size * self.size)
            self.offset = 1.0

    def reshape(self, bottoms, tops):
        shape = tuple(bottoms[0].shape)
        if len(shape) != 4:
            raise self.shape_error(0, "4 axes (N, C, H, W)", shape)
        if tops[0] is bottoms[0]:
            raise self.definition_error(
                f"cannot work in place: top '{self.top_name(0)}' is also the bottom, "
                "and backward needs the bottom data")
        tops[0].reshape(shape)
        current = getattr(self, "scale", None)
        if current is None or tuple(current.shape) != shape:
            self.scale = self.device.xp.zeros(shape, dtype=self.dtype)

    # -- CPU ------------------------------------------------------------------------
    def _window_sum(self, values, out):
        """out = the region's centred window sum of ``values`` (N, C, H, W)."""
        if self.region == ACROSS_CHANNELS:
            out[...] = values
            add_window(out, values, 1, self.half)
            return
        # The square window is a window over rows, then one over columns.
        rows = self.workspace.array("lrn_rows", values.shape, values.dtype)
        rows[...] = values
        add_window(rows, values, 2, self.half)
        out[...] = rows
        add_window(out, rows, 3, self.half)

    def forward_cpu(self, bottoms, tops):
        x, scale = bottoms[0].data, self.scale
        square = self.workspace.array("lrn_square", x.shape, x.dtype)
        np.multiply(x, x, out=square)
        self._window_sum(square, scale)
        scale *= self.alpha_over_n
        scale += self.offset
        np.multiply(x, np.power(scale, -self.beta), out=tops[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        x, y, dy, scale = bottoms[0].data, tops[0].data, tops[0].diff, self.scale
        ratio = self.workspace.array("lrn_ratio", x.shape, x.dtype)
        np.multiply(dy, y, out=ratio)
        ratio /= scale
        accumulated = self.workspace.array("lrn_accumulated", x.shape, x.dtype)
        self._window_sum(ratio, accumulated)
        cache_ratio = 2.0 * self.beta * self.alpha_over_n
        bottoms[0].diff[...] = dy * np.power(scale, -self.beta) - cache_ratio * x * accumulated

    # -- GPU ------------------------------------------------------------------------
    def _geometry_args(self, x):
        """The kernels' layout arguments after the bottom pointer."""
        n, c, h, w = x.shape
        if self.region == ACROSS_CHANNELS:
            return (np.int32(c), np.int64(h * w), np.int32(self.half))
        return (np.int32(h), np.int32(w), np.int32(self.half))

    def _kernel(self, direction):
        region = "across" if self.region == ACROSS_CHANNELS else "within"
        return f"lrn_{region}_{direction}"

    def forward_gpu(self, bottoms, tops):
        x = bottoms[0].data
        real = x.dtype.type
        launch("lrn.cu", self._kernel("forward"), x.dtype, x.size,
               (np.int64(x.size), x, *self._geometry_args(x), real(self.alpha_over_n),
                real(self.offset), real(self.beta), self.scale, tops[0].data))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        x = bottoms[0].data
        real = x.dtype.type
        launch("lrn.cu", self._kernel("backward"), x.dtype, x.size,
               (np.int64(x.size), x, tops[0].data, self.scale, tops[0].diff,
                *self._geometry_args(x), real(self.beta),
                real(2.0 * self.beta * self.alpha_over_n), bottoms[0].diff))
