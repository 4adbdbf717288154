"""Fillers on degenerate shapes: xavier and msra refuse a zero fan with a
named error (in a Net, naming the layer); the others fill empty shapes."""
import numpy as np
import pytest

from netdef import Net
from netdef.caffe_pb2 import FillerParameter
from netdef.errors import NetDefinitionError
from netdef.fillers import fill


def filler(kind, **fields):
    param = FillerParameter(type=kind)
    for name, value in fields.items():
        setattr(param, name, value)
    return param


@pytest.mark.parametrize("kind", ["xavier", "msra"])
@pytest.mark.parametrize("norm,name", [(FillerParameter.FAN_IN, "fan_in"),
                                       (FillerParameter.FAN_OUT, "fan_out"),
                                       (FillerParameter.AVERAGE, r"\(fan_in \+ fan_out\) / 2")])
@pytest.mark.parametrize("shape", [(4, 0, 3, 3), (0, 5)])
def test_zero_fan_is_a_named_error(kind, norm, name, shape):
    with pytest.raises(NetDefinitionError,
                       match=rf"{kind} filler: expected a weight shape with a positive {name}, "
                             rf"found {name} = 0 for shape \({shape[0]}, {shape[1]}"):
        fill(filler(kind, variance_norm=norm), shape, np.random.default_rng(0))


@pytest.mark.parametrize("param", [filler("constant", value=2.0), filler("gaussian", std=0.1),
                                   filler("gaussian", sparse=3), filler("uniform"),
                                   filler("positive_unitball")], ids=lambda p: p.type + str(p.sparse))
@pytest.mark.parametrize("shape", [(4, 0), (0, 4), (0, 2, 3, 3)])
def test_other_fillers_give_empty_arrays(param, shape):
    values = fill(param, shape, np.random.default_rng(0))
    assert values.shape == shape and values.dtype == np.float64


def test_xavier_still_matches_caffe_scale_on_a_normal_shape():
    """sqrt(3 / fan_in) bounds the uniform draw (fan_in = count / num)."""
    values = fill(filler("xavier"), (64, 8, 3, 3), np.random.default_rng(0))
    bound = np.sqrt(3.0 / (8 * 9))
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.95 * bound


def test_net_names_the_layer_of_a_zero_fan():
    """An InnerProduct fed a (N, 0) blob: the filler's error names the layer."""
    net = '''name: "t"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 0 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "msra" } } }'''
    with pytest.raises(NetDefinitionError, match=r"<string>: layer 'fc' \(type InnerProduct\): "
                                                 r"msra filler: .*fan_in = 0 for shape \(3, 0\)"):
        Net(net, "TRAIN")
