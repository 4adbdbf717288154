"""RoI pooling of Fast/Faster R-CNN and R-FCN: ROIPooling (max over RoI
bins) and PSROIPooling (position-sensitive average over RoI bins).

Both take two bottoms, a feature map ``(N, C, H, W)`` and RoIs ``(R, 5)``
``[batch_index, x1, y1, x2, y2]`` in input-image pixels (inclusive corners),
and reproduce the bin geometry of the Caffe forks used by py-faster-rcnn and
py-R-FCN exactly, rounding included (DESIGN.md section 4). The geometry is
computed in the layer's dtype, in the same order of operations as the CUDA
kernels, so both paths pick the same cells.

The RoI base class and the RoI checks here are shared with ``layers.roi_align``.
"""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch
from netdef.device import array_module, to_numpy
from netdef.errors import DataError, ShapeError

# Upper bound (elements) on the temporary arrays of the CPU paths; work over
# many RoIs is split into blocks of RoIs so that memory stays bounded.
CPU_BLOCK_ELEMENTS = 1 << 22


def round_half_away(x):
    """CUDA's ``round()`` on an array: halves away from zero, exactly, in
    ``x``'s dtype (``np.round`` takes halves to even).

    ``floor(|x| + 0.5)`` is not used because the sum itself rounds: for the
    largest float below 0.5 it gives 1. The fraction ``|x| - floor(|x|)`` is
    exact, so comparing it with 0.5 is.
    """
    xp = array_module(x)
    magnitude = xp.abs(x)
    whole = xp.floor(magnitude)
    return xp.copysign(whole + (magnitude - whole >= 0.5), x)


def roi_blocks(num_rois, elements_per_roi, budget=CPU_BLOCK_ELEMENTS):
    """Slices over ``range(num_rois)`` whose temporaries of
    ``elements_per_roi`` elements per RoI stay within ``budget``."""
    step = max(1, budget // max(1, int(elements_per_roi)))
    return [slice(s, min(s + step, num_rois)) for s in range(0, num_rois, step)]


class RoILayer(Layer):
    """Common part of the RoI feature extractors.

    bottoms: features ``(N, C, H, W)``, RoIs ``(R, 5)``. The RoIs never take a
    gradient: backward leaves their diff untouched.
    """

    exact_bottoms = 2
    exact_tops = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def check_bottom_shapes(self, bottoms):
        features, rois = bottoms[0].shape, bottoms[1].shape
        if len(features) != 4:
            raise self.shape_error(0, "a 4-D feature map (N, C, H, W)", features)
        if len(rois) != 2 or rois[1] != 5:
            raise self.shape_error(1, "RoIs of shape (R, 5) as [batch_index, x1, y1, x2, y2]", rois)

    def check_rois(self, bottoms):
        """Raise DataError unless every RoI's batch index lies in [0, N) and
        its coordinates are finite. One reduction (one device sync on the GPU)."""
        rois = bottoms[1].data
        if rois.shape[0] == 0:
            return
        xp = array_module(rois)
        num_images = bottoms[0].shape[0]
        batch = rois[:, 0]
        # Written so that NaN fails every comparison and lands in `bad`.
        bad = ~((batch >= 0) & (batch < num_images)) | ~xp.isfinite(rois[:, 1:]).all(axis=1)
        if bool(bad.any()):
            r = int(xp.argmax(bad))
            roi = to_numpy(rois[r]).tolist()
            raise DataError(
                f"{self.where}: bottom '{self.bottom_name(1)}' RoI {r} is {roi}: expected a "
                f"batch index in [0, {num_images}) (the images of bottom "
                f"'{self.bottom_name(0)}') and finite coordinates")

    def batch_indices(self, bottoms):
        """Checked batch index of each RoI, ``(R,)`` int64 (truncated as the
        kernels' cast to int does)."""
        self.check_rois(bottoms)
        return bottoms[1].data[:, 0].astype(np.int64)

    def kernel_rois(self, bottoms):
        """The RoIs as the kernels read them: contiguous, in the feature dtype."""
        xp = array_module(bottoms[0].data)
        return xp.ascontiguousarray(bottoms[1].data, dtype=bottoms[0].data.dtype)


def _positive(layer, message_name, **values):
    bad = {k: v for k, v in values.items() if not v > 0}
    if bad:
        found = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise layer.definition_error(f"{message_name}: expected positive values, found {found}")


# -- ROIPooling -------------------------------------------------------------------

def max_pool_bounds(low, high, scale, pooled, size):
    """Bin bounds of ROIPooling along one axis.

    low, high: ``(R,)`` RoI coordinates (x1, x2 or y1, y2) in image pixels.
    Returns ``start, end`` ``(R, pooled)`` int64 cell bounds, ``[start, end)``,
    clipped to ``[0, size]``: ``round(low * scale)`` ... ``round(high * scale)``
    with size at least one cell, bin size ``size / pooled`` (float), bin ``p``
    from ``floor(p * bin)`` to ``ceil((p + 1) * bin)`` offset by the start.
    """
    dtype = low.dtype
    scale = dtype.type(scale)
    first = round_half_away(low * scale).astype(np.int64)
    last = round_half_away(high * scale).astype(np.int64)
    length = np.maximum(last - first + 1, 1)
    bin_size = length.astype(dtype) / dtype.type(pooled)
    p = np.arange(pooled, dtype=dtype)
    start = np.floor(p * bin_size[:, None]).astype(np.int64) + first[:, None]
    end = np.ceil((p + 1) * bin_size[:, None]).astype(np.int64) + first[:, None]
    return np.clip(start, 0, size), np.clip(end, 0, size)


def window_max(features_nhwc, batch, h0, h1, w0, w1):
    """Max over the windows ``[h0, h1) x [w0, w1)`` of each RoI, per channel.

    features_nhwc: ``(N, H, W, C)``; batch, h0, h1, w0, w1: ``(R,)``.
    Returns values ``(R, C)`` (0 for an empty window) and argmax ``(R, C)``
    int32, the in-plane index ``h * W + w`` of the first maximum in
    row-major order (-1 for an empty window): Caffe scans h then w and keeps
    a value only when strictly greater.
    """
    _, height, width, channels = features_nhwc.shape
    num = batch.shape[0]
    values = np.zeros((num, channels), features_nhwc.dtype)
    argmax = np.full((num, channels), -1, np.int32)
    rows_in = np.maximum(h1 - h0, 0)
    cols_in = np.maximum(w1 - w0, 0)
    live = np.flatnonzero((rows_in > 0) & (cols_in > 0))
    if live.size == 0:
        return values, argmax
    # Every window is gathered padded to the largest one; padding is masked.
    bh, bw = int(rows_in[live].max()), int(cols_in[live].max())
    di, dj = np.arange(bh), np.arange(bw)
    for block in roi_blocks(live.size, bh * bw * channels):
        r = live[block]
        rows = np.minimum(h0[r, None] + di, height - 1)
        cols = np.minimum(w0[r, None] + dj, width - 1)
        window = features_nhwc[batch[r, None, None], rows[:, :, None], cols[:, None, :]]
        inside = (di < rows_in[r, None])[:, :, None] & (dj < cols_in[r, None])[:, None, :]
        window = np.where(inside[..., None], window, -np.inf).reshape(r.size, bh * bw, channels)
        k = window.argmax(axis=1)
        values[r] = np.take_along_axis(window, k[:, None, :], axis=1)[:, 0]
        argmax[r] = (h0[r, None] + k // bw) * width + w0[r, None] + k % bw
    return values, argmax


@register("ROIPooling")
class ROIPoolingLayer(RoILayer):
    """Fast R-CNN RoI max pooling (``roi_pooling_param``: pooled_h, pooled_w,
    spatial_scale).

    bottoms: features ``(N, C, H, W)``, RoIs ``(R, 5)``.
    top: ``(R, C, pooled_h, pooled_w)``, the maximum of each bin; an empty
    bin (RoI outside the map) gives 0. ``self.argmax`` ``(R, C, pooled_h,
    pooled_w)`` int32 holds the in-plane index ``h * W + w`` of each maximum
    (-1 for an empty bin); backward routes each top diff there, summing where
    several bins share a cell.
    """

    def layer_setup(self, bottoms, tops):
        p = self.param.roi_pooling_param
        self.pooled_h, self.pooled_w = int(p.pooled_h), int(p.pooled_w)
        self.spatial_scale = float(p.spatial_scale)
        _positive(self, "roi_pooling_param", pooled_h=self.pooled_h, pooled_w=self.pooled_w,
                  spatial_scale=self.spatial_scale)
        self.argmax = None

    def reshape(self, bottoms, tops):
        self.check_bottom_shapes(bottoms)
        shape = (bottoms[1].shape[0], bottoms[0].shape[1], self.pooled_h, self.pooled_w)
        tops[0].reshape(shape)
        xp = array_module(bottoms[0].data)
        if self.argmax is None or self.argmax.shape != shape or array_module(self.argmax) is not xp:
            self.argmax = xp.full(shape, -1, dtype=np.int32)

    def forward_cpu(self, bottoms, tops):
        x, rois = bottoms[0].data, bottoms[1].data.astype(bottoms[0].data.dtype, copy=False)
        batch = self.batch_indices(bottoms)
        _, _, height, width = x.shape
        h0, h1 = max_pool_bounds(rois[:, 2], rois[:, 4], self.spatial_scale, self.pooled_h, height)
        w0, w1 = max_pool_bounds(rois[:, 1], rois[:, 3], self.spatial_scale, self.pooled_w, width)
        # Channels last, so that each gathered cell is one contiguous vector.
        x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        top = tops[0].data
        for ph in range(self.pooled_h):
            for pw in range(self.pooled_w):
                values, argmax = window_max(x_nhwc, batch, h0[:, ph], h1[:, ph], w0[:, pw], w1[:, pw])
                top[:, :, ph, pw] = values
                self.argmax[:, :, ph, pw] = argmax

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        x = bottoms[0].data
        num, channels, height, width = x.shape
        batch = self.batch_indices(bottoms)
        hit = self.argmax >= 0
        plane = (batch[:, None, None, None] * channels
                 + np.arange(channels)[None, :, None, None]) * (height * width)
        index = (plane + self.argmax)[hit]
        # bincount sums the diffs of bins that share a cell (in float64).
        summed = np.bincount(index, weights=tops[0].diff[hit], minlength=x.size)
        bottoms[0].diff[...] = summed.reshape(x.shape)

    def forward_gpu(self, bottoms, tops):
        self.check_rois(bottoms)
        x = bottoms[0].data
        _, channels, height, width = x.shape
        top = tops[0].data
        launch("roi_pooling.cu", "roi_pool_forward", x.dtype, top.size,
               (np.int64(top.size), x, self.kernel_rois(bottoms), np.int32(channels),
                np.int32(height), np.int32(width), np.int32(self.pooled_h),
                np.int32(self.pooled_w), x.dtype.type(self.spatial_scale), top, self.argmax))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        x = bottoms[0].data
        _, channels, height, width = x.shape
        diff = bottoms[0].diff
        diff.fill(0)
        top_diff = tops[0].diff
        launch("roi_pooling.cu", "roi_pool_backward", x.dtype, top_diff.size,
               (np.int64(top_diff.size), top_diff, self.kernel_rois(bottoms), self.argmax,
                np.int32(channels), np.int32(height), np.int32(width),
                np.int32(self.pooled_h), np.int32(self.pooled_w), diff))


# -- PSROIPooling -----------------------------------------------------------------

def ps_pool_bounds(low, high, scale, group_size, size):
    """Bin bounds of PSROIPooling along one axis.

    low, high: ``(R,)`` RoI coordinates in image pixels. Returns ``start,
    end`` ``(R, group_size)`` int64, ``[start, end)`` clipped to ``[0, size]``:
    the RoI spans ``round(low) * scale`` to ``(round(high) + 1) * scale``
    (floats, length at least 0.1), bin ``p`` from ``floor(p * bin + start)``
    to ``ceil((p + 1) * bin + start)``.
    """
    dtype = low.dtype
    scale = dtype.type(scale)
    first = round_half_away(low) * scale
    last = (round_half_away(high) + 1) * scale
    length = np.maximum(last - first, dtype.type(0.1))
    bin_size = length / dtype.type(group_size)
    p = np.arange(group_size, dtype=dtype)
    start = np.floor(p * bin_size[:, None] + first[:, None])
    end = np.ceil((p + 1) * bin_size[:, None] + first[:, None])
    # Clip while still floating, so that far-away RoIs cannot overflow the cast.
    return (np.clip(start, 0, size).astype(np.int64), np.clip(end, 0, size).astype(np.int64))


def integral_image(x):
    """Summed-area table ``(N, C, H + 1, W + 1)`` float64 of ``x`` ``(N, C, H, W)``:
    ``S[..., h, w] = sum(x[..., :h, :w])``, so any rectangle's sum takes four
    look-ups. float64 keeps the differences of large prefix sums accurate."""
    num, channels, height, width = x.shape
    table = np.zeros((num, channels, height + 1, width + 1), np.float64)
    inner = table[:, :, 1:, 1:]
    np.cumsum(x, axis=2, dtype=np.float64, out=inner)
    np.cumsum(inner, axis=3, out=inner)
    return table


@register("PSROIPooling")
class PSROIPoolingLayer(RoILayer):
    """R-FCN position-sensitive RoI average pooling (``psroi_pooling_param``:
    spatial_scale, output_dim, group_size k).

    bottoms: score maps ``(N, output_dim * k * k, H, W)``, RoIs ``(R, 5)``.
    top: ``(R, output_dim, k, k)``: bin ``(ph, pw)`` of class ``c`` is the mean
    of input channel ``(c * k + ph) * k + pw`` over the bin (0 when empty).
    Backward spreads ``top_diff / bin_area`` over the bin in that channel.
    """

    def layer_setup(self, bottoms, tops):
        p = self.param.psroi_pooling_param
        self.spatial_scale = float(p.spatial_scale)
        self.output_dim, self.group_size = int(p.output_dim), int(p.group_size)
        _positive(self, "psroi_pooling_param", spatial_scale=self.spatial_scale,
                  output_dim=self.output_dim, group_size=self.group_size)

    def reshape(self, bottoms, tops):
        self.check_bottom_shapes(bottoms)
        k = self.group_size
        expected = self.output_dim * k * k
        if bottoms[0].shape[1] != expected:
            raise ShapeError(
                f"{self.where}: bottom '{self.bottom_name(0)}' expected {expected} channels "
                f"(output_dim {self.output_dim} x group_size {k} x {k}), found "
                f"{bottoms[0].shape[1]} channels (shape {tuple(bottoms[0].shape)})")
        tops[0].reshape((bottoms[1].shape[0], self.output_dim, k, k))

    def _bins(self, bottoms):
        """Flat indices into the (N, C, H+1, W+1) table of the four corners of
        every top element's bin, ``(R, D, k, k)`` each, and the bin areas."""
        x = bottoms[0].data
        rois = bottoms[1].data.astype(x.dtype, copy=False)
        _, channels, height, width = x.shape
        k = self.group_size
        batch = self.batch_indices(bottoms)
        h0, h1 = ps_pool_bounds(rois[:, 2], rois[:, 4], self.spatial_scale, k, height)
        w0, w1 = ps_pool_bounds(rois[:, 1], rois[:, 3], self.spatial_scale, k, width)
        # Channel (c * k + ph) * k + pw is simply the flat index of (c, ph, pw).
        channel = np.arange(channels).reshape(1, self.output_dim, k, k)
        plane = (batch[:, None, None, None] * channels + channel) * ((height + 1) * (width + 1))
        h0, h1 = h0[:, None, :, None], h1[:, None, :, None]
        w0, w1 = w0[:, None, None, :], w1[:, None, None, :]
        row0, row1 = h0 * (width + 1), h1 * (width + 1)
        corners = (plane + row1 + w1, plane + row0 + w1, plane + row1 + w0, plane + row0 + w0)
        area = (h1 - h0) * (w1 - w0)
        return corners, area

    def forward_cpu(self, bottoms, tops):
        corners, area = self._bins(bottoms)
        table = integral_image(bottoms[0].data).reshape(-1)
        a, b, c, d = (table[i] for i in corners)
        total = (a - b) - (c - d)
        top = np.zeros(total.shape, np.float64)
        np.divide(total, area, out=top, where=area > 0)
        tops[0].data[...] = top

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        x = bottoms[0].data
        num, channels, height, width = x.shape
        corners, area = self._bins(bottoms)
        share = np.zeros(tops[0].shape, np.float64)
        np.divide(tops[0].diff, area, out=share, where=area > 0)
        share = share.reshape(-1)
        # A 2-D difference array: +share at the bin's two "outer" corners and
        # -share at the other two; prefix sums over h and w then add share to
        # exactly the cells of the bin.
        index = np.concatenate([i.reshape(-1) for i in corners])
        weights = np.concatenate([share, -share, -share, share])
        table_size = num * channels * (height + 1) * (width + 1)
        delta = np.bincount(index, weights=weights, minlength=table_size)
        delta = delta.reshape(num, channels, height + 1, width + 1)
        np.cumsum(delta, axis=2, out=delta)
        np.cumsum(delta, axis=3, out=delta)
        bottoms[0].diff[...] = delta[:, :, :height, :width]

    def _kernel_args(self, bottoms):
        x = bottoms[0].data
        _, channels, height, width = x.shape
        return (x, self.kernel_rois(bottoms), np.int32(channels), np.int32(height),
                np.int32(width), np.int32(self.output_dim), np.int32(self.group_size),
                x.dtype.type(self.spatial_scale))

    def forward_gpu(self, bottoms, tops):
        self.check_rois(bottoms)
        top = tops[0].data
        launch("psroi_pooling.cu", "psroi_pool_forward", top.dtype, top.size,
               (np.int64(top.size),) + self._kernel_args(bottoms) + (top,))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        diff = bottoms[0].diff
        diff.fill(0)
        top_diff = tops[0].diff
        launch("psroi_pooling.cu", "psroi_pool_backward", top_diff.dtype, top_diff.size,
               (np.int64(top_diff.size), top_diff) + self._kernel_args(bottoms)[1:] + (diff,))
