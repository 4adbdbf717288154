"""RoI pooling of Fast/Faster R-CNN and R-FCN: ROIPooling (max over RoI
bins) and PSROIPooling (position-sensitive average over RoI bins).

Both take two bottoms, a feature map ``(N, C, H, W)`` and RoIs ``(R, 5)``
``[batch_index, x1, y1, x2, y2]`` in input-image pixels (inclusive corners),
and reproduce the bin geometry of the Caffe forks used by py-faster-rcnn and
py-R-FCN exactly, rounding included (DESIGN.md section 4). The geometry is
computed in the layer's dtype, in the same order of operations as the CUDA
kernels, so both paths pick the same cells.

CPU paths: the bins of all RoIs are pooled together by walking the offsets of
cells inside a bin (``BinCells``), in row-major order within each bin as the
kernels scan them, so max ties and the order of additions are the kernels'.
The Python loop runs over those offsets (at most the largest bin's area) and
over cache-sized groups of bins, never over RoIs.

GPU paths (``layers/cuda/roi_pooling.cu``, ``psroi_pooling.cu``): forward
one thread per top element; backward a gather, one thread per bottom
element summing the (RoI, bin) pairs that read it in RoI then bin order, so
a GPU run gives the same bits every time (an atomicAdd scatter does not),
and GPU training resumes exactly.

The RoI base class and the RoI checks here are shared with ``layers.roi_align``.
"""
import numpy as np

from layers import deferred_checks
from layers.base import Layer, register
from layers.kernels import launch
from netdef.device import array_module
from netdef.errors import DataError, ShapeError

# Upper bound (elements) on the temporary arrays of the CPU RoIAlign paths;
# work over many RoIs is split into blocks of RoIs so that memory stays bounded.
CPU_BLOCK_ELEMENTS = 1 << 22
# Elements of the per-group temporaries of the CPU pooling paths: a group of
# bins is pooled in arrays that stay in the processor's cache.
CACHE_ELEMENTS = 1 << 16


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

    # Map coordinates (RoI x spatial_scale) are cast to int in the kernels;
    # beyond this magnitude the cast would overflow, and an RoI that far
    # outside any map is a caller's bug, not a box.
    MAX_MAP_COORDINATE = 2.0 ** 30

    # The RoIs a deferred check found bad in this pass, (R,) bool, or None.
    _bad_rois = None

    def check_rois(self, bottoms):
        """Raise DataError unless every RoI's batch index lies in [0, N) and
        its coordinates are finite and, scaled to the map, below
        MAX_MAP_COORDINATE in magnitude. One reduction; on the GPU inside a
        Net's forward pass it is read with the loss at the end of the pass
        (``layers.deferred_checks``), and until then ``kernel_rois`` gives
        the kernels the bad RoIs as [0, 0, 0, 0, 0]."""
        self._bad_rois = None
        rois = bottoms[1].data
        if rois.shape[0] == 0:
            return
        xp = array_module(rois)
        num_images = bottoms[0].shape[0]
        batch = rois[:, 0]
        # Written so that NaN fails every comparison and lands in `bad`.
        limit = self.MAX_MAP_COORDINATE / max(abs(self.spatial_scale), 1e-30)
        bad = ~((batch >= 0) & (batch < num_images)) | \
            ~(xp.abs(rois[:, 1:]) < limit).all(axis=1)

        def report(r, roi):
            raise DataError(
                f"{self.where}: bottom '{self.bottom_name(1)}' RoI {int(r)} is "
                f"{roi.tolist()}: expected a batch index in [0, {num_images}) (the images of "
                f"bottom '{self.bottom_name(0)}') and finite coordinates of magnitude below "
                f"{limit:.3g} (2^30 map cells at spatial_scale {self.spatial_scale:g})")

        def details():
            first = xp.argmax(bad)
            return first, rois[first]

        if deferred_checks.check(xp, bad.any(), details, report):
            self._bad_rois = bad

    def reshape_position_sensitive(self, bottoms, tops):
        """Reshape of the position-sensitive layers (PSROIPooling,
        PSROIAlign; ``self.output_dim``, ``self.group_size`` k): the features
        must have ``output_dim * k * k`` channels; top ``(R, output_dim, k, k)``."""
        self.check_bottom_shapes(bottoms)
        k = self.group_size
        expected = self.output_dim * k * k
        if bottoms[0].shape[1] != expected:
            raise ShapeError(
                f"{self.where}: bottom '{self.bottom_name(0)}' expected {expected} channels "
                f"(output_dim {self.output_dim} x group_size {k} x {k}), found "
                f"{bottoms[0].shape[1]} channels (shape {tuple(bottoms[0].shape)})")
        tops[0].reshape((bottoms[1].shape[0], self.output_dim, k, k))

    def batch_indices(self, bottoms):
        """Checked batch index of each RoI, ``(R,)`` int64 (truncated as the
        kernels' cast to int does)."""
        self.check_rois(bottoms)
        return bottoms[1].data[:, 0].astype(np.int64)

    def kernel_rois(self, bottoms):
        """The RoIs as the kernels read them: contiguous, in the feature dtype."""
        xp = array_module(bottoms[0].data)
        rois = xp.ascontiguousarray(bottoms[1].data, dtype=bottoms[0].data.dtype)
        if self._bad_rois is None:
            return rois
        return xp.where(self._bad_rois[:, None], 0, rois)


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


class BinCells:
    """The bins of many RoIs, as flat arrays over ``B = R * P * Q`` (RoI,
    bin row, bin column) triples, and walks over their cells.

    h0, h1: ``(R, P)`` and w0, w1: ``(R, Q)`` cell bounds ``[start, end)``.
    The non-empty bins are taken in groups (``groups``) small enough for the
    per-group temporaries to stay in cache, sorted by shape so that a group's
    bins mostly have one shape. ``walk(group)`` visits every cell of
    every bin of the group in row-major order within its bin, as the kernels
    do: it loops over the offsets ``(i, j)`` from a bin's corner (at most the
    largest bin's area; never over RoIs or bins) and at each offset yields
    the in-plane index ``h * width + w`` of that cell in every bin that
    contains it. The work is proportional to the cells actually pooled.
    """

    def __init__(self, h0, h1, w0, w1, width):
        num, pooled_h = h0.shape
        pooled_w = w0.shape[1]
        shape = (num, pooled_h, pooled_w)
        self.top = np.broadcast_to(h0[:, :, None], shape).reshape(-1)
        self.left = np.broadcast_to(w0[:, None, :], shape).reshape(-1)
        self.rows = np.broadcast_to(np.maximum(h1 - h0, 0)[:, :, None], shape).reshape(-1)
        self.cols = np.broadcast_to(np.maximum(w1 - w0, 0)[:, None, :], shape).reshape(-1)
        self.width = width

    @property
    def area(self):
        """Cells per bin, ``(B,)``."""
        return self.rows * self.cols

    def every_cell(self):
        """Every (bin, cell) pair at once, bins in order and cells in
        row-major order within each bin: ``(owner, cells)``, ``(S,)`` each,
        the bin index (into B) and the in-plane cell index."""
        area = self.area
        owner = np.repeat(np.arange(area.size), area)
        offset = np.arange(owner.size) - np.repeat(np.cumsum(area) - area, area)
        cols = self.cols[owner]
        cells = (self.top[owner] + offset // cols) * self.width + self.left[owner] + offset % cols
        return owner, cells

    def groups(self, values_per_bin):
        """The non-empty bins (indices into B) in groups of about
        ``CACHE_ELEMENTS / values_per_bin``, largest bins first."""
        size = max(1, CACHE_ELEMENTS // max(1, int(values_per_bin)))
        # Sorted by shape, so that most groups hold bins of one shape, whose
        # walks then cover every member at every offset.
        order = np.lexsort((-self.cols, -self.rows))
        order = order[self.area[order] > 0]
        return [order[s:s + size] for s in range(0, order.size, size)]

    def walk(self, group):
        """Yield ``(first, members, cells)`` for each offset inside the bins of
        ``group``: ``first`` for offset (0, 0) (every member's first cell),
        ``members`` the positions in ``group`` of the bins containing the
        offset (None: all of them), ``cells`` their in-plane cell indices."""
        rows, cols = self.rows[group], self.cols[group]
        top, left = self.top[group], self.left[group]
        for i in range(int(rows.max(initial=0))):
            tall = np.flatnonzero(rows > i)
            for j in range(int(cols[tall].max(initial=0))):
                members = tall[cols[tall] > j]
                cells = (top[members] + i) * self.width + left[members] + j
                yield i == 0 and j == 0, (None if members.size == group.size else members), cells


def _keep_greater(best, where, values, cells):
    """Caffe's scan step, in place: where ``values`` (A, C) is strictly
    greater than ``best``, take it and its cell (``cells`` (A, 1) int32), so
    ties keep the earlier cell, the first in row-major order.

    Arithmetic instead of np.where/copyto(where=), which are several times
    slower on unpredictable masks. np.maximum equals the strict-greater pick
    except that a NaN propagates (and +-0 may swap sign).
    """
    greater = (values > best).astype(np.int32)
    np.maximum(best, values, out=best)
    step = cells - where
    step *= greater
    where += step


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
        num, channels, height, width = x.shape
        h0, h1 = max_pool_bounds(rois[:, 2], rois[:, 4], self.spatial_scale, self.pooled_h, height)
        w0, w1 = max_pool_bounds(rois[:, 1], rois[:, 3], self.spatial_scale, self.pooled_w, width)
        bins = BinCells(h0, h1, w0, w1, width)
        # Channels last, so that each gathered cell is one contiguous vector.
        x_cells = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(num * height * width, channels)
        image = np.repeat(batch * (height * width), self.pooled_h * self.pooled_w)
        best = np.zeros((bins.area.size, channels), x.dtype)      # empty bins stay 0
        where = np.full((bins.area.size, channels), -1, np.int32)  # and -1
        for group in bins.groups(channels):
            base = image[group]
            group_best = group_where = None
            # Caffe's scan: a bin's first cell, then each later cell that is
            # strictly greater, so ties go to the first in row-major order.
            for first, members, cells in bins.walk(group):
                values = x_cells[(base if members is None else base[members]) + cells]
                cells = cells.astype(np.int32)[:, None]
                if first:
                    group_best, group_where = values, np.repeat(cells, channels, axis=1)
                elif members is None:
                    _keep_greater(group_best, group_where, values, cells)
                else:
                    current, current_where = group_best[members], group_where[members]
                    _keep_greater(current, current_where, values, cells)
                    group_best[members], group_where[members] = current, current_where
            best[group] = group_best
            where[group] = group_where
        shape = (batch.size, self.pooled_h, self.pooled_w, channels)
        tops[0].data[...] = best.reshape(shape).transpose(0, 3, 1, 2)
        self.argmax[...] = where.reshape(shape).transpose(0, 3, 1, 2)

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
        x, diff = bottoms[0].data, bottoms[0].diff
        _, channels, height, width = x.shape
        # A gather over each bottom cell's bins (deterministic; see the
        # kernel): it assigns every element, so diff is not zeroed first.
        launch("roi_pooling.cu", "roi_pool_backward", x.dtype, diff.size,
               (np.int64(diff.size), tops[0].diff, self.kernel_rois(bottoms), self.argmax,
                np.int64(bottoms[1].shape[0]), np.int32(channels), np.int32(height),
                np.int32(width), np.int32(self.pooled_h), np.int32(self.pooled_w),
                x.dtype.type(self.spatial_scale), diff))


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
        self.reshape_position_sensitive(bottoms, tops)

    def _bins(self, bottoms):
        """The bins (``BinCells`` over (RoI, ph, pw)), and per bin its image
        and its position ``ph * k + pw``, ``(B,)`` each."""
        x = bottoms[0].data
        rois = bottoms[1].data.astype(x.dtype, copy=False)
        _, _, height, width = x.shape
        k = self.group_size
        batch = self.batch_indices(bottoms)
        h0, h1 = ps_pool_bounds(rois[:, 2], rois[:, 4], self.spatial_scale, k, height)
        w0, w1 = ps_pool_bounds(rois[:, 1], rois[:, 3], self.spatial_scale, k, width)
        return (BinCells(h0, h1, w0, w1, width), np.repeat(batch, k * k),
                np.tile(np.arange(k * k), batch.size))

    def _cell_major(self, x):
        """``(N * H * W * k * k, D)`` view of x's channels: row
        ``((n * H + h) * W + w) * k * k + ph * k + pw`` holds channel
        ``(c * k + ph) * k + pw`` for every class c, so a bin reads its D
        values at a cell as one contiguous row."""
        num, _, height, width = x.shape
        kk = self.group_size ** 2
        return np.ascontiguousarray(
            x.reshape(num, self.output_dim, kk, height, width).transpose(0, 3, 4, 2, 1)
        ).reshape(-1, self.output_dim)

    def forward_cpu(self, bottoms, tops):
        x = bottoms[0].data
        _, _, height, width = x.shape
        kk = self.group_size ** 2
        bins, image, position = self._bins(bottoms)
        table = self._cell_major(x)
        row = image * (height * width * kk) + position   # the bin's row at cell 0
        total = np.zeros((row.size, self.output_dim), x.dtype)
        # Summed cell by cell in row-major order within each bin, in the
        # layer's dtype: the kernels' (and Caffe's) order of additions.
        for group in bins.groups(self.output_dim):
            base = row[group]
            group_total = np.zeros((group.size, self.output_dim), x.dtype)
            for _, members, cells in bins.walk(group):
                if members is None:
                    group_total += table[base + cells * kk]
                else:
                    group_total[members] += table[base[members] + cells * kk]
            total[group] = group_total
        area = bins.area.astype(x.dtype)[:, None]
        top = np.zeros_like(total)
        np.divide(total, area, out=top, where=area > 0)
        k = self.group_size
        tops[0].data[...] = top.reshape(-1, k, k, self.output_dim).transpose(0, 3, 1, 2)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        x = bottoms[0].data
        _, channels, height, width = x.shape
        k, dim = self.group_size, self.output_dim
        bins, image, position = self._bins(bottoms)
        area = bins.area.astype(x.dtype)[:, None]
        share = np.zeros((bins.area.size, dim), x.dtype)
        top_diff = tops[0].diff.transpose(0, 2, 3, 1).reshape(share.shape)
        np.divide(top_diff, area, out=share, where=area > 0)
        # Flat index into x of class 0's channel plane of each bin; class c's
        # plane lies c * k * k planes further.
        plane = (image * channels + position) * (height * width)
        class_offset = np.arange(dim) * (k * k * height * width)
        owner, cells = bins.every_cell()
        index = ((plane[owner] + cells)[:, None] + class_offset).reshape(-1)
        # bincount sums what overlapping bins give one cell (in float64).
        summed = np.bincount(index, weights=share[owner].reshape(-1), minlength=x.size)
        bottoms[0].diff[...] = summed.reshape(x.shape)

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
        x, diff = bottoms[0].data, bottoms[0].diff
        _, channels, height, width = x.shape
        # A gather over each bottom cell's bins (deterministic; see the
        # kernel): it assigns every element, so diff is not zeroed first.
        launch("psroi_pooling.cu", "psroi_pool_backward", x.dtype, diff.size,
               (np.int64(diff.size), tops[0].diff, self.kernel_rois(bottoms),
                np.int64(bottoms[1].shape[0]), np.int32(channels), np.int32(height),
                np.int32(width), np.int32(self.group_size), x.dtype.type(self.spatial_scale),
                diff))
