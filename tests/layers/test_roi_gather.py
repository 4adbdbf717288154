"""The GPU backward of ROIPooling, PSROIPooling, ROIAlign and PSROIAlign is a
gather: one thread per bottom element sums, in a fixed order, what every
(RoI, bin) pair gives it, so a GPU run adds the same numbers in the same
order every time (no atomicAdd, whose order depends on thread scheduling).

Host-run through the shim against the NumPy path, on many overlapping RoIs
(a cell gets diffs from many bins), bins smaller than a cell, inverted RoIs
(a negative sample step with a fixed sampling_ratio), zero-size aligned RoIs
(all samples at one place) and scales that put bin edges on rounding halves.
Each thread assigns its element, so a bottom diff holding NaN beforehand
(no zeroing launch) must come out equal. On a GPU: three runs give the same
bits."""
from pathlib import Path

import numpy as np
import pytest

from netdef.device import CPU, Device, to_numpy
from netdef.gradcheck import build_layer, setup_layer
from tests.kernel_harness import requires_cxx
from tests.layers import test_psroi_pooling, test_roi_align, test_roi_pooling
from tests.layers.test_roi_pooling import ROIS, distinct

CUDA = Path(__file__).resolve().parents[2] / "layers" / "cuda"


def crowded_rois(num=40, seed=5):
    """RoIs over both images of a 48 x 56 pixel image (6 x 7 cells at scale
    1/8), most overlapping: a few pixels to the whole image, some inverted,
    corners on halves, a few partly outside; plus the shared edge cases."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-8, 64, size=(num, 2))
    size = rng.choice([0.0, 1.0, 3.0, 9.0, 24.0, 60.0], size=(num, 2))
    size *= rng.choice([1.0, -0.5], size=(num, 2), p=[0.8, 0.2])   # some inverted
    corners = np.round(np.hstack([centre - size / 2, centre + size / 2]) * 2) / 2
    crowded = np.column_stack([rng.integers(0, 2, num), corners[:, [0, 1, 2, 3]]])
    return np.vstack([ROIS, crowded])


SPECS = {
    "ROIPooling": (test_roi_pooling.spec(7, 5, 1 / 3), 3),
    "ROIPooling 1/8": (test_roi_pooling.spec(3, 2), 3),
    "PSROIPooling": (test_psroi_pooling.spec(2, 3, 1 / 3), 18),
    "PSROIPooling k=7": (test_psroi_pooling.spec(1, 7), 49),
    "ROIAlign": (test_roi_align.align_spec(7, 5, 1 / 3, 0, False), 3),
    "ROIAlign aligned": (test_roi_align.align_spec(2, 3, 0.125, 0, True), 3),
    "ROIAlign fixed grid": (test_roi_align.align_spec(3, 4, 0.125, 3, True), 3),
    "PSROIAlign": (test_roi_align.ps_spec(2, 3, 1 / 3, 0, False), 18),
    "PSROIAlign fixed grid": (test_roi_align.ps_spec(1, 4, 0.125, 2, True), 16),
}


def backward(text, x, rois, dtype, gpu_path, device=CPU):
    """Forward then backward of one layer (its NumPy path, or its GPU path:
    host-run with NumPy arrays, or on ``device``) with a bottom diff that
    holds NaN before the backward. Returns the bottom diff as NumPy."""
    layer = build_layer(text, dtype=dtype, device=device)
    bottoms, tops = setup_layer(layer, [x.astype(dtype), rois.astype(dtype)])
    (layer.forward_gpu if gpu_path else layer.forward_cpu)(bottoms, tops)
    xp = layer.device.xp
    tops[0].diff[...] = xp.asarray(np.random.default_rng(3).standard_normal(tops[0].shape))
    bottoms[0].diff[...] = np.nan
    (layer.backward_gpu if gpu_path else layer.backward_cpu)(tops, [True, False], bottoms)
    return to_numpy(bottoms[0].diff).copy()


def test_no_atomics_in_the_roi_kernels():
    for name in ("roi_pooling.cu", "psroi_pooling.cu", "roi_align.cu"):
        assert "atomicAdd(" not in (CUDA / name).read_text(), name


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(SPECS))
def test_gather_equals_the_numpy_path(name, dtype):
    text, channels = SPECS[name]
    x, rois = distinct((2, channels, 6, 7)), crowded_rois()
    expected = backward(text, x, rois, dtype, gpu_path=False)
    found = backward(text, x, rois, dtype, gpu_path=True)
    assert np.isfinite(found).all()   # every element assigned
    assert (expected != 0).mean() > 0.4   # not vacuous: many cells receive diffs
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(found, expected, **tol)


@requires_cxx
@pytest.mark.parametrize("name", ["ROIPooling", "ROIPooling 1/8", "PSROIPooling",
                                  "PSROIPooling k=7"])
def test_pooling_gather_adds_in_the_numpy_paths_order(name):
    # The NumPy paths sum each cell's diffs (np.bincount, float64) in RoI,
    # then bin order, as the gathers do: in float64 the results are equal to
    # the last bit, which shows the order is the fixed one.
    text, channels = SPECS[name]
    x, rois = distinct((2, channels, 6, 7)), crowded_rois(seed=9)
    np.testing.assert_array_equal(backward(text, x, rois, np.float64, gpu_path=True),
                                  backward(text, x, rois, np.float64, gpu_path=False))


@requires_cxx
@pytest.mark.parametrize("name", ["ROIPooling", "PSROIAlign fixed grid"])
def test_gather_with_no_rois_gives_zero(name):
    text, channels = SPECS[name]
    found = backward(text, distinct((2, channels, 6, 7)), np.zeros((0, 5)), np.float64,
                     gpu_path=True)
    assert not found.any()


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(SPECS))
def test_gpu_backward_gives_the_same_bits_every_run(name):
    # 300 RoIs on a 6 x 7 map: every cell gets diffs from dozens of bins, whose
    # order an atomicAdd scatter would change from run to run in float32.
    text, channels = SPECS[name]
    x, rois = distinct((2, channels, 6, 7)), crowded_rois(num=300)
    runs = [backward(text, x, rois, np.float32, gpu_path=True, device=Device("gpu", 0))
            for _ in range(3)]
    for run in runs[1:]:
        np.testing.assert_array_equal(run, runs[0])
    np.testing.assert_allclose(runs[0], backward(text, x, rois, np.float32, gpu_path=False),
                               rtol=1e-4, atol=1e-5)
