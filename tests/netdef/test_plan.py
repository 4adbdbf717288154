"""The graph plan: which layers fuse, and that a planned net computes what
the same net without a plan computes (outputs, gradients, updated weights
over several training iterations), on the CPU and through the host-run
kernels of layers/cuda/fused.cu."""
import numpy as np
import pytest

import layers.cpu_threads
import layers.fused
from layers import fused
from layers.kernels import launch
from netdef import Net
from netdef.device import CPU, Device, to_numpy
from tests.kernel_harness import requires_cxx
from tests.layers.test_conv import force_threads

FROZEN = "param { lr_mult: 0 decay_mult: 0 }"
BN = 'batch_norm_param { use_global_stats: true }'

# A residual block in the ResNet style (conv -> frozen BN -> frozen Scale ->
# ReLU, in place), a shortcut, Eltwise SUM + ReLU, a Split feeding two
# branches, a standalone frozen affine after pooling, and a learned conv
# with bias + ReLU, under a softmax loss.
RESIDUAL = f"""
name: "residual"
layer {{ name: "data" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: 2 dim: 3 dim: 10 dim: 12 }} shape {{ dim: 2 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 6 kernel_size: 3 pad: 1 bias_term: false
                            weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" {FROZEN} {FROZEN} {FROZEN} {BN} }}
layer {{ name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" {FROZEN} {FROZEN}
        scale_param {{ bias_term: true }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "branch2a" type: "Convolution" bottom: "conv1" top: "branch2a"
        convolution_param {{ num_output: 6 kernel_size: 1 bias_term: false
                            weight_filler {{ type: "gaussian" std: 0.4 }} }} }}
layer {{ name: "bn2a" type: "BatchNorm" bottom: "branch2a" top: "branch2a" {BN} }}
layer {{ name: "sc2a" type: "Scale" bottom: "branch2a" top: "branch2a" {FROZEN} {FROZEN}
        scale_param {{ bias_term: true }} }}
layer {{ name: "sum" type: "Eltwise" bottom: "conv1" bottom: "branch2a" top: "sum" }}
layer {{ name: "sum_relu" type: "ReLU" bottom: "sum" top: "sum" }}
layer {{ name: "pool" type: "Pooling" bottom: "sum" top: "pool"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "bn3" type: "BatchNorm" bottom: "pool" top: "pool" {BN} }}
layer {{ name: "sc3" type: "Scale" bottom: "pool" top: "pool" {FROZEN} {FROZEN}
        scale_param {{ bias_term: true }} }}
layer {{ name: "relu3" type: "ReLU" bottom: "pool" top: "pool" }}
layer {{ name: "head" type: "Convolution" bottom: "pool" top: "head"
        convolution_param {{ num_output: 5 kernel_size: 3 pad: 1
                            weight_filler {{ type: "gaussian" std: 0.3 }}
                            bias_filler {{ type: "constant" value: 0.05 }} }} }}
layer {{ name: "head_relu" type: "ReLU" bottom: "head" top: "head" }}
layer {{ name: "fc" type: "InnerProduct" bottom: "head" top: "fc"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
"""


def _statistics(net, rng):
    """Non-trivial stored statistics and frozen affines."""
    for name, layer in net.layer_dict.items():
        if layer.type == "BatchNorm":
            c = layer.blobs[0].shape[0]
            layer.blobs[0].data[...] = rng.normal(0, 0.5, c)
            layer.blobs[1].data[...] = rng.uniform(0.5, 2.0, c)
            layer.blobs[2].data[...] = 1.5
        elif layer.type == "Scale":
            layer.blobs[0].data[...] = rng.uniform(0.5, 1.5, layer.blobs[0].shape)
            layer.blobs[1].data[...] = rng.normal(0, 0.2, layer.blobs[1].shape)


def _train(plan, dtype, iterations=3, net_text=RESIDUAL, device=CPU, keep=None):
    """Outputs, blob diffs and weights (NumPy copies) after each of a few
    SGD steps."""
    net = Net(net_text, "TRAIN", dtype=dtype, plan=plan, seed=1, device=device, keep=keep)
    _statistics(net, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    record = []
    for _ in range(iterations):
        data = rng.standard_normal(net.blobs["data"].shape)
        out = net.forward(data=data, label=np.array([0.0, 2.0]))
        net.clear_param_diffs()
        net.backward()
        grads = {f"{p.layer}/{p.index}": to_numpy(p.blob.diff) for p in net.learnable_params}
        for p in net.learnable_params:
            p.blob.data -= 0.1 * p.lr_mult * p.blob.diff
        record.append(dict(loss=out.loss,
                           blobs={n: to_numpy(b.data) for n, b in net.blobs.items()},
                           diffs={n: to_numpy(b.diff) for n, b in net.blobs.items()
                                  if n not in ("data", "label")},
                           grads=grads,
                           weights={f"{p.layer}/{p.index}": to_numpy(p.blob.data)
                                    for p in net.learnable_params}))
    return net, record


def _assert_close(planned, plain, rtol):
    for step, (a, b) in enumerate(zip(planned, plain)):
        assert a["loss"] == pytest.approx(b["loss"], rel=rtol)
        for group in ("blobs", "diffs", "grads", "weights"):
            assert a[group].keys() == b[group].keys()
            for name in b[group]:
                scale = max(np.abs(b[group][name]).max(), 1e-30)
                err = np.abs(a[group][name] - b[group][name]).max() / scale
                assert err <= rtol, f"iteration {step}: {group} '{name}' differs by {err:.2e}"


def test_the_plan_fuses_the_residual_patterns():
    net = Net(RESIDUAL, "TRAIN")
    kinds = {step.label: type(step).__name__ for step in net.steps}
    assert kinds["conv1 + bn1 + sc1 + relu1"] == "FoldedConvolution"
    assert kinds["branch2a + bn2a + sc2a"] == "FoldedConvolution"
    assert kinds["sum + sum_relu"] == "SumReLU"
    assert kinds["bn3 + sc3 + relu3"] == "FrozenAffine"
    assert kinds["head + head_relu"] == "FoldedConvolution"
    assert kinds["conv1_relu1_0_split"] == "SharedSplit"
    assert any("conv1 + bn1 + sc1 + relu1 run as one step" in line for line in net.build_log)
    assert len(Net(RESIDUAL, "TRAIN", plan=False).steps) == len(net.layers)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_planned_training_equals_unplanned(dtype, rtol):
    _, planned = _train(True, dtype)
    _, plain = _train(False, dtype)
    _assert_close(planned, plain, rtol)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_planned_training_with_rows_split_between_threads_equals_unplanned(dtype, rtol,
                                                                          monkeypatch):
    """Every convolution, padding copy and weight fold of the planned net
    split between three threads (layers.cpu_threads), however small."""
    force_threads(monkeypatch)
    monkeypatch.setattr(layers.cpu_threads, "PARALLEL_ELEMENTS", 0)
    _, planned = _train(True, dtype)
    monkeypatch.undo()
    _, plain = _train(False, dtype)
    _assert_close(planned, plain, rtol)


@requires_cxx
def test_planned_training_through_host_run_kernels(monkeypatch):
    """The fused element-wise work runs as the host build of fused.cu."""
    monkeypatch.setattr(layers.fused, "is_gpu_array", lambda array: True)
    _, planned = _train(True, np.float64)
    monkeypatch.undo()
    _, plain = _train(False, np.float64)
    _assert_close(planned, plain, 1e-10)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_planned_training_on_the_gpu_equals_the_cpu(dtype, rtol):
    gpu = Device("gpu", 0)
    _, planned_gpu = _train(True, dtype, device=gpu)
    _, plain_gpu = _train(False, dtype, device=gpu)
    _, planned_cpu = _train(True, dtype)
    _assert_close(planned_gpu, plain_gpu, rtol)
    _assert_close(planned_gpu, planned_cpu, rtol)


@pytest.mark.gpu
def test_lean_plan_on_the_gpu():
    net = Net(RESIDUAL, "TRAIN", device=Device("gpu", 0), keep=[])
    for _ in range(2):
        net.forward(data=np.ones((2, 3, 10, 12)), label=np.zeros(2))
        net.backward()
    assert net.blobs["fc"].is_released and net.memory.pool.allocated_bytes > 0
    assert np.isfinite(to_numpy(net.blobs["loss"].data)).all()


def test_learned_scale_or_leaky_relu_is_not_fused():
    text = RESIDUAL.replace(
        'layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" '
        'param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }',
        'layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1"')
    text = text.replace('name: "relu3" type: "ReLU" bottom: "pool" top: "pool"',
                        'name: "relu3" type: "ReLU" bottom: "pool" top: "pool" '
                        'relu_param { negative_slope: 0.1 }')
    net = Net(text, "TRAIN")
    labels = [step.label for step in net.steps]
    assert "conv1 + bn1" in labels and "sc1" in labels and "relu1" in labels
    assert "bn3 + sc3" in labels and "relu3" in labels
    _, planned = _train(True, np.float64, net_text=text)
    _, plain = _train(False, np.float64, net_text=text)
    _assert_close(planned, plain, 1e-10)


def test_forward_and_backward_ranges_cutting_a_fused_step():
    rng = np.random.default_rng(3)
    results = []
    for plan in (True, False):
        net = Net(RESIDUAL, "TRAIN", dtype=np.float64, plan=plan)
        _statistics(net, np.random.default_rng(0))
        net.forward(data=rng.standard_normal((2, 3, 10, 12)), label=np.array([1.0, 0.0]))
        net.forward(start="sc1", end="sum")      # starts inside conv1's fused step
        net.backward(start="fc", end="bn2a")
        results.append({n: (b.data.copy(), b.diff.copy()) for n, b in net.blobs.items()})
        rng = np.random.default_rng(3)
    for name, (data, diff) in results[1].items():
        np.testing.assert_allclose(results[0][name][0], data, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(results[0][name][1], diff, rtol=1e-10, atol=1e-12)


def test_diffs_are_allocated_only_by_backward():
    net = Net(RESIDUAL, "TEST")
    net.forward(data=np.ones((2, 3, 10, 12)), label=np.zeros(2))
    assert not any(blob.has_diff for blob in net.blobs.values())
    train = Net(RESIDUAL, "TRAIN")
    train.forward(data=np.ones((2, 3, 10, 12)), label=np.zeros(2))
    assert not any(blob.has_diff for blob in train.blobs.values())
    train.backward()
    assert train.blobs["conv1"].has_diff


def test_frozen_parameters_get_no_gradient_work():
    net = Net(RESIDUAL, "TRAIN", plan=False)
    net.forward(data=np.ones((2, 3, 10, 12)), label=np.zeros(2))
    net.backward()
    assert net.layer_dict["sc1"].param_propagate_down == (False, False)
    assert net.layer_dict["sc1"].x_copy is None   # no copy of x kept for a frozen w
    assert not net.layer_dict["sc1"].blobs[0].has_diff


# -- the kernels of fused.cu against the NumPy path -------------------------------

def _arrays(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(3)]


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
def test_fused_kernels_match_numpy(dtype, relu):
    x, y0, dy = _arrays((2, 3, 5, 7), dtype)
    a, b = (np.random.default_rng(1).uniform(0.5, 2, 3).astype(dtype) for _ in range(2))
    n, c, s = np.int64(x.size), np.int64(3), np.int64(35)
    expected, found = np.empty_like(x), np.empty_like(x)
    fused.affine_forward(x, a, b, expected, relu)
    launch("fused.cu", "affine_forward", dtype, x.size, (n, x, a, b, found, c, s, np.int32(relu)))
    np.testing.assert_allclose(found, expected, rtol=1e-6)
    fused.affine_backward(y0, dy, a, expected, relu)
    launch("fused.cu", "affine_backward", dtype, x.size, (n, y0, dy, a, found, c, s, np.int32(relu)))
    np.testing.assert_allclose(found, expected, rtol=1e-6)
    fused.sum2_forward(x, y0, 1.0, -0.5, expected, relu)
    launch("fused.cu", "sum2_forward", dtype, x.size,
           (n, x, y0, dtype(1.0), dtype(-0.5), found, np.int32(relu)))
    np.testing.assert_allclose(found, expected, rtol=1e-6)
    expected[...], found[...] = x, x
    fused.bias_relu(expected, b, relu)
    launch("fused.cu", "bias_relu", dtype, x.size, (n, found, b, c, s, np.int32(relu)))
    np.testing.assert_allclose(found, expected, rtol=1e-6)
    fused.masked_scale(y0, dy, 2.0, expected, relu)
    launch("fused.cu", "masked_scale", dtype, x.size, (n, y0, dy, dtype(2.0), found, np.int32(relu)))
    np.testing.assert_allclose(found, expected, rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 4, 3, 3), (2, 4, 300, 251)])
def test_fused_numpy_functions_against_plain_formulas(shape):
    """Small arrays run on one thread, large ones split between two."""
    x, y, dy = _arrays(shape, np.float64)
    a, b = np.array([1.0, -2.0, 0.5, 3.0]), np.array([0.1, 0.2, -0.3, 0.0])
    out = np.empty_like(x)
    fused.affine_forward(x, a, b, out, True)
    np.testing.assert_allclose(out, np.maximum(x * a[:, None, None] + b[:, None, None], 0))
    fused.affine_backward(y, dy, a, out, True)
    np.testing.assert_allclose(out, np.where(y > 0, dy * a[:, None, None], 0))
    out[...] = x
    fused.bias_relu(out, b, True)
    np.testing.assert_allclose(out, np.maximum(x + b[:, None, None], 0))
    fused.sum2_forward(x, y, 2.0, 1.0, out, False)
    np.testing.assert_allclose(out, 2 * x + y)
    fused.sum2_forward(x, y, 1.0, 1.0, out, True)
    np.testing.assert_allclose(out, np.maximum(x + y, 0))
    fused.masked_scale(y, dy, 0.5, out, False)
    np.testing.assert_allclose(out, 0.5 * dy)
    in_place = dy.copy()
    fused.masked_scale(y, in_place, 1.0, in_place, True)
    np.testing.assert_allclose(in_place, np.where(y > 0, dy, 0))


# -- the lean memory plan ------------------------------------------------------------

def test_lean_plan_trains_as_the_full_one():
    lean_net, lean = _train(True, np.float64, keep=["pool"])
    _, full = _train(True, np.float64)
    for a, b in zip(lean, full):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-12)
        for name in b["weights"]:
            np.testing.assert_allclose(a["weights"][name], b["weights"][name], rtol=1e-12)
    # Kept, input and output blobs stay readable; the others were given back.
    assert not lean_net.blobs["pool"].is_released
    assert np.isfinite(lean_net.blobs["pool"].diff).all()
    assert not lean_net.blobs["data"].is_released and not lean_net.blobs["loss"].is_released
    assert lean_net.blobs["fc"].is_released and np.isnan(lean_net.blobs["fc"].data).all()
    assert lean_net.memory.pool.allocated_bytes > 0


def test_lean_plan_reuses_storage_across_passes_and_shapes():
    net = Net(RESIDUAL, "TEST", keep=[])
    rng = np.random.default_rng(0)
    net.forward(data=rng.standard_normal((2, 3, 10, 12)), label=np.zeros(2))
    first = net.memory.pool.allocated_bytes
    for _ in range(3):
        net.forward(data=rng.standard_normal((2, 3, 10, 12)), label=np.zeros(2))
    assert net.memory.pool.allocated_bytes == first
    # A forward-only pass gives back each activation after its last reader,
    # so the pool holds less than all the activations together.
    total = sum(b.count * 8 for n, b in Net(RESIDUAL, "TEST").blobs.items())
    assert first < total


def test_keep_names_an_unknown_blob():
    from netdef.errors import NetDefinitionError
    with pytest.raises(NetDefinitionError, match="keep names blob.*nonesuch.*phase TEST"):
        Net(RESIDUAL, "TEST", keep=["nonesuch"])


def test_storage_pool_hands_back_and_reuses():
    from netdef.memory import StoragePool
    pool = StoragePool(np)
    a = pool.take((4, 5), np.float32, zero=True)
    assert a.shape == (4, 5) and not a.any()
    pool.give(a[1:])              # a view of it gives the same buffer back
    pool.give(a)                  # given twice: ignored
    b = pool.take((3, 3), np.float64, zero=False)
    assert pool.allocated_bytes == 80 and b.nbytes == 72
    pool.give(np.zeros(3))        # not from the pool: ignored
    assert pool.free == []


def test_lean_plan_follows_new_input_shapes_without_growing():
    """Net.reshape sizes every blob at once; the plan then gives the storage
    back, so going back to smaller shapes allocates nothing new."""
    text = RESIDUAL[:RESIDUAL.index('layer { name: "fc"')] + (
        'layer { name: "gp" type: "Pooling" bottom: "head" top: "gp" '
        'pooling_param { pool: AVE global_pooling: true } }\n')
    lean, full = Net(text, "TEST", keep=["head"]), Net(text, "TEST")
    sizes = []
    for shape in [(2, 3, 10, 12), (2, 3, 14, 9), (1, 3, 10, 12), (2, 3, 10, 12)]:
        x = np.random.default_rng(0).random(shape)
        for net in (lean, full):
            net.blobs["data"].reshape(shape)
            net.reshape()
            net.forward(data=x, label=np.zeros(shape[0]))
        np.testing.assert_array_equal(lean.blobs["gp"].data, full.blobs["gp"].data)
        np.testing.assert_array_equal(lean.blobs["head"].data, full.blobs["head"].data)
        sizes.append(lean.memory.pool.allocated_bytes)
    assert sizes[2] == sizes[3] == sizes[1] > sizes[0]
