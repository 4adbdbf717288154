"""Batch normalization with Caffe's three-blob layout: BatchNorm.

Caffe's BatchNorm only normalizes; the learned affine part is a following
``Scale`` layer (``bias_term: true``), as in the ResNet prototxts.
"""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch
from netdef.device import array_module
from netdef.errors import ShapeError


def _geometry(shape):
    """(N, C, S) of a bottom: batch, channels, and everything after them.

    A 1-D bottom has one channel (Caffe's rule); 2-D ``(N, C)`` has S = 1.
    """
    num = shape[0]
    channels = 1 if len(shape) == 1 else shape[1]
    spatial = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    return num, channels, spatial


@register("BatchNorm")
class BatchNormLayer(Layer):
    """y = (x - mean) / sqrt(var + eps), per channel (axis 1).

    bottom: (N, C, ...) with at least one axis; top: the same shape; works
    in place (bottom == top, as in the ResNet prototxts).

    Parameter blobs (Caffe's layout, never learned):
      blobs[0]: (C,) running sum of batch means,
      blobs[1]: (C,) running sum of unbiased batch variances,
      blobs[2]: (1,) the scale factor s those sums are divided by
                (s == 0 means the statistics are zero).

    batch_norm_param: use_global_stats (unset: true in TEST, false in TRAIN)
    selects the stored statistics instead of the batch's; in the batch mode
    every forward pass updates the running sums with
    moving_average_fraction; eps is added to the variance.
    """

    exact_bottoms = 1
    exact_tops = 1
    # The statistics are not parameters: Caffe forces lr_mult 0 on all three
    # blobs (and refuses anything else). The Net and solver read this.
    fixed_param_blobs = (0, 1, 2)

    def layer_setup(self, bottoms, tops):
        p = self.param.batch_norm_param
        if p.HasField("use_global_stats"):
            self.use_global_stats = bool(p.use_global_stats)
        else:
            self.use_global_stats = self.phase == "TEST"
        self.moving_average_fraction = float(p.moving_average_fraction)
        self.eps = float(p.eps)
        shape = bottoms[0].shape
        if len(shape) < 1:
            raise self.shape_error(0, "at least 1 axis (N, C, ...)", shape)
        _, channels, _ = _geometry(shape)
        # Zeros, as in Caffe: s = 0 means "no statistics yet" (used as zeros).
        self.blobs = [self.new_param_blob((channels,)),
                      self.new_param_blob((channels,)),
                      self.new_param_blob((1,))]
        # Caffe gives the three blobs lr_mult 0 (the Net reads
        # fixed_param_blobs) and refuses a prototxt that asks to learn them.
        for i, spec in enumerate(self.param.param[:len(self.blobs)]):
            if spec.lr_mult != 0:
                raise self.definition_error(
                    f"param {i} lr_mult must be 0 (batch normalization statistics "
                    f"are not learned), found {spec.lr_mult:g}")

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        if len(shape) < 1:
            raise self.shape_error(0, "at least 1 axis (N, C, ...)", shape)
        num, channels, spatial = _geometry(shape)
        # The stored blobs may come from a caffemodel: check them here, where
        # both sides are known. Only counts matter (legacy 4-D blob shapes).
        counts = tuple(b.count for b in self.blobs)
        if counts != (channels, channels, 1):
            raise ShapeError(
                f"{self.where}: bottom '{self.bottom_name(0)}' has {channels} channels "
                f"(shape {tuple(shape)}), but the stored blobs hold mean "
                f"{self.blobs[0].shape}, variance {self.blobs[1].shape} and scale factor "
                f"{self.blobs[2].shape}; expected ({channels},), ({channels},) and (1,) "
                "(were the weights loaded from a different net?)")
        self.num, self.channels, self.spatial = num, channels, spatial
        tops[0].reshape(shape)
        # Kept for the batch-mode backward (in place, the bottom data is
        # overwritten by y); with stored statistics backward needs only std.
        self.x_norm = None if self.use_global_stats else self._buffer("x_norm", shape)
        # Per-channel statistics of the last forward pass.
        self.mean = self._buffer("mean", (channels,))
        self.variance = self._buffer("variance", (channels,))
        self.std = self._buffer("std", (channels,))

    def frozen_affine(self):
        """``(a, b)``, each (C,), with y = x * a + b per channel: this
        layer's transform under its stored statistics (use_global_stats),
        for the graph plan to fold into a neighbour."""
        self._statistics(self.blobs[0].data)
        return 1 / self.std, -self.mean / self.std

    def _buffer(self, name, shape):
        # Reallocated only when the shape changes (reshape runs every pass).
        current = getattr(self, name, None)
        if current is not None and tuple(current.shape) == tuple(shape):
            return current
        return self.device.xp.zeros(shape, dtype=self.dtype)

    # -- shared by both devices: reductions and the running averages ----------
    def _statistics(self, x):
        """Fill ``self.mean``, ``self.variance`` and ``self.std`` for the
        bottom data ``x`` (and update the running sums in batch mode)."""
        xp = array_module(x)
        mean_sum = self.blobs[0].data.reshape(-1)
        var_sum = self.blobs[1].data.reshape(-1)
        factor_blob = self.blobs[2].data.reshape(-1)
        if self.use_global_stats:
            # Caffe multiplies by 1/s and treats s == 0 as "all zeros"; kept
            # on the device (no host sync for the scalar).
            s = factor_blob[0]
            factor = xp.where(s == 0, 0, 1 / xp.where(s == 0, 1, s)).astype(self.dtype)
            self.mean[...] = mean_sum * factor
            self.variance[...] = var_sum * factor
        else:
            x3 = x.reshape(self.num, self.channels, self.spatial)
            self.mean[...] = xp.mean(x3, axis=(0, 2))
            centred = x3 - self.mean[None, :, None]
            self.variance[...] = xp.mean(centred * centred, axis=(0, 2))
            # Caffe's running sums: s counts (decayed) updates, the variance
            # is stored with the unbiased m / (m - 1) correction.
            maf = self.dtype.type(self.moving_average_fraction)
            m = self.num * self.spatial
            correction = self.dtype.type(m / (m - 1) if m > 1 else 1.0)
            factor_blob *= maf
            factor_blob += 1
            mean_sum *= maf
            mean_sum += self.mean
            var_sum *= maf
            var_sum += correction * self.variance
        self.std[...] = xp.sqrt(self.variance + self.dtype.type(self.eps))

    def _dy_statistics(self, dy, xp):
        """Per-channel mean(dy) and mean(dy * y) for the batch-mode gradient."""
        dy3 = dy.reshape(self.num, self.channels, self.spatial)
        y3 = self.x_norm.reshape(self.num, self.channels, self.spatial)
        return xp.mean(dy3, axis=(0, 2)), xp.mean(dy3 * y3, axis=(0, 2))

    # -- CPU ---------------------------------------------------------------------
    def forward_cpu(self, bottoms, tops):
        x = bottoms[0].data
        self._statistics(x)
        x3 = x.reshape(self.num, self.channels, self.spatial)
        y3 = tops[0].data.reshape(x3.shape)
        np.subtract(x3, self.mean[None, :, None], out=y3)
        np.divide(y3, self.std[None, :, None], out=y3)
        if self.x_norm is not None:
            self.x_norm[...] = tops[0].data

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy = tops[0].diff
        std = self.std[None, :, None]
        dy3 = dy.reshape(self.num, self.channels, self.spatial)
        if self.use_global_stats:
            dx = dy3 / std
        else:
            # d/dx of (x - mean) / std with batch statistics:
            # (dy - mean(dy) - mean(dy * y) * y) / std.
            mean_dy, mean_dy_y = self._dy_statistics(dy, np)
            y3 = self.x_norm.reshape(dy3.shape)
            dx = (dy3 - mean_dy[None, :, None] - mean_dy_y[None, :, None] * y3) / std
        # dx is a new array, so this is safe when bottom diff is top diff.
        bottoms[0].diff[...] = dx.reshape(bottoms[0].diff.shape)

    # -- GPU ---------------------------------------------------------------------
    def forward_gpu(self, bottoms, tops):
        x = bottoms[0].data
        self._statistics(x)
        # The kernel writes y twice when there is no x_norm to keep.
        x_norm = self.x_norm if self.x_norm is not None else tops[0].data
        launch("batchnorm.cu", "batchnorm_forward", x.dtype, x.size,
               (np.int64(x.size), x, self.mean, self.std, tops[0].data, x_norm,
                np.int64(self.channels), np.int64(self.spatial)))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy = tops[0].diff
        dx = bottoms[0].diff
        if self.use_global_stats:
            launch("batchnorm.cu", "batchnorm_backward_global", dy.dtype, dy.size,
                   (np.int64(dy.size), dy, self.std, dx,
                    np.int64(self.channels), np.int64(self.spatial)))
            return
        xp = array_module(dy)
        mean_dy, mean_dy_y = self._dy_statistics(dy, xp)
        launch("batchnorm.cu", "batchnorm_backward", dy.dtype, dy.size,
               (np.int64(dy.size), dy, self.x_norm, self.std,
                xp.ascontiguousarray(mean_dy), xp.ascontiguousarray(mean_dy_y), dx,
                np.int64(self.channels), np.int64(self.spatial)))
