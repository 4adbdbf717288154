"""Spatial pyramid pooling (Caffe's ``SPP`` layer, He et al. 2014): a
fixed-length vector from a map of any size.

bottom: (N, C, H, W). Level l of ``pyramid_height`` levels pools the map
into 2^l x 2^l bins with this project's ``Pooling`` (layers/pooling.py:
its geometry, AVE divisor, tie rule, CPU code and CUDA kernels), set up
the way Caffe sets it up per axis:

    kernel = ceil(H / bins), pad = (kernel * bins - H + 1) // 2, stride = kernel

(likewise for W). Caffe's Pooling refuses pad >= kernel, which happens on
maps smaller than about 1.5 x bins (e.g. H = 5 with 4 bins: kernel 2,
pad 2); this layer refuses those maps with a shape error. Whenever
pad < kernel the pooled map is exactly bins x bins.

top: with ``pyramid_height`` 1, the single level's pooled map itself,
(N, C, 1, 1) (Caffe then runs one Pooling layer on the whole map); with
more levels, each level's (N, C, bins, bins) flattened to
(N, C * bins * bins) and the levels concatenated in order:
(N, C * sum_l 4^l). Backward runs each level's Pooling backward and sums
the bottom gradients.
"""
import math

from layers.base import Layer, register
from layers.pooling import AVE, MAX, STOCHASTIC, PoolingLayer
from netdef import caffe_pb2
from netdef.blob import Blob


def level_geometry(size, bins):
    """Caffe's (kernel, pad) along one axis of ``size`` cells for ``bins``
    bins (stride = kernel): the smallest kernel whose ``bins`` windows
    cover the map, and half of the excess as padding (rounded up)."""
    kernel = -(-size // bins)
    return kernel, (kernel * bins - size + 1) // 2


@register("SPP")
class SPPLayer(Layer):
    """Caffe's SPP (see the module docstring for shapes).

    spp_param: pyramid_height (>= 1), pool (MAX or AVE; STOCHASTIC is
    refused).
    """

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.spp_param
        self.pyramid_height = int(p.pyramid_height)
        if self.pyramid_height < 1:
            raise self.definition_error(
                f"spp_param.pyramid_height must be >= 1, found {self.pyramid_height}")
        self.pool = int(p.pool)
        if self.pool == STOCHASTIC:
            raise self.definition_error("pool STOCHASTIC is not implemented; expected MAX or AVE")
        if self.pool not in (MAX, AVE):
            raise self.definition_error(f"pool must be MAX or AVE, found {self.pool}")
        self.levels = []        # one PoolingLayer per level
        self.level_tops = []    # their pooled maps (N, C, bins, bins), when flattened
        self._levels_map = None  # the (H, W) the levels were made for

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        if len(shape) != 4:
            raise self.shape_error(0, "4 axes (N, C, H, W)", shape)
        if min(shape[2:]) < 1:
            raise self.shape_error(0, "a map of at least 1 x 1 (H, W)", shape)
        if shape[2:] != self._levels_map:
            self._make_levels(bottoms, tops)
        if self.pyramid_height == 1:
            self.levels[0].reshape(bottoms, tops)
            return
        for level, top in zip(self.levels, self.level_tops):
            level.reshape(bottoms, [top])
        tops[0].reshape((shape[0], sum(_per_image(top) for top in self.level_tops)))

    def _make_levels(self, bottoms, tops):
        """One Pooling layer per level for the bottom's map size, Caffe's
        way; each pools into a blob of its own (the top itself for a
        single level)."""
        shape = bottoms[0].shape
        h, w = shape[2:]
        self.levels, self.level_tops = [], []
        for index in range(self.pyramid_height):
            bins = 2 ** index
            (kh, ph), (kw, pw) = level_geometry(h, bins), level_geometry(w, bins)
            if ph >= kh or pw >= kw:
                raise self.shape_error(
                    0, f"a map large enough for pyramid level {index} ({bins} x {bins} bins): "
                       f"Caffe's Pooling needs pad < kernel, here kernel (h, w) ({kh}, {kw}) "
                       f"and pad ({ph}, {pw})", shape)
            param = caffe_pb2.LayerParameter(name=f"{self.name}/level{index}", type="Pooling")
            param.pooling_param.pool = self.pool
            param.pooling_param.kernel_h, param.pooling_param.kernel_w = kh, kw
            param.pooling_param.stride_h, param.pooling_param.stride_w = kh, kw
            param.pooling_param.pad_h, param.pooling_param.pad_w = ph, pw
            level = PoolingLayer(param, phase=self.phase, device=self.device, dtype=self.dtype,
                                 seed=self.seed)
            top = tops[0] if self.pyramid_height == 1 else Blob((), self.dtype, self.device.xp)
            level.setup(bottoms, [top])
            self.levels.append(level)
            if self.pyramid_height > 1:
                self.level_tops.append(top)
        self._levels_map = shape[2:]

    # -- both devices: the levels' own paths, then flatten and concatenate ----------
    def _forward(self, bottoms, tops, on_gpu):
        for level in self.levels:
            level.need_backward = self.need_backward
        if self.pyramid_height == 1:
            self._run(self.levels[0], on_gpu, "forward")(bottoms, tops)
            return
        start = 0
        for level, top in zip(self.levels, self.level_tops):
            self._run(level, on_gpu, "forward")(bottoms, [top])
            size = _per_image(top)
            tops[0].data[:, start:start + size] = top.data.reshape(-1, size)
            start += size

    def _backward(self, tops, propagate_down, bottoms, on_gpu):
        if not propagate_down[0]:
            return
        if self.pyramid_height == 1:
            self._run(self.levels[0], on_gpu, "backward")(tops, [True], bottoms)
            return
        bottom = bottoms[0]
        # Level 0 writes the bottom diff; the others write a scratch diff
        # that is added to it.
        scratch = Blob.from_array(bottom.data)
        scratch.diff = self.workspace.array("spp_level_diff", bottom.shape, bottom.dtype)
        start = 0
        for index, (level, top) in enumerate(zip(self.levels, self.level_tops)):
            size = _per_image(top)
            top.diff[...] = tops[0].diff[:, start:start + size].reshape(top.shape)
            start += size
            target = bottom if index == 0 else scratch
            self._run(level, on_gpu, "backward")([top], [True], [target])
            if index > 0:
                bottom.diff += scratch.diff

    @staticmethod
    def _run(level, on_gpu, what):
        """The level's ``forward_cpu``/``forward_gpu`` (or backward): the
        device is the SPP layer's call, so a host-run GPU path stays one."""
        return getattr(level, f"{what}_{'gpu' if on_gpu else 'cpu'}")

    def forward_cpu(self, bottoms, tops):
        self._forward(bottoms, tops, on_gpu=False)

    def forward_gpu(self, bottoms, tops):
        self._forward(bottoms, tops, on_gpu=True)

    def backward_cpu(self, tops, propagate_down, bottoms):
        self._backward(tops, propagate_down, bottoms, on_gpu=False)

    def backward_gpu(self, tops, propagate_down, bottoms):
        self._backward(tops, propagate_down, bottoms, on_gpu=True)


def _per_image(blob):
    """Elements per image of a (N, ...) blob: its width once flattened."""
    return math.prod(blob.shape[1:])
