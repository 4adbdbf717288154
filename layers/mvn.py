"""Mean-variance normalization (Caffe's ``MVN``).

A row is the H x W map of one (n, c), or with ``across_channels`` the
C x H x W values of one image n. Per row, with dim values:

    mean = sum(x) / dim
    y    = x - mean                                   (normalize_variance: false)
    y    = (x - mean) / (sqrt(var) + eps)             (normalize_variance: true)
    var  = sum((x - mean)^2) / dim

The variance is E((X - EX)^2), as BVLC Caffe 1.0 computes it; Caffe before
the ``eps`` field existed used E(X^2) - (EX)^2 with eps fixed at 1e-10,
which loses the variance to cancellation when |mean| >> std.

Backward is Caffe's:

    dx = dy - mean(dy)                                          (mean only)
    dx = (dy - mean(dy) - y * mean(y * dy)) / (sqrt(var) + eps)

The second is the exact derivative for eps = 0; with eps > 0 the exact one
has the last term times (sqrt(var) + eps) / sqrt(var), a difference of
relative size eps / sqrt(var) (1e-9 by default) that Caffe neglects.
"""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch
from netdef.device import array_module


@register("MVN")
class MVNLayer(Layer):
    """Mean (and variance) normalization per row; see the module docstring.

    bottom: at most 4 axes, read as Caffe does as (num, channels, height,
    width) with missing trailing axes 1; top: that 4-axis shape (Caffe
    reshapes its top so). Keeps ``mean`` and (normalize_variance) ``std``
    = sqrt(var) + eps, both (rows,), from forward to backward. Works in
    place: backward reads only the top.
    """

    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)

    def reshape(self, bottoms, tops):
        shape = tuple(bottoms[0].shape)
        if len(shape) > 4:
            raise self.shape_error(
                0, "at most 4 axes (Caffe reads them as num, channels, height, width)", shape)
        num, channels, height, width = shape + (1,) * (4 - len(shape))
        tops[0].reshape((num, channels, height, width))
        if self.across_channels:
            self.rows, self.dim = num, channels * height * width
        else:
            self.rows, self.dim = num * channels, height * width
        self.mean = self._buffer("mean", (self.rows,))
        self.std = self._buffer("std", (self.rows,)) if self.normalize_variance else None

    def _buffer(self, name, shape):
        # Reallocated only when the shape changes (reshape runs every pass).
        current = getattr(self, name, None)
        if current is not None and tuple(current.shape) == tuple(shape):
            return current
        return self.device.xp.zeros(shape, dtype=self.dtype)

    def _rows(self, array):
        """The (rows, dim) view of a blob's data or diff."""
        return array.reshape(self.rows, self.dim)

    def forward(self, bottoms, tops):
        # An empty blob has nothing to normalize (and its rows, if any, are
        # empty: their mean would be 0 / 0).
        if tops[0].count:
            super().forward(bottoms, tops)

    def backward(self, tops, propagate_down, bottoms):
        if tops[0].count and propagate_down[0]:
            super().backward(tops, propagate_down, bottoms)

    # -- shared by both devices: the per-row reductions ---------------------------
    def _statistics(self, x):
        """Fill ``self.mean`` and (normalize_variance) ``self.std`` for the
        (rows, dim) bottom data ``x``."""
        xp = array_module(x)
        xp.mean(x, axis=1, out=self.mean)
        if not self.normalize_variance:
            return
        centered = self.workspace.array("mvn_centered", x.shape, x.dtype)
        xp.subtract(x, self.mean[:, None], out=centered)
        centered *= centered
        xp.mean(centered, axis=1, out=self.std)
        xp.sqrt(self.std, out=self.std)
        self.std += self.eps

    def _gradient_means(self, y, dy):
        """Row means of ``dy`` and (normalize_variance) of ``y * dy``, for
        the (rows, dim) top data and diff."""
        xp = array_module(dy)
        mean_dy = dy.mean(axis=1)
        if not self.normalize_variance:
            return mean_dy, None
        product = self.workspace.array("mvn_product", y.shape, y.dtype)
        xp.multiply(y, dy, out=product)
        return mean_dy, product.mean(axis=1)

    # -- CPU ------------------------------------------------------------------------
    def forward_cpu(self, bottoms, tops):
        x, y = self._rows(bottoms[0].data), self._rows(tops[0].data)
        self._statistics(x)
        np.subtract(x, self.mean[:, None], out=y)
        if self.normalize_variance:
            y /= self.std[:, None]

    def backward_cpu(self, tops, propagate_down, bottoms):
        y, dy = self._rows(tops[0].data), self._rows(tops[0].diff)
        dx = self._rows(bottoms[0].diff)
        mean_dy, mean_ydy = self._gradient_means(y, dy)
        if self.normalize_variance:
            dx[...] = (dy - mean_dy[:, None] - y * mean_ydy[:, None]) / self.std[:, None]
        else:
            np.subtract(dy, mean_dy[:, None], out=dx)

    # -- GPU: the reductions above, then one element-wise kernel ----------------------
    def forward_gpu(self, bottoms, tops):
        x, y = bottoms[0].data, tops[0].data
        self._statistics(self._rows(x))
        n, dim = np.int64(x.size), np.int64(self.dim)
        if self.normalize_variance:
            launch("mvn.cu", "mvn_normalize", x.dtype, x.size,
                   (n, x, self.mean, self.std, dim, y))
        else:
            launch("mvn.cu", "mvn_subtract_mean", x.dtype, x.size, (n, x, self.mean, dim, y))

    def backward_gpu(self, tops, propagate_down, bottoms):
        y, dy, dx = tops[0].data, tops[0].diff, bottoms[0].diff
        mean_dy, mean_ydy = self._gradient_means(self._rows(y), self._rows(dy))
        n, dim = np.int64(y.size), np.int64(self.dim)
        if self.normalize_variance:
            launch("mvn.cu", "mvn_backward_normalized", y.dtype, y.size,
                   (n, y, dy, mean_dy, mean_ydy, self.std, dim, dx))
        else:
            launch("mvn.cu", "mvn_backward_mean", y.dtype, y.size, (n, dy, mean_dy, dim, dx))
