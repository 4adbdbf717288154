"""Net.forward / Net.backward ranges in pycaffe's meaning, seeds for any
blob, force_backward from the caller, and the ReLU modes of backward
(normal, guided, deconvnet) with and without the fused plan, checked
against plain NumPy references of a small hand-built net."""
import numpy as np
import pytest

from netdef import Net
from netdef.device import CPU, Device, to_numpy
from netdef.errors import NetDefinitionError, ShapeError
from tests.netdef.test_plan import RESIDUAL, _statistics

# A deploy net (no loss, no force_backward): 1x1 convolutions with in-place
# ReLUs, global average pooling, a classifier and its softmax.
CHAIN = """
name: "chain"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.6 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv5" type: "Convolution" bottom: "conv1" top: "conv5"
        convolution_param { num_output: 5 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.6 }
                            bias_filler { type: "constant" value: -0.05 } } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer { name: "pool" type: "Pooling" bottom: "conv5" top: "pool"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc8" type: "InnerProduct" bottom: "pool" top: "fc8"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.6 } } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""


def chain_net(plan=True, force_backward=True, device=CPU):
    return Net(CHAIN, "TEST", dtype=np.float64, seed=4, plan=plan,
               force_backward=force_backward, device=device)


def image(seed=0):
    return np.random.default_rng(seed).standard_normal((2, 3, 4, 5))


def params(net, name):
    return [to_numpy(b.data) for b in net.params[name]]


class ChainReference:
    """The chain's forward and backward written out with NumPy."""

    def __init__(self, net, x):
        self.w1, self.b1 = params(net, "conv1")
        self.w5, self.b5 = params(net, "conv5")
        self.wfc, self.bfc = params(net, "fc8")
        self.z1 = self.conv(self.w1, self.b1, x)
        self.z5 = self.conv(self.w5, self.b5, np.maximum(self.z1, 0))
        self.a5 = np.maximum(self.z5, 0)
        self.pool = self.a5.mean(axis=(2, 3))
        self.fc8 = self.pool @ self.wfc.T + self.bfc

    @staticmethod
    def conv(w, b, x):
        """1x1 convolution: (K, C, 1, 1) weights over (N, C, H, W)."""
        return np.einsum("kc,nchw->nkhw", w[:, :, 0, 0], x) + b[None, :, None, None]

    @staticmethod
    def relu_backward(z, dy, mode):
        if mode == "normal":
            return dy * (z > 0)
        if mode == "guided":
            return dy * (z > 0) * (dy > 0)
        return dy * (dy > 0)  # deconvnet: whatever z

    def data_diff(self, fc8_seed, mode):
        """d(sum(fc8 * seed)) / d data under the ReLU rule ``mode``."""
        h, w = self.z5.shape[2:]
        d_a5 = np.broadcast_to((fc8_seed @ self.wfc)[:, :, None, None] / (h * w),
                               self.z5.shape)
        d_z5 = self.relu_backward(self.z5, d_a5, mode)
        d_a1 = np.einsum("kc,nkhw->nchw", self.w5[:, :, 0, 0], d_z5)
        d_z1 = self.relu_backward(self.z1, d_a1, mode)
        return np.einsum("kc,nkhw->nchw", self.w1[:, :, 0, 0], d_z1)


# -- a pycaffe Grad-CAM recipe, unchanged -------------------------------------------

def test_pycaffe_grad_cam_recipe_gets_the_closed_form_gradient():
    net = Net(CHAIN.replace('name: "chain"', 'name: "chain"\nforce_backward: true'),
              "TEST", dtype=np.float64, seed=4)
    x = image()
    ref = ChainReference(net, x)
    # -- the recipe, as written for pycaffe --
    net.blobs["data"].data[...] = x
    net.forward()
    target = 2
    onehot = np.zeros_like(net.blobs["fc8"].data)
    onehot[:, target] = 1
    net.backward(start="fc8", **{"fc8": onehot})
    grads = net.blobs["conv5"].diff
    weights = grads.mean(axis=(2, 3))
    cam = np.maximum((weights[:, :, None, None] * net.blobs["conv5"].data).sum(axis=1), 0)
    # -- its known answer: d fc8[:, c] / d conv5 (the in-place ReLU's input)
    # is wfc[c, k] / (H * W) where conv5 > 0, zero elsewhere --
    h, w = ref.z5.shape[2:]
    expected = (ref.wfc[target] / (h * w))[None, :, None, None] * (ref.z5 > 0)
    np.testing.assert_allclose(grads, expected, rtol=1e-12, atol=1e-15)
    expected_weights = expected.mean(axis=(2, 3))
    expected_cam = np.maximum((expected_weights[:, :, None, None] * ref.a5).sum(axis=1), 0)
    np.testing.assert_allclose(cam, expected_cam, rtol=1e-12, atol=1e-15)
    assert np.abs(grads).max() > 0


def test_seeding_the_diff_by_hand_then_backward_from_a_layer():
    """pycaffe's other form: write the blob's diff, then backward(start=)."""
    net = chain_net()
    x = image(1)
    net.forward(data=x)
    seed = np.random.default_rng(2).standard_normal((2, 3))
    net.blobs["fc8"].diff[...] = seed
    diffs = net.backward(start="fc8")
    np.testing.assert_allclose(diffs["data"], ChainReference(net, x).data_diff(seed, "normal"),
                               rtol=1e-12, atol=1e-15)


# -- ranges ------------------------------------------------------------------------------

def test_backward_runs_from_start_down_to_end_only():
    net = chain_net()
    net.forward(data=image())
    net.blobs["data"].diff[...] = 7.0   # below end: must stay
    net.blobs["prob"].diff[...] = 5.0   # above start: must not be read
    seed = np.ones((2, 3))
    diffs = net.backward(start="fc8", end="relu5", fc8=seed)
    assert list(diffs) == ["conv5"]     # pycaffe: the end layer's bottoms
    assert np.all(net.blobs["data"].diff == 7.0)
    assert np.all(net.blobs["conv1"].diff == 0)
    np.testing.assert_array_equal(net.blobs["fc8"].diff, seed)  # prob's backward did not run
    ref = ChainReference(net, image())
    h, w = ref.z5.shape[2:]
    expected = (ref.wfc.sum(axis=0) / (h * w))[None, :, None, None] * (ref.z5 > 0)
    np.testing.assert_allclose(diffs["conv5"], expected, rtol=1e-12, atol=1e-15)


def test_backward_defaults_return_the_inputs_and_named_diffs():
    net = chain_net()
    net.forward(data=image())
    diffs = net.backward(diffs=["pool"], prob=np.ones((2, 3)))
    assert list(diffs) == ["data", "pool"]
    # softmax's backward of a constant diff is zero everywhere
    assert np.abs(diffs["pool"]).max() < 1e-15


def test_backward_start_below_end_is_an_error():
    net = chain_net()
    net.forward(data=image())
    with pytest.raises(NetDefinitionError,
                       match=r"backward runs down from start to end, but start 'conv1' "
                             r"is below end 'fc8'"):
        net.backward(start="conv1", end="fc8")


def test_forward_end_below_start_is_an_error():
    net = chain_net()
    with pytest.raises(NetDefinitionError,
                       match=r"forward runs up from start to end, but end 'conv1' is below "
                             r"start 'fc8'"):
        net.forward(start="fc8", end="conv1")


@pytest.mark.parametrize("call", ["forward", "backward"])
@pytest.mark.parametrize("which", ["start", "end"])
def test_unknown_layer_name_is_an_error_listing_the_layers(call, which):
    net = chain_net()
    net.forward(data=image())
    with pytest.raises(NetDefinitionError,
                       match=rf"{call} {which}: no layer named 'fc9' \(layers: data, conv1, "):
        getattr(net, call)(**{which: "fc9"})


@pytest.mark.parametrize("plan", [True, False])
def test_forward_to_a_layer_then_from_the_next_after_changing_a_blob(plan):
    """What pinning RoIs does: run up to a layer, overwrite its top, run on."""
    net = chain_net(plan=plan)
    x = image(3)
    ref = ChainReference(net, x)
    out = net.forward(end="conv5", data=x)   # conv5's ReLU is fused with it in the plan
    assert list(out) == ["conv5"]            # pycaffe: the end layer's tops
    np.testing.assert_allclose(out["conv5"], ref.z5, rtol=1e-12)
    assert (out["conv5"] < 0).any()          # the ReLU has not run yet
    out = net.forward(end="pool", start="relu5")
    np.testing.assert_allclose(out["pool"][:, :, 0, 0], ref.pool, rtol=1e-12)
    pinned = np.random.default_rng(4).standard_normal((2, 5))
    net.blobs["pool"].data[...] = pinned[:, :, None, None]
    out = net.forward(start="fc8")
    assert list(out) == ["prob"]
    logits = pinned @ ref.wfc.T + ref.bfc
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(out["prob"], expected / expected.sum(axis=1, keepdims=True),
                               rtol=1e-12)
    np.testing.assert_allclose(net.blobs["fc8"].data, logits, rtol=1e-12)


def test_forward_blobs_adds_to_the_outputs_and_loss_is_a_float():
    net = Net(RESIDUAL, "TRAIN", dtype=np.float64)
    out = net.forward(blobs=["fc"], data=np.ones((2, 3, 10, 12)), label=np.zeros(2))
    assert list(out) == ["loss", "fc"]
    assert type(out.loss) is float and out.loss == pytest.approx(float(out["loss"]))


# -- seeds -----------------------------------------------------------------------------------

def test_a_seed_for_any_blob_starts_the_gradient_there():
    net = chain_net()
    x = image(5)
    net.forward(data=x)
    seed = np.random.default_rng(6).standard_normal(net.blobs["pool"].shape)
    diffs = net.backward(start="pool", pool=seed)
    ref = ChainReference(net, x)
    h, w = ref.z5.shape[2:]
    d_z5 = np.broadcast_to(seed / (h * w), ref.z5.shape) * (ref.z5 > 0)
    d_a1 = np.einsum("kc,nkhw->nchw", ref.w5[:, :, 0, 0], d_z5)
    expected = np.einsum("kc,nkhw->nchw", ref.w1[:, :, 0, 0], d_a1 * (ref.z1 > 0))
    np.testing.assert_allclose(diffs["data"], expected, rtol=1e-12, atol=1e-15)


def test_a_seed_of_the_wrong_shape_names_the_blob():
    net = chain_net()
    net.forward(data=image())
    with pytest.raises(ShapeError, match=r"the seed for blob 'pool' has shape \(2, 4\), "
                                         r"the blob has \(2, 5, 1, 1\)"):
        net.backward(pool=np.ones((2, 4)))


def test_a_seed_for_a_missing_blob_lists_the_blobs():
    net = chain_net()
    net.forward(data=image())
    with pytest.raises(NetDefinitionError,
                       match=r"no blob named 'conv9' to seed \(blobs: data, conv1, conv5, "):
        net.backward(conv9=np.ones(3))


def test_loss_tops_keep_their_loss_weight_unless_seeded():
    text = RESIDUAL.replace('top: "loss" }', 'top: "loss" loss_weight: 2 }')
    net = Net(text, "TRAIN", dtype=np.float64, force_backward=True)
    net.forward(data=np.random.default_rng(0).standard_normal((2, 3, 10, 12)),
                label=np.array([1.0, 0.0]))
    weighted = net.backward()["data"].copy()
    assert np.all(net.blobs["loss"].diff == 2.0)
    seeded = net.backward(loss=np.array(3.0).reshape(net.blobs["loss"].shape))["data"]
    np.testing.assert_allclose(seeded, 1.5 * weighted, rtol=1e-12)
    again = net.backward()["data"]
    np.testing.assert_allclose(again, weighted, rtol=1e-12)


# -- force_backward -----------------------------------------------------------------------

def test_force_backward_from_the_caller_overrides_the_file():
    assert not any(chain_net(force_backward=None).layer_need_backward)
    forced = chain_net(force_backward=True)
    assert all(forced.layer_need_backward)
    conv1 = forced._layer_names.index("conv1")
    assert forced.bottom_need_backward[conv1] == [True]
    assert any("force_backward: True (the caller's" in line for line in forced.build_log)
    in_file = CHAIN.replace('name: "chain"', 'name: "chain"\nforce_backward: true')
    assert all(Net(in_file, "TEST").layer_need_backward)
    assert not any(Net(in_file, "TEST", force_backward=False).layer_need_backward)


def test_without_force_backward_a_deploy_net_computes_no_gradient():
    net = chain_net(force_backward=None)
    net.forward(data=image())
    diffs = net.backward(start="fc8", fc8=np.ones((2, 3)))
    assert np.all(diffs["data"] == 0)


# -- ReLU modes -------------------------------------------------------------------------------

@pytest.mark.parametrize("plan", [True, False])
@pytest.mark.parametrize("mode", ["normal", "guided", "deconvnet"])
def test_relu_modes_follow_their_rule_on_the_chain(mode, plan):
    net = chain_net(plan=plan)
    if plan:
        assert [type(s).__name__ for s in net.steps].count("FoldedConvolution") == 2
    x = image(7)
    net.forward(data=x)
    seed = np.random.default_rng(8).standard_normal((2, 3))
    diffs = net.backward(start="fc8", fc8=seed, relu_mode=mode)
    expected = ChainReference(net, x).data_diff(seed, mode)
    np.testing.assert_allclose(diffs["data"], expected, rtol=1e-12, atol=1e-15)


def test_the_modes_differ_and_each_call_has_its_own():
    net = chain_net()
    x = image(9)
    net.forward(data=x)
    seed = np.random.default_rng(10).standard_normal((2, 3))
    results = {mode: net.backward(start="fc8", fc8=seed, relu_mode=mode)["data"].copy()
               for mode in ("guided", "deconvnet", "normal")}
    assert not np.allclose(results["guided"], results["normal"])
    assert not np.allclose(results["deconvnet"], results["guided"])
    with pytest.raises(ShapeError):
        net.backward(start="fc8", fc8=np.ones(3), relu_mode="guided")
    after = net.backward(start="fc8", fc8=seed)["data"]
    np.testing.assert_allclose(after, ChainReference(net, x).data_diff(seed, "normal"),
                               rtol=1e-12, atol=1e-15)


def test_an_unknown_relu_mode_lists_the_modes():
    net = chain_net()
    net.forward(data=image())
    with pytest.raises(NetDefinitionError, match=r"relu_mode must be one of normal, guided, "
                                                  r"deconvnet, found 'guidded'"):
        net.backward(relu_mode="guidded")


def _residual_diffs(plan, mode, device=CPU, dtype=np.float64):
    """Every blob's diff after a backward of the residual net in ``mode``."""
    net = Net(RESIDUAL, "TRAIN", dtype=dtype, plan=plan, seed=1, device=device,
              force_backward=True)
    _statistics(net, np.random.default_rng(0))
    net.forward(data=np.random.default_rng(1).standard_normal((2, 3, 10, 12)),
                label=np.array([0.0, 2.0]))
    net.backward(relu_mode=mode)
    return net, {n: to_numpy(b.diff) for n, b in net.blobs.items() if n != "label"}


@pytest.mark.parametrize("mode", ["normal", "guided", "deconvnet"])
def test_relu_modes_reach_the_relus_fused_into_every_kind_of_step(mode):
    """Conv + frozen BN/Scale + ReLU, Conv + ReLU, Eltwise SUM + ReLU and a
    standalone frozen affine + ReLU: the plan gives what the ReLU layers
    run one by one give."""
    planned_net, planned = _residual_diffs(True, mode)
    kinds = {type(s).__name__ for s in planned_net.steps}
    assert {"FoldedConvolution", "SumReLU", "FrozenAffine"} <= kinds
    _, plain = _residual_diffs(False, mode)
    for name, diff in plain.items():
        np.testing.assert_allclose(planned[name], diff, rtol=1e-10, atol=1e-14,
                                   err_msg=f"{mode}: blob '{name}'")
    if mode != "normal":
        _, normal = _residual_diffs(True, "normal")
        assert not np.allclose(planned["data"], normal["data"])


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["normal", "guided", "deconvnet"])
def test_relu_modes_on_the_gpu_equal_the_cpu(mode):
    gpu = Device("gpu", 0)
    for plan in (True, False):
        _, on_gpu = _residual_diffs(plan, mode, device=gpu)
        _, on_cpu = _residual_diffs(plan, mode)
        for name, diff in on_cpu.items():
            np.testing.assert_allclose(on_gpu[name], diff, rtol=1e-10, atol=1e-13,
                                       err_msg=f"{mode}, plan {plan}: blob '{name}'")
    net = chain_net(device=gpu)
    x = image(7)
    net.forward(data=x)
    seed = np.random.default_rng(8).standard_normal((2, 3))
    diffs = net.backward(start="fc8", fc8=seed, relu_mode=mode)
    np.testing.assert_allclose(to_numpy(diffs["data"]),
                               ChainReference(net, x).data_diff(seed, mode),
                               rtol=1e-10, atol=1e-14)
