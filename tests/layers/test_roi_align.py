"""ROIAlign and PSROIAlign: forward and backward against a plain loop
reference of Detectron2's sampling rules (adaptive and fixed sampling ratio,
aligned and not) over RoIs outside the map, inverted, one pixel, the whole
image, in two images, and on 1-row / 1-column maps; float64 gradient checks;
the adaptive grid's bound on a huge RoI (and that it never binds inside the
map); the GPU paths host-run and on a GPU; every error."""
import math

import numpy as np
import pytest

from layers import kernels
from layers.roi_align import adaptive_grid_bound, align_axis_weights
from netdef.errors import DataError, NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host
from tests.layers.test_roi_pooling import ROIS, SCALE, run_layer


def align_spec(pooled_h=2, pooled_w=3, scale=SCALE, sampling_ratio=0, aligned=False):
    return (f'name: "align" type: "ROIAlign" bottom: "feat" bottom: "rois" top: "pooled" '
            f'roi_align_param {{ pooled_h: {pooled_h} pooled_w: {pooled_w} spatial_scale: {scale} '
            f'sampling_ratio: {sampling_ratio} aligned: {str(aligned).lower()} }}')


def ps_spec(output_dim=2, group_size=3, scale=SCALE, sampling_ratio=0, aligned=False):
    return (f'name: "psalign" type: "PSROIAlign" bottom: "score" bottom: "rois" top: "pooled" '
            f'psroi_align_param {{ spatial_scale: {scale} output_dim: {output_dim} '
            f'group_size: {group_size} sampling_ratio: {sampling_ratio} '
            f'aligned: {str(aligned).lower()} }}')


def features(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def neighbours(v, size):
    """[(cell, weight), ...] of a sample at v on an axis of `size` cells;
    [] when v lies beyond [-1, size]."""
    if v < -1 or v > size:
        return []
    v = max(v, 0.0)
    low = int(v)
    if low >= size - 1:
        return [(size - 1, 1.0)]
    return [(low, 1.0 - (v - low)), (low + 1, v - low)]


def adaptive_grid(roi_size, pooled, map_size):
    """Samples per bin along an axis with sampling_ratio 0: ceil(roi size /
    pooled), bounded by what a RoI as long as the map gets, ceil(map size /
    pooled) (none for an inverted aligned RoI)."""
    return max(min(math.ceil(roi_size / pooled), math.ceil(map_size / pooled)), 0)


def bin_samples(roi, scale, pooled_h, pooled_w, ph, pw, sampling_ratio, aligned, height, width):
    """[(h, w, weight), ...] of bin (ph, pw): bilinear weight / sample count."""
    _, x1, y1, x2, y2 = roi
    offset = 0.5 if aligned else 0.0
    start_w, start_h = x1 * scale - offset, y1 * scale - offset
    roi_w, roi_h = (x2 * scale - offset) - start_w, (y2 * scale - offset) - start_h
    if not aligned:
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
    grid_h = sampling_ratio if sampling_ratio > 0 else adaptive_grid(roi_h, pooled_h, height)
    grid_w = sampling_ratio if sampling_ratio > 0 else adaptive_grid(roi_w, pooled_w, width)
    count = max(grid_h * grid_w, 1)
    out = []
    for iy in range(grid_h):
        y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
        for ix in range(grid_w):
            x = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
            for h, wy in neighbours(y, height):
                for w, wx in neighbours(x, width):
                    out.append((h, w, wy * wx / count))
    return out


def reference(x, rois, top_diff, pooled_h, pooled_w, scale, sampling_ratio, aligned,
              output_dim=None):
    """Top and bottom diff, one top element at a time. output_dim: PSROIAlign
    (pooled_h = pooled_w = k, channel (c * k + ph) * k + pw)."""
    scale = float(np.float32(scale))   # the schema stores spatial_scale as a float
    _, channels, height, width = x.shape
    out_channels = channels if output_dim is None else output_dim
    top = np.zeros((len(rois), out_channels, pooled_h, pooled_w))
    dx = np.zeros(x.shape)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                samples = bin_samples(roi, scale, pooled_h, pooled_w, ph, pw, sampling_ratio,
                                      aligned, height, width)
                for c in range(out_channels):
                    channel = c if output_dim is None else (c * pooled_h + ph) * pooled_w + pw
                    for h, w, weight in samples:
                        top[r, c, ph, pw] += weight * x[b, channel, h, w]
                        dx[b, channel, h, w] += weight * top_diff[r, c, ph, pw]
    return top, dx


SETTINGS = [  # (sampling_ratio, aligned)
    (0, False), (0, True), (2, False), (2, True), (1, True)]


@pytest.mark.parametrize("sampling_ratio,aligned", SETTINGS)
@pytest.mark.parametrize("pooled_h,pooled_w,shape", [(2, 3, (2, 3, 6, 7)), (1, 1, (2, 2, 6, 7)),
                                                     (3, 2, (2, 2, 1, 5)), (2, 2, (2, 2, 4, 1))])
def test_roi_align_matches_reference(pooled_h, pooled_w, shape, sampling_ratio, aligned):
    x = features(shape)
    dy = features((len(ROIS), shape[1], pooled_h, pooled_w), seed=1)
    expected, dx = reference(x, ROIS, dy, pooled_h, pooled_w, SCALE, sampling_ratio, aligned)
    _, bottoms, tops = run_layer(align_spec(pooled_h, pooled_w, SCALE, sampling_ratio, aligned),
                                 [x, ROIS], top_diff=dy)
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, dx, rtol=1e-12, atol=1e-12)
    assert not bottoms[1].diff.any()


@pytest.mark.parametrize("sampling_ratio,aligned", SETTINGS)
@pytest.mark.parametrize("output_dim,k,scale", [(2, 3, SCALE), (1, 1, SCALE), (1, 4, 1 / 3)])
def test_psroi_align_matches_reference(output_dim, k, scale, sampling_ratio, aligned):
    x = features((2, output_dim * k * k, 6, 7))
    dy = features((len(ROIS), output_dim, k, k), seed=1)
    expected, dx = reference(x, ROIS, dy, k, k, scale, sampling_ratio, aligned, output_dim)
    _, bottoms, tops = run_layer(ps_spec(output_dim, k, scale, sampling_ratio, aligned),
                                 [x, ROIS], top_diff=dy)
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, dx, rtol=1e-12, atol=1e-12)


def test_float32_matches_reference():
    x = features((2, 3, 6, 7))
    dy = np.zeros((len(ROIS), 3, 2, 3))
    expected, _ = reference(x, ROIS, dy, 2, 3, SCALE, 0, True)
    _, _, tops = run_layer(align_spec(aligned=True), [x, ROIS], dtype=np.float32)
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aligned,centres", [(True, [1.0, 2.0]), (False, [1.5, 2.5])])
def test_aligned_shifts_by_half_a_cell(aligned, centres):
    # On the map x[h, w] = w every bin averages to the mean x of its samples,
    # the bin centre. RoI x from 8 to 24 pixels at scale 1/8: map 1 to 3, or
    # 0.5 to 2.5 after the half-cell shift; two bins.
    x = np.broadcast_to(np.arange(6, dtype=np.float64), (1, 1, 4, 6))
    _, _, tops = run_layer(align_spec(1, 2, SCALE, 0, aligned), [x, [[0, 8, 8, 24, 24]]])
    np.testing.assert_allclose(tops[0].data.ravel(), centres, rtol=1e-12)


def test_inverted_aligned_roi_gives_zero_and_unaligned_one_cell():
    x = features((1, 1, 6, 7)) + 10.0
    roi = [[0, 30, 30, 10, 12]]
    _, _, tops = run_layer(align_spec(1, 1, SCALE, 0, True), [x, roi])
    assert tops[0].data.ravel()[0] == 0.0
    _, _, tops = run_layer(align_spec(1, 1, SCALE, 0, False), [x, roi])
    assert tops[0].data.ravel()[0] > 0.0   # at least one cell, sampled once


# RoIs of 1e8 map cells at scale 1/8 (within the 2^30 the RoI check allows).
# Unbounded, the adaptive grid would give each of their bins about 5e7 x 3e7
# samples: a GPU thread would loop for hours and the CPU path run out of memory.
HUGE_ROIS = np.array([[0, -4e8, -4e8, 4e8, 4e8], [1, 0, -3e8, 8, 5e8]])


@pytest.mark.parametrize("aligned", [False, True])
def test_huge_roi_takes_the_bounded_grid(aligned):
    assert adaptive_grid_bound(6, 2) == 3 and adaptive_grid_bound(7, 3) == 3
    _, grid_h = align_axis_weights(HUGE_ROIS[:, 2], HUGE_ROIS[:, 4], SCALE, 2, 6, 0, aligned)
    _, grid_w = align_axis_weights(HUGE_ROIS[:, 1], HUGE_ROIS[:, 3], SCALE, 3, 7, 0, aligned)
    assert grid_h.tolist() == [3, 3] and grid_w.tolist() == [3, 1]
    x = features((2, 3, 6, 7))
    dy = features((2, 3, 2, 3), seed=1)
    expected, dx = reference(x, HUGE_ROIS, dy, 2, 3, SCALE, 0, aligned)
    _, bottoms, tops = run_layer(align_spec(2, 3, SCALE, 0, aligned), [x, HUGE_ROIS],
                                 top_diff=dy)
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, dx, rtol=1e-12, atol=1e-12)


@requires_cxx
@pytest.mark.parametrize("aligned", [False, True])
def test_huge_roi_gpu_paths_on_host(aligned):
    # The kernels apply the same bound (unbounded, this would not finish).
    for dtype in (np.float32, np.float64):
        run_gpu_path_on_host(align_spec(2, 3, SCALE, 0, aligned), [features((2, 3, 6, 7)),
                                                                   HUGE_ROIS], dtype=dtype)
        run_gpu_path_on_host(ps_spec(2, 3, SCALE, 0, aligned), [features((2, 18, 6, 7)),
                                                                HUGE_ROIS], dtype=dtype)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("pooled,size", [(1, 6), (2, 7), (3, 6), (7, 7), (7, 20)])
def test_grid_bound_never_binds_for_rois_inside_the_map(pooled, size, aligned):
    # RoIs inside an image of size / SCALE pixels are at most size cells long.
    rng = np.random.default_rng(pooled * size)
    low = rng.uniform(0, size / SCALE - 1, 300)
    high = low + rng.uniform(0, 1, 300) * (size / SCALE - 1 - low)
    _, grid = align_axis_weights(low, high, SCALE, pooled, size, 0, aligned)
    length = (high - low) * SCALE if aligned else np.maximum((high - low) * SCALE, 1)
    np.testing.assert_array_equal(grid, np.ceil(length / pooled))
    assert (grid == adaptive_grid_bound(size, pooled)).any()   # reached, not exceeded


@pytest.mark.parametrize("text,c,top_shape", [(align_spec(), 3, (0, 3, 2, 3)),
                                              (ps_spec(1, 3), 9, (0, 1, 3, 3))])
def test_no_rois_give_empty_top(text, c, top_shape):
    _, bottoms, tops = run_layer(text, [features((2, c, 6, 7)), np.zeros((0, 5))],
                                 top_diff=np.zeros(top_shape))
    assert tops[0].shape == top_shape
    assert not bottoms[0].diff.any()


@pytest.mark.parametrize("sampling_ratio,aligned", [(0, False), (2, True)])
def test_gradients(sampling_ratio, aligned):
    assert not build_layer(align_spec()).allow_force_backward(1)
    assert not build_layer(ps_spec()).allow_force_backward(1)
    result = check_layer(align_spec(2, 3, SCALE, sampling_ratio, aligned),
                         [features((2, 2, 5, 6)), ROIS])
    assert result.passed, result.report()
    result = check_layer(ps_spec(2, 2, SCALE, sampling_ratio, aligned),
                         [features((2, 8, 5, 6)), ROIS])
    assert result.passed, result.report()
    assert list(result.worst_per_blob) == ["bottom 0 'score'"]


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sampling_ratio,aligned", SETTINGS)
@pytest.mark.parametrize("height,width", [(6, 7), (1, 5), (4, 1)])
def test_gpu_paths_on_host(dtype, sampling_ratio, aligned, height, width):
    # 1-row and 1-column maps put samples exactly on the far edge (v == size),
    # which must still count (the reference's neighbours()).
    tol = {} if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    run_gpu_path_on_host(align_spec(2, 3, SCALE, sampling_ratio, aligned),
                         [features((2, 3, height, width)), ROIS], dtype=dtype, **tol)
    run_gpu_path_on_host(ps_spec(2, 3, SCALE, sampling_ratio, aligned),
                         [features((2, 18, height, width)), ROIS], dtype=dtype, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sampling_ratio,aligned", [(0, False), (2, True)])
def test_gpu_matches_cpu(dtype, sampling_ratio, aligned):
    compare_devices(align_spec(2, 3, SCALE, sampling_ratio, aligned),
                    [features((2, 3, 6, 7)), ROIS], dtype=dtype)
    compare_devices(ps_spec(2, 3, SCALE, sampling_ratio, aligned),
                    [features((2, 18, 6, 7)), ROIS], dtype=dtype)


# -- errors -------------------------------------------------------------------------

def test_psroi_align_channels_must_match():
    with pytest.raises(ShapeError, match=r"layer 'psalign'.*bottom 'score' expected 18 channels "
                                         r"\(output_dim 2 x group_size 3 x 3\), found 16"):
        run_layer(ps_spec(), [np.zeros((2, 16, 6, 7)), ROIS])


@pytest.mark.parametrize("text,c", [(align_spec(), 3), (ps_spec(), 18)])
def test_rois_must_be_r_by_5(text, c):
    with pytest.raises(ShapeError, match=r"bottom 'rois' expected RoIs of shape \(R, 5\)"):
        run_layer(text, [np.zeros((2, c, 6, 7)), np.zeros((3, 6))])


@pytest.mark.parametrize("gpu_path", [False, True])
@pytest.mark.parametrize("text,c", [(align_spec(), 3), (ps_spec(), 18)])
def test_batch_index_out_of_range(text, c, gpu_path):
    if gpu_path and kernels.host_compiler() is None:
        pytest.skip("no C++ compiler for the host shim")
    rois = np.vstack([ROIS[:2], [[2, 0, 0, 8, 8]]])
    with pytest.raises(DataError, match=r"bottom 'rois' RoI 2 is .*expected a batch index in "
                                        r"\[0, 2\)"):
        run_layer(text, [features((2, c, 6, 7)), rois], gpu_path=gpu_path)


@pytest.mark.parametrize("text,message", [
    ('type: "ROIAlign" roi_align_param { pooled_h: 2 }', "roi_align_param: expected positive "
                                                         "values, found pooled_w 0"),
    ('type: "ROIAlign" roi_align_param { pooled_h: 2 pooled_w: 2 sampling_ratio: -1 }',
     r"roi_align_param: expected sampling_ratio >= 0 \(0 = adaptive\), found -1"),
    ('type: "PSROIAlign" psroi_align_param { output_dim: 2 }',
     "psroi_align_param: expected positive values, found group_size 0"),
    ('type: "PSROIAlign" psroi_align_param { output_dim: 2 group_size: 3 spatial_scale: -1 }',
     "psroi_align_param: expected positive values, found spatial_scale -1"),
])
def test_bad_parameters(text, message):
    with pytest.raises(NetDefinitionError, match=message):
        run_layer('name: "bad" ' + text, [np.zeros((2, 18, 6, 7)), ROIS])
