"""Dropout (Caffe's ``Dropout``): random zeroing of units in training."""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch
from netdef.device import is_gpu_array


#: The salt of the mask draws (Layer.keyed_rng).
DROPOUT_SALT = 0xD80


@register("Dropout")
class DropoutLayer(Layer):
    """TRAIN: ``y = x * mask``, mask ``1 / (1 - ratio)`` with probability
    ``1 - ratio`` and 0 otherwise (a fresh mask every forward). TEST: ``y = x``.

    bottom: any shape; top: the same shape; works in place.
    dropout_param: dropout_ratio in [0, 1) (default 0.5); scale_train
    (default true; false, as in the py-R-FCN Caffe fork: kept units are not
    scaled in training, and TEST multiplies by ``1 - ratio`` instead).

    Randomness: a mask is a function of the layer's seed, the pass's draw
    key (``draw_key`` = (iteration, image position), set by the Net) and k,
    the masks drawn before it under that key (``mask_draws``, reset when
    the key changes), through ``self.keyed_rng(DROPOUT_SALT, k)``: a pass
    draws the same mask whichever process runs it (data-parallel training),
    a layer forwarded again under one key draws fresh masks, and
    ``mask_draws`` is the whole random state to snapshot. On the GPU the uniforms are drawn by CuPy from a seed taken out
    of that same generator, so GPU masks are reproducible too but differ from
    the CPU's.
    """

    random_state_attributes = ("mask_draws",)

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.dropout_param
        self.ratio = float(p.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.definition_error(
                f"dropout_ratio must be in [0, 1), found {self.ratio:g}")
        scale_train = bool(p.scale_train)
        # What a kept unit is multiplied by in TRAIN, and every unit in TEST.
        self.keep_scale = 1.0 / (1.0 - self.ratio) if scale_train else 1.0
        self.test_scale = 1.0 if scale_train else 1.0 - self.ratio
        self.mask_draws = 0  # masks drawn under _mask_key: the layer's random state
        self._mask_key = self.draw_key
        self.mask = None     # (bottom shape) keep_scale or 0, allocated in reshape (TRAIN)
        self._curand = None  # the GPU generator, made once (_gpu_generator)

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        tops[0].reshape(shape)
        if self.phase == "TRAIN" and (self.mask is None or self.mask.shape != shape):
            self.mask = self.device.xp.empty(shape, dtype=self.dtype)

    def _uniforms(self, like):
        """The next mask's uniforms in [0, 1), shaped and typed like ``like``
        (drawn where ``like`` lives), and advance ``mask_draws``."""
        if self.draw_key != self._mask_key:   # a new pass: its draws start at 0
            self._mask_key, self.mask_draws = self.draw_key, 0
        generator = self.keyed_rng(DROPOUT_SALT, self.mask_draws)
        self.mask_draws += 1
        if not is_gpu_array(like):
            return generator.random(like.shape, dtype=like.dtype)
        # The seed goes in as uint64, the type CuPy's RandomState.seed
        # accepts without a cast error; reseeding a Philox generator sets its
        # seed and resets its offset to 0, so the mask is the same as from a
        # generator made afresh with that seed, without making one.
        seed = generator.integers(2 ** 64, dtype=np.uint64)
        state = self._gpu_generator()
        state.seed(seed)
        return state.random_sample(like.shape, dtype=like.dtype)

    def _gpu_generator(self):
        """The layer's cuRAND generator (Philox), made on the first GPU
        forward and kept: making one costs a cuRAND handle and its setup,
        reseeding it costs nothing. Not random state (``mask_draws`` is)."""
        if self._curand is None:
            import cupy
            self._curand = cupy.random.RandomState(
                0, method=cupy.cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10)
        return self._curand

    # -- CPU -------------------------------------------------------------------------
    def forward_cpu(self, bottoms, tops):
        x = bottoms[0].data
        if self.phase != "TRAIN":
            if self.test_scale != 1.0 or tops[0] is not bottoms[0]:
                np.multiply(x, x.dtype.type(self.test_scale), out=tops[0].data)
            return
        keep = self._uniforms(x) >= self.ratio  # probability 1 - ratio
        np.multiply(keep, x.dtype.type(self.keep_scale), out=self.mask)
        np.multiply(x, self.mask, out=tops[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy = tops[0].diff
        factor = self.mask if self.phase == "TRAIN" else dy.dtype.type(self.test_scale)
        np.multiply(dy, factor, out=bottoms[0].diff)

    # -- GPU -------------------------------------------------------------------------
    def forward_gpu(self, bottoms, tops):
        x = bottoms[0].data
        if self.phase != "TRAIN":
            # The same element-wise expression on either device.
            if self.test_scale != 1.0 or tops[0] is not bottoms[0]:
                tops[0].data[...] = x * x.dtype.type(self.test_scale)
            return
        u = self._uniforms(x)
        launch("dropout.cu", "dropout_forward", x.dtype, x.size,
               (np.int64(x.size), x, u, x.dtype.type(self.ratio),
                x.dtype.type(self.keep_scale), self.mask, tops[0].data))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy = tops[0].diff
        if self.phase != "TRAIN":
            bottoms[0].diff[...] = dy * dy.dtype.type(self.test_scale)
            return
        launch("dropout.cu", "dropout_backward", dy.dtype, dy.size,
               (np.int64(dy.size), dy, self.mask, bottoms[0].diff))
