"""Net building and running: filtering, splits, in-place, losses, backward
planning, parameter sharing, weights, errors."""
import numpy as np
import pytest

from netdef import Net
from netdef.errors import NetDefinitionError, ShapeError, WeightsError

TINY = """
name: "tiny"
force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc"
        include { phase: TEST } }
"""


def tiny_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return dict(data=rng.standard_normal((2, 3, 8, 8)), label=np.array([0.0, 2.0]))


def test_shapes_outputs_and_phase_filtering():
    train = Net(TINY, "TRAIN")
    assert list(train.layer_dict) == ["data", "conv1", "relu1", "pool1", "fc", "loss"]
    assert train.blobs["conv1"].shape == (2, 4, 8, 8)
    assert train.blobs["pool1"].shape == (2, 4, 4, 4)
    assert train.blobs["fc"].shape == (2, 3)
    assert train.outputs == ["loss"]
    assert train.inputs == ["data", "label"]
    test = Net(TINY, "TEST")
    assert "acc" in test.layer_dict
    assert sorted(test.outputs) == ["acc", "loss"]
    assert any("excluded in phase TRAIN" in line for line in train.build_log)


def test_split_inserted_for_blob_with_two_consumers():
    net = Net(TINY, "TEST")
    splits = [lp for lp in net.layer_params if lp.type == "Split"]
    assert len(splits) == 2  # fc and label both feed loss and acc
    fc_split = next(lp for lp in splits if lp.bottom[0] == "fc")
    assert list(fc_split.top) == ["fc_fc_0_split_0", "fc_fc_0_split_1"]
    assert net.layer_params[-2].bottom[0] == "fc_fc_0_split_0"


def test_in_place_layers_share_the_blob():
    net = Net(TINY, "TRAIN")
    conv_index = net._layer_names.index("conv1")
    relu_index = net._layer_names.index("relu1")
    assert net.top_blobs[conv_index][0] is net.top_blobs[relu_index][0]


def _numeric_loss_grad(net, inputs, array, index, eps=1e-6):
    original = array[index]
    array[index] = original + eps
    plus = net.forward(**inputs).loss
    array[index] = original - eps
    minus = net.forward(**inputs).loss
    array[index] = original
    return (plus - minus) / (2 * eps)


def test_forward_loss_and_backward_match_finite_differences():
    net = Net(TINY, "TEST", dtype=np.float64, seed=3)
    inputs = tiny_inputs()
    out = net.forward(**inputs)
    assert set(out) == {"loss", "acc"}
    assert out.loss == pytest.approx(float(out["loss"]))
    net.clear_param_diffs()
    diffs = net.backward()
    weight = net.params["conv1"][0]
    for index in [(0, 0, 0, 0), (3, 2, 1, 2), (1, 1, 2, 0)]:
        numeric = _numeric_loss_grad(net, inputs, weight.data, index)
        assert weight.diff[index] == pytest.approx(numeric, rel=1e-4, abs=1e-7)
    data = net.blobs["data"]
    for index in [(0, 0, 0, 0), (1, 2, 5, 3)]:
        inputs_copy = dict(inputs)
        inputs_copy["data"] = inputs["data"].copy()
        numeric = _numeric_loss_grad(net, inputs_copy, inputs_copy["data"], index)
        assert diffs["data"][index] == pytest.approx(numeric, rel=1e-4, abs=1e-7)
    assert data.diff is diffs["data"]


def test_loss_weight_on_any_top_and_default_loss_weight():
    text = TINY.replace('top: "pool1"\n', 'top: "pool1" loss_weight: 0.5\n', 1)
    net = Net(text, "TRAIN", dtype=np.float64)
    out = net.forward(**tiny_inputs())
    expected = float(out["loss"]) + 0.5 * float(net.blobs["pool1"].data.sum())
    assert out.loss == pytest.approx(expected)
    # pool1 is a loss top consumed by fc: a Split carries the loss.
    assert any(lp.type == "Split" and lp.bottom[0] == "pool1" for lp in net.layer_params)


def test_backward_planning_skips_layers_that_feed_no_loss():
    text = TINY.replace("force_backward: true\n", "")
    net = Net(text, "TRAIN")
    need = dict(zip(net._layer_names, net.layer_need_backward))
    assert need["data"] is False
    assert need["conv1"] and need["fc"] and need["loss"]
    # No gradient to the data or the labels without force_backward.
    conv = net._layer_names.index("conv1")
    assert net.bottom_need_backward[conv] == [False]
    loss = net._layer_names.index("loss")
    assert net.bottom_need_backward[loss] == [True, False]


def test_force_backward_reaches_data_but_never_labels():
    net = Net(TINY, "TRAIN")
    conv = net._layer_names.index("conv1")
    loss = net._layer_names.index("loss")
    assert net.bottom_need_backward[conv] == [True]
    assert net.bottom_need_backward[loss] == [True, False]


def test_propagate_down_false_stops_the_gradient():
    # (force_backward would override propagate_down, as in Caffe.)
    text = TINY.replace("force_backward: true\n", "").replace(
        'bottom: "pool1" top: "fc"', 'bottom: "pool1" top: "fc" propagate_down: false')
    net = Net(text, "TRAIN")
    fc = net._layer_names.index("fc")
    assert net.bottom_need_backward[fc] == [False]
    assert not net.layer_need_backward[net._layer_names.index("pool1")]
    assert net.layer_need_backward[fc]  # its own weights still learn


def test_lr_and_decay_multipliers():
    net = Net(TINY, "TRAIN")
    by_name = {(p.layer, p.index): p for p in net.learnable_params}
    assert by_name[("conv1", 0)].lr_mult == 1 and by_name[("conv1", 1)].lr_mult == 2
    assert by_name[("conv1", 1)].decay_mult == 0
    assert by_name[("fc", 0)].lr_mult == 1


SHARED = """
layer { name: "data" type: "Input" top: "a" top: "b"
        input_param { shape { dim: 2 dim: 5 } } }
layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "ya"
        param { name: "w" } param { name: "bias" }
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
layer { name: "ip_b" type: "InnerProduct" bottom: "b" top: "yb"
        param { name: "w" } param { name: "bias" }
        inner_product_param { num_output: NOUT weight_filler { type: "gaussian" } } }
"""


def test_parameter_sharing_by_name():
    net = Net(SHARED.replace("NOUT", "4"), "TRAIN")
    assert net.params["ip_a"][0] is net.params["ip_b"][0]
    assert len(net.learnable_params) == 2
    x = np.ones((2, 5))
    out = net.forward(a=x, b=x)
    np.testing.assert_allclose(out["ya"], out["yb"])


def test_parameter_sharing_shape_mismatch_is_an_error():
    with pytest.raises(NetDefinitionError, match=r"shared parameter 'w' has shape \(3, 5\)"):
        Net(SHARED.replace("NOUT", "3"), "TRAIN")


def test_missing_bottom_error_names_layer_and_blob():
    text = TINY.replace('bottom: "pool1" top: "fc"', 'bottom: "pool2" top: "fc"')
    with pytest.raises(NetDefinitionError, match=r"layer 'fc' \(type InnerProduct\): bottom 'pool2' "
                                                 r"is not produced by any earlier layer"):
        Net(text, "TRAIN")


def test_unknown_layer_type_lists_close_matches():
    text = TINY.replace('type: "ReLU"', 'type: "Relu"')
    with pytest.raises(NetDefinitionError, match=r"unknown layer type 'Relu'; did you mean 'ReLU'"):
        Net(text, "TRAIN")


def test_shape_mismatch_names_layer_blob_and_shapes():
    text = """
    layer { name: "data" type: "Input" top: "a" top: "b"
            input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 4 } } }
    layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "c" }
    """
    with pytest.raises(ShapeError, match=r"layer 'sum'.*'b'.*\(2, 4\)"):
        Net(text, "TRAIN")


def test_top_produced_twice_is_an_error():
    text = """
    layer { name: "data" type: "Input" top: "a" input_param { shape { dim: 2 } } }
    layer { name: "r" type: "ReLU" bottom: "a" top: "b" }
    layer { name: "r2" type: "ReLU" bottom: "a" top: "b" }
    """
    with pytest.raises(NetDefinitionError, match="top 'b' is already produced"):
        Net(text, "TRAIN")


def test_stage_and_level_rules():
    text = """
    layer { name: "data" type: "Input" top: "a" input_param { shape { dim: 2 } } }
    layer { name: "deploy_only" type: "ReLU" bottom: "a" top: "b" include { stage: "deploy" } }
    layer { name: "not_deploy" type: "ReLU" bottom: "a" top: "c" exclude { stage: "deploy" } }
    layer { name: "deep" type: "ReLU" bottom: "a" top: "d" include { min_level: 2 } }
    """
    def layers(net):
        return [name for name, layer in net.layer_dict.items() if layer.type != "Split"]
    assert layers(Net(text, "TEST")) == ["data", "not_deploy"]
    assert layers(Net(text, "TEST", stages=["deploy"], level=3)) == ["data", "deploy_only", "deep"]


def test_caffemodel_save_and_copy_from(tmp_path):
    net = Net(TINY, "TRAIN", seed=1)
    path = tmp_path / "tiny.caffemodel"
    net.save(path)
    other = Net(TINY, "TRAIN", seed=2)
    assert not np.allclose(other.params["conv1"][0].data, net.params["conv1"][0].data)
    report = other.copy_from(path)
    assert report.loaded == ["conv1", "fc"] and not report.missing and not report.unused
    np.testing.assert_array_equal(other.params["conv1"][0].data, net.params["conv1"][0].data)
    again = Net(TINY, "TEST", weights=str(path))
    np.testing.assert_array_equal(again.params["fc"][0].data, net.params["fc"][0].data)


def test_native_snapshot_roundtrip(tmp_path):
    net = Net(TINY, "TRAIN", seed=1)
    path = tmp_path / "tiny.weights"
    net.save_weights(path)
    other = Net(TINY, "TRAIN", seed=2)
    other.copy_from(path)
    np.testing.assert_array_equal(other.params["fc"][0].data, net.params["fc"][0].data)


def test_weights_shape_mismatch_error_and_skip(tmp_path):
    net = Net(TINY, "TRAIN")
    path = tmp_path / "tiny.caffemodel"
    net.save(path)
    wider = TINY.replace("num_output: 4", "num_output: 5")
    with pytest.raises(WeightsError, match=r"layer 'conv1' param 0: the weights have shape "
                                           r"\(4, 3, 3, 3\) but the net expects \(5, 3, 3, 3\)"):
        Net(wider, "TRAIN").copy_from(path)
    report = Net(wider, "TRAIN").copy_from(path, skip_mismatched=True)
    # fc's input size changed with conv1's output: both are skipped.
    assert [name for name, _ in report.skipped] == ["conv1", "fc"]
    assert report.loaded == []


def test_a_blob_last_written_in_place_is_an_output():
    """Caffe's rule: a blob no later layer reads is an output, also when
    its last writer works in place (a deploy net ending in a ReLU)."""
    text = TINY.replace(
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }',
        'layer { name: "fc_relu" type: "ReLU" bottom: "fc" top: "fc" }')
    text = text[:text.index('layer { name: "acc"')]
    net = Net(text, "TEST")
    assert net.outputs == ["label", "fc"]
    out = net.forward(**tiny_inputs())
    assert (out["fc"] >= 0).all()


def test_a_net_without_layers_runs_nothing():
    """Caffe builds a net with no layers (a file cut short, say); forward
    and backward then do nothing instead of failing inside the range logic."""
    net = Net('name: "empty"\n', "TEST")
    out = net.forward()
    assert out == {} and out.loss == 0.0 and net.backward() == {}
    with pytest.raises(NetDefinitionError, match=r"forward end: no layer named 'x' \(layers: \)"):
        net.forward(end="x")


def test_a_layer_that_changes_the_shape_cannot_work_in_place():
    """A Pooling top named like its bottom would overwrite the input it reads
    (the fuzz campaign's escape: it built and gave the wrong shape)."""
    text = ('layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 '
            'dim: 8 dim: 8 } } }\n'
            'layer { name: "pool" type: "Pooling" bottom: "data" top: "data" '
            'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }')
    with pytest.raises(NetDefinitionError, match=r"layer 'pool' \(type Pooling\) works in place on "
                       r"blob 'data' but changes its shape from \(1, 3, 8, 8\) to \(1, 3, 4, 4\)"):
        Net(text, "TEST")
