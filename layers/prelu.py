"""PReLU: the parametric ReLU, one learned negative slope per channel
(Caffe's ``PReLU``)."""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch
from netdef.fillers import fill


@register("PReLU")
class PReLULayer(Layer):
    """``y = max(0, x) + a_c * min(0, x)``, ``c`` the channel (axis 1).

    bottom: ``(N, C, ...)``, at least two axes; top: the same shape. Works
    in place: the input is then copied before it is overwritten, as Caffe
    does, because backward needs it.

    prelu_param: filler (constant 0.25 when unset), channel_shared (false:
    one slope per channel; true: one slope for all channels).
    Parameter blobs: [a], shape ``(C,)``, or ``()`` (one value, a blob with
    no axes, as Caffe stores it) when channel_shared.

    Backward (Caffe's): ``dx = dy * ((x > 0) + a_c * (x <= 0))`` and
    ``da_c += sum over items and positions of dy * x * (x <= 0)``: the slope
    gradient is added to what the param diff holds (Caffe's contract; the
    solver zeroes param diffs between iterations), and only when the Net
    says the slope needs one (lr_mult != 0).
    """

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.prelu_param
        self.channel_shared = bool(p.channel_shared)
        shape = self._check_axes(bottoms[0].shape)
        filler = type(p.filler)()
        if p.HasField("filler"):
            filler.CopyFrom(p.filler)
        else:
            filler.type = "constant"
            filler.value = 0.25
        blob = self.new_param_blob(() if self.channel_shared else (shape[1],))
        blob.data[...] = self.device.xp.asarray(fill(filler, blob.shape, self.rng()),
                                                dtype=self.dtype)
        self.blobs = [blob]
        self.saved_bottom = None  # the input, kept for backward when in place
        self.geometry = None      # (num, channels, dim), set in reshape

    def _check_axes(self, shape):
        if len(shape) < 2:
            raise self.shape_error(0, "at least 2 axes (N, C, ...), the slopes "
                                   "indexing axis 1", shape)
        return shape

    def reshape(self, bottoms, tops):
        shape = self._check_axes(bottoms[0].shape)
        slopes = self.blobs[0].count
        if not self.channel_shared and shape[1] != slopes:
            raise self.shape_error(
                0, f"{slopes} channels on axis 1, one per slope (the slopes were sized "
                "by the first shape this layer saw, or by the loaded weights)", shape)
        tops[0].reshape(shape)
        self.geometry = (int(shape[0]), int(shape[1]), int(np.prod(shape[2:], dtype=np.int64)))
        if tops[0] is bottoms[0]:
            if self.saved_bottom is None or self.saved_bottom.shape != tuple(shape):
                self.saved_bottom = self.device.xp.empty(shape, dtype=self.dtype)
        else:
            self.saved_bottom = None

    def _input(self, bottoms):
        """x as backward must see it: the saved copy when in place."""
        return bottoms[0].data if self.saved_bottom is None else self.saved_bottom

    def _slopes(self):
        """The slopes as a (1, C or 1, 1) array, broadcasting over (N, C, dim)."""
        return self.blobs[0].data.reshape(1, -1, 1)

    # -- CPU ---------------------------------------------------------------------------
    def forward_cpu(self, bottoms, tops):
        x = bottoms[0].data
        if self.saved_bottom is not None:
            self.saved_bottom[...] = x
        x3 = x.reshape(self.geometry)
        zero = x.dtype.type(0)
        y = np.maximum(x3, zero) + self._slopes() * np.minimum(x3, zero)
        tops[0].data[...] = y.reshape(x.shape)

    def backward_cpu(self, tops, propagate_down, bottoms):
        x3 = self._input(bottoms).reshape(self.geometry)
        dy3 = tops[0].diff.reshape(self.geometry)
        # The slope gradient first: in place, the bottom diff overwrites dy.
        if self.param_needs_gradient(0):
            terms = dy3 * x3 * (x3 <= 0)
            total = terms.sum() if self.channel_shared else terms.sum(axis=(0, 2))
            self.blobs[0].diff[...] += total
        if propagate_down[0]:
            dx = dy3 * ((x3 > 0) + self._slopes() * (x3 <= 0))
            bottoms[0].diff[...] = dx.reshape(bottoms[0].shape)

    # -- GPU ---------------------------------------------------------------------------
    def _kernel_geometry(self):
        num, channels, dim = self.geometry
        div = channels if self.channel_shared else 1
        return np.int64(channels), np.int64(dim), np.int64(div)

    def forward_gpu(self, bottoms, tops):
        x = bottoms[0].data
        if self.saved_bottom is not None:
            self.saved_bottom[...] = x
        launch("prelu.cu", "prelu_forward", x.dtype, x.size,
               (np.int64(x.size), *self._kernel_geometry(), x, self.blobs[0].data,
                tops[0].data))

    def backward_gpu(self, tops, propagate_down, bottoms):
        x = self._input(bottoms)
        dy = tops[0].diff
        if self.param_needs_gradient(0):
            num, channels, dim = self.geometry
            per_item = channels * dim
            terms = self.workspace.array("prelu_slope_terms", (channels, dim), x.dtype)
            if per_item:
                launch("prelu.cu", "prelu_slope_terms", x.dtype, per_item,
                       (np.int64(per_item), np.int64(num), x, dy, terms))
                total = terms.sum() if self.channel_shared else terms.sum(axis=1)
                self.blobs[0].diff[...] += total
        if propagate_down[0]:
            launch("prelu.cu", "prelu_backward", x.dtype, x.size,
                   (np.int64(x.size), *self._kernel_geometry(), x, self.blobs[0].data, dy,
                    bottoms[0].diff))
