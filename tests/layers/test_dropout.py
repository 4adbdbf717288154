"""Dropout: mask structure and scaling, keep fraction (statistically),
reproducible draws from the layer's seed, TEST phase, scale_train false, in
place, float64 gradient checks with the mask held fixed, the GPU path
host-run and on a GPU, errors."""
import numpy as np
import pytest

from netdef.blob import Blob
from netdef.errors import NetDefinitionError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host


def spec(fields=""):
    return f'name: "drop" type: "Dropout" bottom: "x" top: "y" dropout_param {{ {fields} }}'


def rand(*shape, seed=0):
    # Bounded away from 0, so "dropped" (0) and "kept" are told apart by value.
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


def keep_scale(ratio):
    # dropout_ratio is a proto float: the layer sees its float32 value.
    return 1.0 / (1.0 - float(np.float32(ratio)))


def run(fields, x, phase="TRAIN", seed=0, dtype=np.float64, top_diff=None, device=None):
    kwargs = {} if device is None else {"device": device}
    layer = build_layer(spec(fields), phase=phase, dtype=dtype, seed=seed, **kwargs)
    bottoms, tops = setup_layer(layer, [np.asarray(x, dtype=dtype)])
    layer.forward(bottoms, tops)
    if top_diff is not None:
        tops[0].diff[...] = layer.device.xp.asarray(top_diff, dtype=dtype)
        layer.backward(tops, [True], bottoms)
    return layer, bottoms, tops


@pytest.mark.parametrize("ratio", [0.5, 0.2, 0.9])
def test_train_forward_backward_use_one_mask(ratio):
    x = rand(3, 4, 5, 6)
    dy = rand(*x.shape, seed=1)
    layer, bottoms, tops = run(f"dropout_ratio: {ratio}", x, top_diff=dy)
    y, scale = tops[0].data, keep_scale(ratio)
    kept = y != 0
    assert 0 < kept.sum() < kept.size
    # Each unit either dropped or kept and scaled by 1 / (1 - ratio).
    np.testing.assert_allclose(y, np.where(kept, x * scale, 0.0), rtol=1e-15)
    np.testing.assert_array_equal(layer.mask, np.where(kept, scale, 0.0))
    np.testing.assert_allclose(bottoms[0].diff, np.where(kept, dy * scale, 0.0), rtol=1e-15)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keep_fraction_and_expectation(ratio, dtype):
    n = 200_000
    x = np.ones((n,))
    _, _, tops = run(f"dropout_ratio: {ratio}", x, dtype=dtype, seed=7)
    y = tops[0].data.astype(np.float64)
    keep = 1.0 - ratio
    sigma = np.sqrt(keep * (1.0 - keep) / n)
    assert abs(np.mean(y != 0) - keep) < 5 * sigma
    assert set(np.unique(y)) == {0.0, float(dtype(keep_scale(ratio)))}
    # Scaling keeps the expectation: E[y] = x.
    assert abs(y.mean() - 1.0) < 5 * sigma / keep


def test_masks_are_fresh_each_forward_and_reproducible_from_the_seed():
    x = rand(4, 50)

    def three_masks(seed):
        layer, bottoms, tops = run("", x, seed=seed)
        masks = [layer.mask.copy()]
        for _ in range(2):
            layer.forward(bottoms, tops)
            masks.append(layer.mask.copy())
        assert layer.mask_draws == 3
        return masks

    first, again, other = three_masks(0), three_masks(0), three_masks(1)
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[1], first[2])
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_mask_draws_is_the_random_state():
    x = rand(4, 50)
    layer, bottoms, tops = run("", x)
    layer.forward(bottoms, tops)
    second = tops[0].data.copy()
    layer.mask_draws = 1  # as a snapshot restore would set it
    layer.forward(bottoms, tops)
    np.testing.assert_array_equal(tops[0].data, second)


@pytest.mark.parametrize("fields", ["", "dropout_ratio: 0.3"])
def test_test_phase_is_identity(fields):
    x, dy = rand(2, 3, 4), rand(2, 3, 4, seed=1)
    layer, bottoms, tops = run(fields, x, phase="TEST", top_diff=dy)
    np.testing.assert_array_equal(tops[0].data, x)
    np.testing.assert_array_equal(bottoms[0].diff, dy)
    assert layer.mask is None and layer.mask_draws == 0


def test_ratio_zero_keeps_everything():
    x, dy = rand(3, 7), rand(3, 7, seed=1)
    _, bottoms, tops = run("dropout_ratio: 0", x, top_diff=dy)
    np.testing.assert_array_equal(tops[0].data, x)
    np.testing.assert_array_equal(bottoms[0].diff, dy)


def test_scale_train_false_scales_at_test_time():
    x, dy = rand(3, 40), rand(3, 40, seed=1)
    _, bottoms, tops = run("dropout_ratio: 0.25 scale_train: false", x, top_diff=dy)
    kept = tops[0].data != 0
    assert 0 < kept.sum() < kept.size
    np.testing.assert_array_equal(tops[0].data, np.where(kept, x, 0.0))
    np.testing.assert_array_equal(bottoms[0].diff, np.where(kept, dy, 0.0))
    _, bottoms, tops = run("dropout_ratio: 0.25 scale_train: false", x, phase="TEST", top_diff=dy)
    np.testing.assert_allclose(tops[0].data, 0.75 * x, rtol=1e-7)
    np.testing.assert_allclose(bottoms[0].diff, 0.75 * dy, rtol=1e-7)


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_in_place(phase):
    """Top and bottom the same Blob (Caffe's usual `drop6` on `fc6`)."""
    x, dy = rand(3, 20), rand(3, 20, seed=1)
    _, _, separate = run("dropout_ratio: 0.4", x, phase=phase, seed=3, top_diff=dy)
    layer = build_layer(spec("dropout_ratio: 0.4"), phase=phase, dtype=np.float64, seed=3)
    blob = Blob.from_array(x.copy())
    layer.setup([blob], [blob])
    layer.reshape([blob], [blob])
    layer.forward([blob], [blob])
    np.testing.assert_array_equal(blob.data, separate[0].data)
    blob.diff[...] = dy
    layer.backward([blob], [True], [blob])
    expected = dy * (layer.mask if phase == "TRAIN" else 1.0)
    np.testing.assert_array_equal(blob.diff, expected)


def test_propagate_down_false_leaves_bottom_diff():
    layer, bottoms, tops = run("", rand(2, 5))
    bottoms[0].diff[...] = 7.0
    layer.backward(tops, [False], bottoms)
    assert np.all(bottoms[0].diff == 7.0)


# -- gradient checks ---------------------------------------------------------------

def fixed_mask_layer(fields, seed=0):
    """A float64 TRAIN layer whose every forward draws mask number 0: the
    checker's repeated forwards then see one fixed mask, which is exactly the
    function whose gradient backward must return."""
    layer = build_layer(spec(fields), dtype=np.float64, seed=seed)
    forward = layer.forward_cpu

    def forward_with_first_mask(bottoms, tops):
        layer.mask_draws = 0
        forward(bottoms, tops)

    layer.forward_cpu = forward_with_first_mask
    return layer


@pytest.mark.parametrize("fields,shape", [
    ("", (2, 3, 4, 5)),
    ("dropout_ratio: 0.2", (7,)),
    ("dropout_ratio: 0.7 scale_train: false", (3, 11)),
    ("", (1, 1, 1, 2)),
])
def test_gradient_train_with_fixed_mask(fields, shape):
    layer = fixed_mask_layer(fields, seed=2)
    result = check_layer(layer, [rand(*shape)])
    assert result.passed, result.report()
    if np.prod(shape) > 10:
        assert 0 < np.count_nonzero(layer.mask) < layer.mask.size  # both kinds were checked


@pytest.mark.parametrize("fields", ["", "dropout_ratio: 0.3 scale_train: false"])
def test_gradient_test_phase(fields):
    result = check_layer(spec(fields), [rand(2, 3, 4)], phase="TEST")
    assert result.passed, result.report()


# -- GPU code ----------------------------------------------------------------------

@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fields,phase", [
    ("", "TRAIN"),
    ("dropout_ratio: 0.8", "TRAIN"),
    ("dropout_ratio: 0.3 scale_train: false", "TRAIN"),
    ("", "TEST"),
    ("dropout_ratio: 0.3 scale_train: false", "TEST"),
])
def test_gpu_path_on_host(fields, phase, dtype):
    # On NumPy arrays the uniforms come from the same NumPy generator as the
    # CPU path's, so the kernels must reproduce its mask exactly.
    run_gpu_path_on_host(spec(fields), [rand(2, 3, 5, 4)], dtype=dtype, phase=phase)


@requires_cxx
def test_gpu_generator_is_made_once_and_reseeded_per_mask(monkeypatch):
    """On the stand-in CuPy (bench.standin_cupy): three forwards make one
    generator, and a layer restored to ``mask_draws`` 2 draws the same
    third mask as the layer that drew two before (reseeding restarts the
    stream, as it does for CuPy's Philox generator)."""
    from bench.standin_cupy import COUNTS, installed
    from netdef.device import Device, to_numpy
    from layers import kernels
    monkeypatch.setattr(kernels, "_gpu_modules", {})
    monkeypatch.setattr(kernels, "_gpu_functions", {})
    x = rand(3, 40)
    with installed():
        COUNTS.reset()
        layer, bottoms, tops = run("dropout_ratio: 0.4", x, seed=5, device=Device("gpu", 0))
        masks = [to_numpy(layer.mask).copy()]
        for _ in range(2):
            layer.forward(bottoms, tops)
            masks.append(to_numpy(layer.mask).copy())
        assert COUNTS.totals()["generator"] == 1
        restored = build_layer(spec("dropout_ratio: 0.4"), dtype=np.float64, seed=5,
                               device=Device("gpu", 0))
        restored_bottoms, restored_tops = setup_layer(restored, [x])
        restored.set_random_state({"mask_draws": 2})
        restored.forward(restored_bottoms, restored_tops)
        np.testing.assert_array_equal(to_numpy(restored.mask), masks[2])
    assert not np.array_equal(masks[1], masks[2])


@pytest.mark.gpu
@pytest.mark.parametrize("fields", ["", "dropout_ratio: 0.3 scale_train: false"])
def test_gpu_matches_cpu_in_test_phase(fields):
    compare_devices(spec(fields), [rand(2, 3, 5, 4)], phase="TEST")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_train_mask_structure_and_keep_fraction(dtype):
    """GPU masks come from cuRAND, so they are not the CPU's: check what
    must hold for any mask instead, and reproducibility from the seed."""
    from netdef.device import Device, to_numpy
    n, ratio = 200_000, 0.3
    x, dy = rand(n, seed=4), rand(n, seed=5)
    layer, bottoms, tops = run(f"dropout_ratio: {ratio}", x, dtype=dtype, top_diff=dy,
                               device=Device("gpu", 0))
    y, dx = to_numpy(tops[0].data), to_numpy(bottoms[0].diff)
    kept = y != 0
    scale = dtype(keep_scale(ratio))
    np.testing.assert_allclose(y, np.where(kept, x.astype(dtype) * scale, 0), rtol=1e-6)
    np.testing.assert_allclose(dx, np.where(kept, dy.astype(dtype) * scale, 0), rtol=1e-6)
    sigma = np.sqrt(ratio * (1 - ratio) / n)
    assert abs(kept.mean() - (1 - ratio)) < 5 * sigma
    again, _, _ = run(f"dropout_ratio: {ratio}", x, dtype=dtype, device=Device("gpu", 0))
    np.testing.assert_array_equal(to_numpy(again.mask), to_numpy(layer.mask))


# -- errors ------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", ["1", "1.5", "-0.1"])
def test_ratio_outside_unit_interval(ratio):
    with pytest.raises(NetDefinitionError,
                       match=r"layer 'drop' \(type Dropout\): dropout_ratio must be in "
                             rf"\[0, 1\), found {ratio}"):
        setup_layer(build_layer(spec(f"dropout_ratio: {ratio}")), [rand(2, 3)])
