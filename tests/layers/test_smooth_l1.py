"""SmoothL1Loss and SmoothL1LossOHEM against plainly written references,
float64 gradient checks away from the |d| = 1/sigma^2 switch, the host-run
CUDA kernel, GPU parity and the errors."""
import numpy as np
import pytest

from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host


# -- references (plain loops) ---------------------------------------------------

def ref_elements(x, t, w_in, w_out, sigma):
    """Per element: (w_out * f(d), d loss / d x)."""
    x, t = np.asarray(x, np.float64).reshape(-1), np.asarray(t, np.float64).reshape(-1)
    w_in = np.ones_like(x) if w_in is None else np.asarray(w_in, np.float64).reshape(-1)
    w_out = np.ones_like(x) if w_out is None else np.asarray(w_out, np.float64).reshape(-1)
    s2 = sigma * sigma
    errors, slope = np.zeros_like(x), np.zeros_like(x)
    for i in range(x.size):
        d = w_in[i] * (x[i] - t[i])
        if abs(d) < 1.0 / s2:
            f, g = 0.5 * s2 * d * d, s2 * d
        else:
            f, g = abs(d) - 0.5 / s2, (1.0 if d > 0 else -1.0)
        errors[i] = w_out[i] * f
        slope[i] = w_out[i] * w_in[i] * g
    return errors, slope


def away_from_kink(rng, shape, sigma, w_in=None, margin=0.05):
    """(pred, target) whose d = w_in * (pred - target) keep |d| at least
    ``margin`` away from 1/sigma^2 (and from 0)."""
    kink = 1.0 / sigma ** 2
    magnitude = np.where(rng.random(shape) < 0.5, rng.uniform(0.1, 0.8, shape) * kink,
                         rng.uniform(1.2, 3.0, shape) * kink)
    d = magnitude * rng.choice([-1.0, 1.0], shape)
    assert np.all(np.abs(np.abs(d) - kink) > margin * kink)
    target = rng.standard_normal(shape)
    pred = target + (d if w_in is None else d / w_in)
    return pred, target


def run_layer(spec, arrays, num_tops=None, top_diff=None, propagate=None):
    layer = build_layer(spec, dtype=np.float64)
    bottoms, tops = setup_layer(layer, arrays, num_tops)
    layer.forward(bottoms, tops)
    if top_diff is not None:
        tops[0].diff[...] = top_diff
        layer.backward(tops, propagate or [True, True] + [False] * (len(bottoms) - 2), bottoms)
    return layer, bottoms, tops


def spec_for(layer_type, sigma=None, loss_param=""):
    sigma_text = f"smooth_l1_loss_param {{ sigma: {sigma} }}" if sigma is not None else ""
    lp = f"loss_param {{ {loss_param} }}" if loss_param else ""
    return f'name: "loss_bbox" type: "{layer_type}" {sigma_text} {lp}'


# -- SmoothL1Loss -----------------------------------------------------------------

CASES = [
    # pred shape, other shape (legacy-equal), sigma
    ((6, 8), (6, 8), 1.0),
    ((1, 36, 3, 4), (1, 36, 3, 4), 3.0),   # RPN
    ((5, 8, 1, 1), (5, 8), 1.0),           # R-FCN: pooled pred, 2-D targets
    ((1, 4), (1, 4), 2.0),
]


@pytest.mark.parametrize("weights", [0, 2])
@pytest.mark.parametrize("pred_shape,other_shape,sigma", CASES)
def test_smooth_l1_matches_reference(pred_shape, other_shape, sigma, weights):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(pred_shape) * 0.5
    t = rng.standard_normal(other_shape) * 0.5
    w_in = rng.choice([0.0, 1.0, 0.5], other_shape) if weights else None
    w_out = rng.uniform(0.0, 2.0, other_shape) if weights else None
    arrays = [x, t] + ([w_in, w_out] if weights else [])
    _, bottoms, tops = run_layer(spec_for("SmoothL1Loss", sigma), arrays, top_diff=0.75)
    errors, slope = ref_elements(x, t, w_in, w_out, sigma)
    n = pred_shape[0]
    np.testing.assert_allclose(tops[0].data, errors.sum() / n, rtol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff.reshape(-1), 0.75 * slope / n, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(bottoms[1].diff.reshape(-1), -0.75 * slope / n, rtol=1e-12, atol=1e-15)
    assert bottoms[1].diff.shape == other_shape


def test_smooth_l1_design_formula_by_hand():
    # sigma 3: kink at 1/9. d = 0.05 (quadratic), d = -0.5 (linear).
    x, t = np.array([[0.05, -0.5]]), np.zeros((1, 2))
    _, _, tops = run_layer(spec_for("SmoothL1Loss", 3), [x, t])
    expected = 0.5 * 9 * 0.05 ** 2 + (0.5 - 0.5 / 9)
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-14)


@pytest.mark.parametrize("sigma", [1.0, 3.0])
@pytest.mark.parametrize("shape", [(4, 8), (1, 12, 2, 3), (2, 4, 1, 1)])
@pytest.mark.parametrize("weights", [0, 2])
def test_smooth_l1_gradient(sigma, shape, weights):
    rng = np.random.default_rng(1)
    w_in = rng.uniform(0.5, 1.5, shape) if weights else None
    x, t = away_from_kink(rng, shape, sigma, w_in)
    arrays = [x, t] + ([w_in, rng.uniform(0.0, 2.0, shape)] if weights else [])
    result = check_layer(spec_for("SmoothL1Loss", sigma), arrays)
    assert result.passed, result.report()
    # Both pred and target are checked; the weights are not.
    assert result.checked == 2 * x.size and result.skipped_kinks == 0
    assert set(result.worst_per_blob) == {"bottom 0 'bottom[0]'", "bottom 1 'bottom[1]'"}


def test_smooth_l1_weights_take_no_gradient():
    layer = build_layer(spec_for("SmoothL1Loss"), dtype=np.float64)
    assert [layer.allow_force_backward(i) for i in range(4)] == [True, True, False, False]


def test_smooth_l1_propagate_down_selects_bottoms():
    rng = np.random.default_rng(2)
    x, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    layer, bottoms, tops = run_layer(spec_for("SmoothL1Loss"), [x, t])
    bottoms[1].diff[...] = 5.0
    tops[0].diff[...] = 1.0
    layer.backward(tops, [True, False], bottoms)
    assert np.all(bottoms[1].diff == 5.0) and bottoms[0].diff.any()


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weights", [0, 2])
def test_smooth_l1_host_run_kernel(dtype, weights):
    rng = np.random.default_rng(3)
    shape = (1, 36, 3, 4)
    x, t = rng.standard_normal(shape) * 0.3, rng.standard_normal(shape) * 0.3
    arrays = [x, t] + ([rng.random(shape), rng.random(shape)] if weights else [])
    run_gpu_path_on_host(spec_for("SmoothL1Loss", 3), arrays, dtype=dtype,
                         propagate=[True, True] + [False] * weights)


@pytest.mark.gpu
def test_smooth_l1_gpu_parity():
    rng = np.random.default_rng(4)
    shape = (2, 36, 5, 6)
    arrays = [rng.standard_normal(shape), rng.standard_normal(shape), rng.random(shape), rng.random(shape)]
    compare_devices(spec_for("SmoothL1Loss", 3), arrays, propagate=[True, True, False, False])


def test_smooth_l1_three_bottoms_is_an_error():
    with pytest.raises(NetDefinitionError,
                       match=r"layer 'loss_bbox' \(type SmoothL1Loss\).*found 3: give both weights"):
        run_layer(spec_for("SmoothL1Loss"), [np.zeros((2, 4))] * 3)


def test_smooth_l1_shape_mismatch_names_blobs():
    spec = ('name: "loss_bbox" type: "SmoothL1Loss" bottom: "bbox_pred" bottom: "bbox_targets" '
            'bottom: "bbox_inside_weights" bottom: "bbox_outside_weights"')
    ok = np.zeros((4, 8))
    with pytest.raises(ShapeError, match=r"bottom 'bbox_inside_weights' expected the shape of "
                                         r"'bbox_pred' \(4, 8\).*found shape \(4, 4\)"):
        run_layer(spec, [ok, ok, np.zeros((4, 4)), ok])
    with pytest.raises(ShapeError, match=r"bottom 'bbox_targets' expected .*found shape \(5, 8\)"):
        run_layer(spec, [ok, np.zeros((5, 8)), ok, ok])


def test_smooth_l1_sigma_must_be_positive():
    with pytest.raises(NetDefinitionError, match="sigma must be > 0, found 0"):
        run_layer(spec_for("SmoothL1Loss", 0), [np.zeros((1, 4))] * 2)


def test_smooth_l1_empty_batch_is_zero():
    _, _, tops = run_layer(spec_for("SmoothL1Loss"), [np.zeros((0, 8))] * 2)
    assert float(tops[0].data) == 0.0


# -- SmoothL1LossOHEM --------------------------------------------------------------

PY_RFCN_OHEM_BBOX = """
   name: "per_roi_loss_bbox"
   type: "SmoothL1LossOHEM"
   bottom: "bbox_pred"
   bottom: "bbox_targets"
   bottom: "bbox_inside_weights"
   top: "temp_loss_bbox"
   top: "per_roi_loss_bbox"
   loss_weight: 0
   loss_weight: 0
   propagate_down: false
   propagate_down: false
   propagate_down: false
"""


def test_smooth_l1_ohem_per_roi_loss_as_in_py_rfcn():
    """py-R-FCN's layer text: pred (R, 8, 1, 1), targets and inside weights
    (R, 8, 1, 1); per-RoI loss (R, 1, 1, 1); default normalization VALID,
    which the fork defines as R x H x W."""
    rng = np.random.default_rng(5)
    shape = (6, 8, 1, 1)
    x, t, w_in = rng.standard_normal(shape), rng.standard_normal(shape), rng.choice([0.0, 1.0], shape)
    _, _, tops = run_layer(PY_RFCN_OHEM_BBOX, [x, t, w_in])
    errors, _ = ref_elements(x, t, w_in, None, 1.0)
    per_roi = [errors.reshape(6, 8)[r].sum() for r in range(6)]
    assert tops[1].shape == (6, 1, 1, 1)
    np.testing.assert_allclose(tops[1].data.reshape(-1), per_roi, rtol=1e-12)
    np.testing.assert_allclose(tops[0].data, errors.sum() / 6, rtol=1e-12)


def test_smooth_l1_ohem_per_position_on_a_map():
    rng = np.random.default_rng(6)
    x, t = rng.standard_normal((2, 4, 3, 2)), rng.standard_normal((2, 4, 3, 2))
    w_in, w_out = rng.random((2, 4, 3, 2)), rng.random((2, 4, 3, 2))
    spec = spec_for("SmoothL1LossOHEM", 2, "normalization: NONE")
    _, _, tops = run_layer(spec, [x, t, w_in, w_out], num_tops=2)
    errors, _ = ref_elements(x, t, w_in, w_out, 2.0)
    errors = errors.reshape(2, 4, 3, 2)
    expected = np.zeros((2, 1, 3, 2))
    for n in range(2):
        for h in range(3):
            for w in range(2):
                expected[n, 0, h, w] = sum(errors[n, c, h, w] for c in range(4))
    np.testing.assert_allclose(tops[1].data, expected, rtol=1e-12)
    np.testing.assert_allclose(tops[0].data, errors.sum(), rtol=1e-12)


@pytest.mark.parametrize("loss_param,divisor", [
    ("", 2 * 3 * 2),                                    # VALID (default) = N x H x W
    ("normalization: VALID", 2 * 3 * 2),
    ("normalization: FULL", 2 * 3 * 2),
    ("normalization: BATCH_SIZE", 2),
    ("normalization: NONE", 1),
    ("normalization: PRE_FIXED pre_fixed_normalizer: 128", 128),
    ("normalization: PRE_FIXED pre_fixed_normalizer: 0.25", 1),   # at least 1
    ("normalize: false", 2),
    ("normalize: true", 2 * 3 * 2),
])
def test_smooth_l1_ohem_normalization(loss_param, divisor):
    rng = np.random.default_rng(7)
    x, t = rng.standard_normal((2, 4, 3, 2)), rng.standard_normal((2, 4, 3, 2))
    _, bottoms, tops = run_layer(spec_for("SmoothL1LossOHEM", None, loss_param), [x, t], top_diff=2.0)
    errors, slope = ref_elements(x, t, None, None, 1.0)
    np.testing.assert_allclose(tops[0].data, errors.sum() / divisor, rtol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff.reshape(-1), 2.0 * slope / divisor, rtol=1e-12)


@pytest.mark.parametrize("bottoms_count", [2, 3, 4])
def test_smooth_l1_ohem_gradient(bottoms_count):
    rng = np.random.default_rng(8)
    shape = (3, 8, 1, 1)
    w_in = rng.uniform(0.5, 1.5, shape) if bottoms_count >= 3 else None
    x, t = away_from_kink(rng, shape, 1.0, w_in)
    arrays = [x, t] + ([w_in] if w_in is not None else []) + \
        ([rng.uniform(0, 2, shape)] if bottoms_count == 4 else [])
    spec = spec_for("SmoothL1LossOHEM", None, "normalization: PRE_FIXED pre_fixed_normalizer: 4")
    # The per-RoI top carries no gradient (as in the fork): check the loss top.
    result = check_layer(spec, arrays, num_tops=1)
    assert result.passed, result.report()
    assert result.checked == 2 * x.size


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bottoms_count", [2, 3])
def test_smooth_l1_ohem_host_run_kernel(dtype, bottoms_count):
    rng = np.random.default_rng(9)
    arrays = [rng.standard_normal((7, 8, 1, 1)), rng.standard_normal((7, 8))]
    if bottoms_count == 3:
        arrays.append(rng.choice([0.0, 1.0], (7, 8)))
    run_gpu_path_on_host(spec_for("SmoothL1LossOHEM", 1, "normalization: PRE_FIXED pre_fixed_normalizer: 128"),
                         arrays, dtype=dtype, num_tops=2, propagate=[True, True] + [False] * (bottoms_count - 2))


@pytest.mark.gpu
def test_smooth_l1_ohem_gpu_parity():
    rng = np.random.default_rng(10)
    arrays = [rng.standard_normal((300, 8, 1, 1)), rng.standard_normal((300, 8, 1, 1)),
              rng.choice([0.0, 1.0], (300, 8, 1, 1))]
    compare_devices(PY_RFCN_OHEM_BBOX, arrays, propagate=[True, True, False])


def test_smooth_l1_ohem_shape_mismatch():
    spec = PY_RFCN_OHEM_BBOX
    with pytest.raises(ShapeError, match=r"layer 'per_roi_loss_bbox'.*bottom 'bbox_inside_weights' "
                                         r"expected the shape of 'bbox_pred' \(4, 8, 1, 1\)"):
        run_layer(spec, [np.zeros((4, 8, 1, 1)), np.zeros((4, 8)), np.zeros((4, 4))])
