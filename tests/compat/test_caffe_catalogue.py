"""Every BVLC Caffe layer type builds from a prototxt in a Net, runs
forward and backward there, and shows in netdef.inspect's report.

Each case is the layer under test fed by an Input layer (values chosen so
the layer's preconditions hold: labels in range, indices valid, positive
inputs for Log and Power); the layers' own tests check their numbers. The
data layers, which read files, are built from files in their own tests.
"""
import numpy as np
import pytest

from layers.base import registered_types
from netdef import Net
from netdef.inspect import format_report, layer_rows

RNG = np.random.default_rng(0)


def uniform(low, high):
    return lambda shape: RNG.uniform(low, high, size=shape)


def integers(high):
    return lambda shape: RNG.integers(0, high, size=shape).astype(np.float64)


NORMAL = RNG.standard_normal
#: type -> (layer text after its name/type/bottoms/tops, [(bottom shape, values)], tops)
CASES = {
    "LRN": ("lrn_param { local_size: 3 alpha: 0.001 }", [((2, 4, 5, 5), NORMAL)], 1),
    "LRN within": ('lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL }',
                   [((2, 4, 5, 5), NORMAL)], 1),
    "Deconvolution": ("convolution_param { num_output: 3 kernel_size: 3 stride: 2 }",
                      [((2, 4, 5, 5), NORMAL)], 1),
    "PReLU": ("", [((2, 4, 5, 5), NORMAL)], 1),
    "MVN": ("", [((2, 4, 5, 5), NORMAL)], 1),
    "ELU": ("elu_param { alpha: 0.5 }", [((2, 6), NORMAL)], 1),
    "Swish": ("swish_param { beta: 1.5 }", [((2, 6), NORMAL)], 1),
    "Clip": ("clip_param { min: -0.5 max: 0.5 }", [((2, 6), NORMAL)], 1),
    "Power": ("power_param { power: 2 scale: 0.5 shift: 1 }", [((2, 6), uniform(0.1, 1))], 1),
    "Exp": ("exp_param { base: 2 }", [((2, 6), NORMAL)], 1),
    "Log": ("log_param { base: 10 }", [((2, 6), uniform(0.5, 2))], 1),
    "AbsVal": ("", [((2, 6), NORMAL)], 1),
    "BNLL": ("", [((2, 6), NORMAL)], 1),
    "Threshold": ("threshold_param { threshold: 0.1 }", [((2, 6), NORMAL)], 1),
    "Bias": ("", [((2, 3, 4), NORMAL), ((3,), NORMAL)], 1),
    "ArgMax": ("argmax_param { top_k: 2 }", [((2, 6), NORMAL)], 1),
    "Tile": ("tile_param { tiles: 3 }", [((2, 4), NORMAL)], 1),
    "Reduction": ("reduction_param { operation: SUMSQ axis: 1 }", [((2, 4, 3), NORMAL)], 1),
    "Embed": ("embed_param { num_output: 4 input_dim: 5 }", [((6,), integers(5))], 1),
    "Filter": ("", [((4, 3), NORMAL), ((4,), lambda s: np.array([1.0, 0, 1, 1]))], 1),
    "BatchReindex": ("", [((4, 3), NORMAL), ((5,), integers(4))], 1),
    "Parameter": ("parameter_param { shape { dim: 2 dim: 3 } }", [], 1),
    "SPP": ("spp_param { pyramid_height: 2 }", [((2, 3, 7, 9), NORMAL)], 1),
    "EuclideanLoss": ("", [((3, 4), NORMAL), ((3, 4), NORMAL)], 1),
    "SigmoidCrossEntropyLoss": ("", [((3, 4), NORMAL), ((3, 4), integers(2))], 1),
    "HingeLoss": ("hinge_loss_param { norm: L2 }", [((3, 4), NORMAL), ((3,), integers(4))], 1),
    "InfogainLoss": ("", [((3, 4), NORMAL), ((3,), integers(4)),
                          ((1, 1, 4, 4), lambda s: np.eye(4).reshape(s))], 1),
    "ContrastiveLoss": ("", [((3, 4), NORMAL), ((3, 4), NORMAL), ((3,), integers(2))], 1),
    "MultinomialLogisticLoss": ("", [((3, 4), uniform(0.05, 1)), ((3,), integers(4))], 1),
    "RNN": ("recurrent_param { num_output: 3 weight_filler { type: 'uniform' min: -0.3 "
            "max: 0.3 } }", [((3, 2, 4), NORMAL), ((3, 2), lambda s: np.ones(s))], 1),
    "LSTM": ("recurrent_param { num_output: 3 weight_filler { type: 'uniform' min: -0.3 "
             "max: 0.3 } }", [((3, 2, 4), NORMAL), ((3, 2), lambda s: np.ones(s))], 1),
    "LSTMUnit": ("", [((1, 2, 3), NORMAL), ((1, 2, 12), NORMAL),
                      ((1, 2), lambda s: np.ones(s))], 2),
}

DATA_LAYERS = ("ImageData", "Data", "HDF5Data", "HDF5Output", "MemoryData")


def net_text(case):
    layer_type = case.split()[0]
    body, bottoms, tops = CASES[case]
    names = [f"b{i}" for i in range(len(bottoms))]
    text = "force_backward: true\n"
    if bottoms:
        shapes = " ".join("shape { " + " ".join(f"dim: {d}" for d in shape) + " }"
                          for shape, _ in bottoms)
        text += (f'layer {{ name: "in" type: "Input" '
                 + "".join(f'top: "{n}" ' for n in names) + f"input_param {{ {shapes} }} }}\n")
    top_names = [f"t{i}" for i in range(tops)]
    return text + (f'layer {{ name: "under_test" type: "{layer_type}" '
                   + "".join(f'bottom: "{n}" ' for n in names)
                   + "".join(f'top: "{n}" ' for n in top_names) + body + " }\n")


def test_every_listed_type_is_registered():
    listed = {case.split()[0] for case in CASES} | set(DATA_LAYERS)
    assert listed - set(registered_types()) == set()


@pytest.mark.parametrize("case", sorted(CASES))
def test_builds_runs_and_is_reported(case):
    net = Net(net_text(case), "TRAIN", dtype=np.float64)
    inputs = {f"b{i}": values(shape) for i, (shape, values) in enumerate(CASES[case][1])}
    outputs = net.forward(**inputs)
    for name, value in outputs.items():
        assert np.all(np.isfinite(np.asarray(value))), (case, name)
    net.backward()
    for blobs in net.params.values():
        for blob in blobs:
            assert np.all(np.isfinite(blob.diff))
    report = format_report(net, layer_rows(net))
    assert "under_test" in report and case.split()[0] in report
