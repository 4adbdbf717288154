"""RoIAlign feature extractors: ROIAlign (Mask R-CNN, and Detectron2's
ROIAlignV2 with ``aligned``) and PSROIAlign (its position-sensitive form for
R-FCN heads).

Each bin of a RoI is the average of bilinear samples on a regular grid inside
the bin (Detectron2's rules): a RoI ``[x1, x2]`` covers
``x1 * scale - offset`` to ``x2 * scale - offset`` map cells, offset 0.5 when
``aligned`` (else 0, and the size is made at least 1); ``sampling_ratio``
samples per bin and axis, or ``ceil(roi size / pooled)`` when it is 0; a
sample beyond ``[-1, H]`` counts 0, otherwise its coordinate is clamped into
``[0, H - 1]``; the mean divides by the grid size (at least 1).

One departure, the bound on the adaptive grid: with ``sampling_ratio`` 0 a
bin takes at most ``ceil(H / pooled_h)`` x ``ceil(W / pooled_w)`` samples
(``adaptive_grid_bound``), the grid of a RoI exactly as large as the map,
on both paths. It never binds for a RoI no longer than the map along that
axis, so never for a RoI inside the image when the map has at least image
size x spatial_scale cells (as a trunk of padded strided layers gives); a
larger RoI is sampled more sparsely instead of one GPU thread looping over
as many as (2^31 / pooled)^2 samples (RoIs are checked to lie within 2^30
map cells) and the CPU path allocating them. With the bound a forward
thread visits at most about H * W / (pooled_h * pooled_w) samples. A fixed
``sampling_ratio`` is taken as given.

The GPU backward is a gather, one thread per bottom element over the
samples of every RoI that touch it (``layers/cuda/roi_align.cu``), so it
adds in the same order on every run: no atomicAdd.

CPU path: bilinear sampling is separable, so the samples of bin ``(p, q)``
sum to ``Ay[r, p, :] @ X[b_r, c] @ Ax[r, q, :]`` where ``Ay`` (``Ax``)
gathers, per bin row (column), the interpolation weight of every map row
(column) over the bin's samples. That turns both passes into a few matrix
products over blocks of RoIs, with no loop over RoIs or samples.
"""
import numpy as np

from layers.base import register
from layers.kernels import launch
from layers.roi_pooling import RoILayer, _positive, roi_blocks


def adaptive_grid_bound(size, pooled):
    """The most samples per bin, along an axis of ``size`` map cells split
    into ``pooled`` bins, that the adaptive grid (sampling_ratio 0) takes:
    ``ceil(size / pooled)``, what a RoI exactly as long as the map gets."""
    return -(-int(size) // int(pooled))


def align_axis_weights(low, high, scale, pooled, size, sampling_ratio, aligned):
    """Interpolation weights of one axis.

    low, high: ``(R,)`` RoI coordinates in image pixels (x1, x2 or y1, y2),
    in the layer dtype, which all positions are computed in (as the kernels do).
    Returns ``weights`` ``(R, pooled, size)`` float64, the summed bilinear
    weight of each map cell over the samples of each bin, and ``grid`` ``(R,)``
    int64, the number of samples per bin along this axis.
    """
    dtype = low.dtype
    scale = dtype.type(scale)
    offset = dtype.type(0.5 if aligned else 0.0)
    start = low * scale - offset
    length = (high * scale - offset) - start
    if not aligned:
        length = np.maximum(length, dtype.type(1))
    bin_size = length / dtype.type(pooled)
    num = low.shape[0]
    if sampling_ratio > 0:
        grid = np.full(num, sampling_ratio, np.int64)
    else:
        # An inverted aligned RoI has a negative size: no samples at all.
        # Clipped while still floating: a RoI of 2^30 cells overflows nothing.
        grid = np.clip(np.ceil(bin_size), 0, adaptive_grid_bound(size, pooled)).astype(np.int64)

    # One entry per sample, in (RoI, bin, sample) order, without padding.
    per_bin = np.repeat(grid, pooled)
    owner = np.repeat(np.arange(num * pooled), per_bin)          # flat (r, p)
    first = np.repeat(np.cumsum(per_bin) - per_bin, per_bin)
    i = (np.arange(owner.size) - first).astype(dtype)              # sample in bin
    r, p = owner // pooled, (owner % pooled).astype(dtype)
    v = start[r] + p * bin_size[r] + (i + dtype.type(0.5)) * bin_size[r] / grid[r].astype(dtype)

    inside = (v >= -1) & (v <= size)
    v = np.where(inside, np.maximum(v, 0), 0)
    cell = v.astype(np.int64)
    edge = cell >= size - 1
    cell = np.where(edge, size - 1, cell)
    v = np.where(edge, cell.astype(dtype), v)
    w_high = (v - cell.astype(dtype)) * inside
    w_low = (dtype.type(1) - (v - cell.astype(dtype))) * inside
    high_cell = np.where(edge, cell, cell + 1)
    weights = (np.bincount(owner * size + cell, weights=w_low, minlength=num * pooled * size)
               + np.bincount(owner * size + high_cell, weights=w_high, minlength=num * pooled * size))
    return weights.reshape(num, pooled, size), grid


def _per_image(weights, batch, num_images):
    """``(R, P, size)`` -> ``(R, P, N, size)``, each RoI's weights placed in
    its own image's slot (zeros elsewhere), so that one matrix product over
    ``N * size`` reads every RoI from its image."""
    num, pooled, size = weights.shape
    spread = np.zeros((num, pooled, num_images, size), weights.dtype)
    spread[np.arange(num), :, batch, :] = weights
    return spread


class _AlignLayer(RoILayer):
    """Parameter reading and kernel arguments shared by both layers."""

    param_name = None

    def read_align_param(self, p):
        self.spatial_scale = float(p.spatial_scale)
        self.sampling_ratio = int(p.sampling_ratio)
        self.aligned = bool(p.aligned)
        _positive(self, self.param_name, spatial_scale=self.spatial_scale)
        if self.sampling_ratio < 0:
            raise self.definition_error(
                f"{self.param_name}: expected sampling_ratio >= 0 (0 = adaptive), "
                f"found {self.sampling_ratio}")

    def geometry(self, bottoms, pooled_h, pooled_w):
        """Checked batch indices ``(R,)``, weights ``Ay`` ``(R, pooled_h, H)`` and
        ``Ax`` ``(R, pooled_w, W)`` in the feature dtype, and the sample count
        per bin ``(R,)`` (at least 1)."""
        x = bottoms[0].data
        rois = bottoms[1].data.astype(x.dtype, copy=False)
        batch = self.batch_indices(bottoms)
        args = (self.sampling_ratio, self.aligned)
        ay, grid_h = align_axis_weights(rois[:, 2], rois[:, 4], self.spatial_scale, pooled_h,
                                        x.shape[2], *args)
        ax, grid_w = align_axis_weights(rois[:, 1], rois[:, 3], self.spatial_scale, pooled_w,
                                        x.shape[3], *args)
        count = np.maximum(grid_h * grid_w, 1)
        return batch, ay.astype(x.dtype), ax.astype(x.dtype), count

    def kernel_args(self, bottoms, pooled_h, pooled_w):
        x = bottoms[0].data
        _, channels, height, width = x.shape
        return (self.kernel_rois(bottoms), np.int32(channels), np.int32(height), np.int32(width),
                np.int32(pooled_h), np.int32(pooled_w), x.dtype.type(self.spatial_scale),
                np.int32(self.sampling_ratio), np.int32(self.aligned))

    def gather_args(self, tops, bottoms, *pooled):
        """Arguments of the backward kernels: a gather, one thread per bottom
        element, which assigns every element of the bottom diff (so it is not
        zeroed first) and adds in a fixed order (deterministic; see the
        kernels). ``pooled``: pooled_h, pooled_w (ROIAlign) or k (PSROIAlign)."""
        x, diff = bottoms[0].data, bottoms[0].diff
        _, channels, height, width = x.shape
        return ((np.int64(diff.size), tops[0].diff, self.kernel_rois(bottoms),
                 np.int64(bottoms[1].shape[0]), np.int32(channels), np.int32(height),
                 np.int32(width)) + tuple(np.int32(p) for p in pooled)
                + (x.dtype.type(self.spatial_scale), np.int32(self.sampling_ratio),
                   np.int32(self.aligned), diff))


@register("ROIAlign")
class ROIAlignLayer(_AlignLayer):
    """RoIAlign (``roi_align_param``: pooled_h, pooled_w, spatial_scale,
    sampling_ratio, aligned).

    bottoms: features ``(N, C, H, W)``, RoIs ``(R, 5)``.
    top: ``(R, C, pooled_h, pooled_w)``, each bin the mean of its bilinear
    samples. Backward spreads each top diff over the four neighbours of every
    sample with the bilinear weights.
    """

    param_name = "roi_align_param"

    def layer_setup(self, bottoms, tops):
        p = self.param.roi_align_param
        self.pooled_h, self.pooled_w = int(p.pooled_h), int(p.pooled_w)
        _positive(self, self.param_name, pooled_h=self.pooled_h, pooled_w=self.pooled_w)
        self.read_align_param(p)

    def reshape(self, bottoms, tops):
        self.check_bottom_shapes(bottoms)
        tops[0].reshape((bottoms[1].shape[0], bottoms[0].shape[1], self.pooled_h, self.pooled_w))

    def forward_cpu(self, bottoms, tops):
        x = bottoms[0].data
        num, channels, height, width = x.shape
        batch, ay, ax, count = self.geometry(bottoms, self.pooled_h, self.pooled_w)
        ph, pw = self.pooled_h, self.pooled_w
        # Rows of the product: (image, map row); columns: (channel, map column).
        x_rows = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(num * height, channels * width)
        top = tops[0].data
        for r in roi_blocks(batch.size, ph * channels * width):
            m = r.stop - r.start
            a = _per_image(ay[r], batch[r], num).reshape(m * ph, num * height)
            t = (a @ x_rows).reshape(m, ph * channels, width)          # summed over rows
            o = t @ ax[r].transpose(0, 2, 1)                           # summed over columns
            top[r] = o.reshape(m, ph, channels, pw).transpose(0, 2, 1, 3)
        top /= count.astype(x.dtype)[:, None, None, None]

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        x = bottoms[0].data
        num, channels, height, width = x.shape
        batch, ay, ax, count = self.geometry(bottoms, self.pooled_h, self.pooled_w)
        ph, pw = self.pooled_h, self.pooled_w
        g = tops[0].diff / count.astype(x.dtype)[:, None, None, None]
        dx_rows = np.zeros((num * height, channels * width), x.dtype)
        for r in roi_blocks(batch.size, ph * channels * width):
            m = r.stop - r.start
            v = g[r].transpose(0, 2, 1, 3).reshape(m, ph * channels, pw) @ ax[r]
            a = _per_image(ay[r], batch[r], num).reshape(m * ph, num * height)
            dx_rows += a.T @ v.reshape(m * ph, channels * width)
        bottoms[0].diff[...] = dx_rows.reshape(num, height, channels, width).transpose(0, 2, 1, 3)

    def forward_gpu(self, bottoms, tops):
        self.check_rois(bottoms)
        x, top = bottoms[0].data, tops[0].data
        launch("roi_align.cu", "roi_align_forward", x.dtype, top.size,
               (np.int64(top.size), x) + self.kernel_args(bottoms, self.pooled_h, self.pooled_w)
               + (top,))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        diff = bottoms[0].diff
        launch("roi_align.cu", "roi_align_backward", diff.dtype, diff.size,
               self.gather_args(tops, bottoms, self.pooled_h, self.pooled_w))


@register("PSROIAlign")
class PSROIAlignLayer(_AlignLayer):
    """Position-sensitive RoIAlign (``psroi_align_param``: spatial_scale,
    output_dim, group_size k, sampling_ratio, aligned).

    bottoms: score maps ``(N, output_dim * k * k, H, W)``, RoIs ``(R, 5)``.
    top: ``(R, output_dim, k, k)``: bin ``(ph, pw)`` of class ``c`` is the mean
    of the bilinear samples of that bin in input channel ``(c * k + ph) * k + pw``.
    """

    param_name = "psroi_align_param"

    def layer_setup(self, bottoms, tops):
        p = self.param.psroi_align_param
        self.output_dim, self.group_size = int(p.output_dim), int(p.group_size)
        _positive(self, self.param_name, output_dim=self.output_dim, group_size=self.group_size)
        self.read_align_param(p)

    def reshape(self, bottoms, tops):
        self.reshape_position_sensitive(bottoms, tops)

    def _row_channels(self, ph):
        """Input channels read by bin row ``ph``: ``(output_dim, k)``, [c, pw]."""
        k = self.group_size
        return (np.arange(self.output_dim)[:, None] * k + ph) * k + np.arange(k)[None, :]

    def forward_cpu(self, bottoms, tops):
        x = bottoms[0].data
        num, _, height, width = x.shape
        k, dim = self.group_size, self.output_dim
        batch, ay, ax, count = self.geometry(bottoms, k, k)
        top = tops[0].data
        blocks = roi_blocks(batch.size, dim * k * width)
        # Bin row ph reads only its own dim * k channels, so each row of bins
        # is one product over those channels.
        for ph in range(k):
            x_rows = x[:, self._row_channels(ph).reshape(-1)]               # (N, dim*k, H, W)
            x_rows = np.ascontiguousarray(x_rows.transpose(0, 2, 1, 3)).reshape(
                num * height, dim * k * width)
            for r in blocks:
                m = r.stop - r.start
                a = _per_image(ay[r, ph:ph + 1], batch[r], num).reshape(m, num * height)
                t = (a @ x_rows).reshape(m, dim, k, width)
                top[r, :, ph, :] = np.einsum("rcqw,rqw->rcq", t, ax[r])
        top /= count.astype(x.dtype)[:, None, None, None]

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        x = bottoms[0].data
        num, _, height, width = x.shape
        k, dim = self.group_size, self.output_dim
        batch, ay, ax, count = self.geometry(bottoms, k, k)
        g = tops[0].diff / count.astype(x.dtype)[:, None, None, None]
        diff = bottoms[0].diff
        blocks = roi_blocks(batch.size, dim * k * width)
        for ph in range(k):
            dx_rows = np.zeros((num * height, dim * k * width), x.dtype)
            for r in blocks:
                m = r.stop - r.start
                v = g[r, :, ph, :, None] * ax[r, None, :, :]                 # (m, dim, k, W)
                a = _per_image(ay[r, ph:ph + 1], batch[r], num).reshape(m, num * height)
                dx_rows += a.T @ v.reshape(m, dim * k * width)
            # Every channel belongs to exactly one bin row: assign, not add.
            diff[:, self._row_channels(ph).reshape(-1)] = dx_rows.reshape(
                num, height, dim * k, width).transpose(0, 2, 1, 3)

    def forward_gpu(self, bottoms, tops):
        self.check_rois(bottoms)
        x, top = bottoms[0].data, tops[0].data
        args = self.kernel_args(bottoms, self.output_dim, self.group_size)
        launch("roi_align.cu", "psroi_align_forward", x.dtype, top.size,
               (np.int64(top.size), x) + args + (top,))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        diff = bottoms[0].diff
        launch("roi_align.cu", "psroi_align_backward", diff.dtype, diff.size,
               self.gather_args(tops, bottoms, self.group_size))
