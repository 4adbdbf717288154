"""Input and DummyData: tops sized at setup, values (for DummyData) from
fillers, the no-op forward/backward contract the Net relies on, every error."""
import re

import numpy as np
import pytest

from netdef.errors import NetDefinitionError
from netdef.gradcheck import build_layer, setup_layer
from layers.input import DummyDataLayer, InputLayer
from tests.kernel_harness import compare_devices


def make(spec, num_tops=None, dtype=np.float64, seed=0):
    layer = build_layer(spec, dtype=dtype, seed=seed)
    bottoms, tops = setup_layer(layer, [], num_tops)
    return layer, bottoms, tops


def shape_text(dims):
    return "shape { " + " ".join(f"dim: {d}" for d in dims) + " }"


def input_spec(shapes, tops=("data",)):
    top_text = " ".join(f'top: "{t}"' for t in tops)
    return (f'name: "in" type: "Input" {top_text} '
            f'input_param {{ {" ".join(shape_text(s) for s in shapes)} }}')


def dummy_spec(fields, tops=("a",)):
    top_text = " ".join(f'top: "{t}"' for t in tops)
    return f'name: "dd" type: "DummyData" {top_text} dummy_data_param {{ {fields} }}'


# -- Input ---------------------------------------------------------------------------

def test_input_one_shape_for_every_top():
    layer, _, tops = make(input_spec([(2, 3, 4, 5)], tops=("data", "im_info")))
    assert [t.shape for t in tops] == [(2, 3, 4, 5), (2, 3, 4, 5)]


def test_input_one_shape_per_top():
    layer, _, tops = make(input_spec([(1, 3, 6, 8), (1, 3)], tops=("data", "im_info")))
    assert [t.shape for t in tops] == [(1, 3, 6, 8), (1, 3)]


def test_input_without_shape_keeps_the_tops():
    layer, _, tops = make('name: "in" type: "Input" top: "data"')
    assert tops[0].shape == ()


def test_input_forward_and_backward_leave_the_blobs_alone():
    layer, bottoms, tops = make(input_spec([(2, 3)]))
    # The Net writes the inputs, and may give them a new shape.
    tops[0].reshape((4, 3))
    tops[0].data[...] = np.arange(12.0).reshape(4, 3)
    tops[0].diff[...] = 2.5
    layer.reshape(bottoms, tops)
    layer.forward(bottoms, tops)
    assert tops[0].shape == (4, 3)
    assert np.array_equal(tops[0].data, np.arange(12.0).reshape(4, 3))
    layer.backward(tops, [], bottoms)
    assert np.all(tops[0].diff == 2.5)


@pytest.mark.gpu
def test_input_gpu_matches_cpu():
    compare_devices(input_spec([(2, 3)]), [])


def test_input_errors():
    with pytest.raises(NetDefinitionError, match=re.escape(
            "layer 'in' (type Input): input_param shape must be given once or once per top "
            "(3 top(s)), found 2")):
        make(input_spec([(1, 2), (3, 4)], tops=("a", "b", "c")))
    with pytest.raises(NetDefinitionError, match=re.escape(
            "layer 'in' (type Input): input_param shape for top 'data' must have non-negative "
            "dims, found (2, -3)")):
        make(input_spec([(2, -3)]))
    with pytest.raises(NetDefinitionError, match=re.escape(
            "layer 'in' (type Input): needs at least 1 top blob(s), found 0")):
        make('name: "in" type: "Input"', num_tops=0)


# -- DummyData -------------------------------------------------------------------------

def test_dummy_data_without_filler_is_zero():
    layer, bottoms, tops = make(dummy_spec(shape_text((2, 3))))
    layer.forward(bottoms, tops)
    assert tops[0].shape == (2, 3) and np.all(tops[0].data == 0)


def test_dummy_data_constant_fills_once_at_setup():
    fields = 'data_filler { type: "constant" value: 3.5 } ' + shape_text((2, 3, 4))
    layer, bottoms, tops = make(dummy_spec(fields))
    assert np.all(tops[0].data == 3.5)
    # Caffe does not refill constant tops on forward.
    tops[0].data[0, 0, 0] = -1.0
    layer.forward(bottoms, tops)
    assert tops[0].data[0, 0, 0] == -1.0 and tops[0].data[1, 2, 3] == 3.5


def test_dummy_data_random_fillers_refill_every_forward():
    fields = 'data_filler { type: "uniform" min: 2 max: 3 } ' + shape_text((4, 5))
    layer, bottoms, tops = make(dummy_spec(fields))
    layer.forward(bottoms, tops)
    first = tops[0].data.copy()
    layer.forward(bottoms, tops)
    second = tops[0].data.copy()
    for values in (first, second):
        assert values.min() >= 2.0 and values.max() <= 3.0
        assert len(np.unique(values)) == values.size
    assert not np.any(first == second)


def test_dummy_data_gaussian_statistics():
    fields = 'data_filler { type: "gaussian" mean: 1.5 std: 0.5 } ' + shape_text((100, 100))
    layer, bottoms, tops = make(dummy_spec(fields))
    layer.forward(bottoms, tops)
    values = tops[0].data
    n = values.size
    mean = sum(values.flat) / n
    std = (sum((v - mean) ** 2 for v in values.flat) / n) ** 0.5
    assert abs(mean - 1.5) < 0.02 and abs(std - 0.5) < 0.02


def test_dummy_data_is_reproducible_from_the_seed():
    fields = 'data_filler { type: "gaussian" } ' + shape_text((3, 4))

    def draws(seed):
        layer, bottoms, tops = make(dummy_spec(fields), seed=seed)
        out = []
        for _ in range(2):
            layer.forward(bottoms, tops)
            out.append(tops[0].data.copy())
        return out

    a, b, c = draws(7), draws(7), draws(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_dummy_data_one_filler_and_shape_per_top():
    fields = ('data_filler { type: "constant" value: 1 } '
              'data_filler { type: "uniform" min: -1 max: 0 } '
              + shape_text((2, 3)) + " " + shape_text((4,)))
    layer, bottoms, tops = make(dummy_spec(fields, tops=("a", "b")))
    layer.forward(bottoms, tops)
    assert tops[0].shape == (2, 3) and np.all(tops[0].data == 1)
    assert tops[1].shape == (4,) and np.all((tops[1].data >= -1) & (tops[1].data <= 0))
    assert np.any(tops[1].data != 0)


def test_dummy_data_one_filler_for_every_top():
    fields = 'data_filler { type: "constant" value: 2 } ' + shape_text((2,))
    layer, bottoms, tops = make(dummy_spec(fields, tops=("a", "b", "c")))
    assert all(t.shape == (2,) and np.all(t.data == 2) for t in tops)


def test_dummy_data_legacy_dims():
    fields = "num: 2 channels: 3 channels: 1 height: 4 width: 5"
    layer, bottoms, tops = make(dummy_spec(fields, tops=("a", "b")))
    assert [t.shape for t in tops] == [(2, 3, 4, 5), (2, 1, 4, 5)]


def test_dummy_data_forward_does_not_reshape_and_backward_is_a_no_op():
    fields = 'data_filler { type: "gaussian" } ' + shape_text((2, 3))
    layer, bottoms, tops = make(dummy_spec(fields))
    layer.reshape(bottoms, tops)
    layer.forward(bottoms, tops)
    data = tops[0].data.copy()
    tops[0].diff[...] = 1.25
    layer.backward(tops, [], bottoms)
    assert np.array_equal(tops[0].data, data) and np.all(tops[0].diff == 1.25)


@pytest.mark.gpu
def test_dummy_data_gpu_matches_cpu():
    fields = ('data_filler { type: "gaussian" } data_filler { type: "constant" value: 2 } '
              + shape_text((2, 3)))
    compare_devices(dummy_spec(fields, tops=("a", "b")), [])


@pytest.mark.parametrize("fields,tops,message", [
    ('data_filler { type: "constant" } data_filler { type: "constant" } ' + shape_text((2,)),
     ("a", "b", "c"),
     "layer 'dd' (type DummyData): dummy_data_param data_filler must be given 0 times, once, "
     "or once per top (3 top(s)), found 2"),
    (shape_text((2,)) + " " + shape_text((3,)), ("a", "b", "c"),
     "layer 'dd' (type DummyData): dummy_data_param shape must be given once or once per top "
     "(3 top(s)), found 2"),
    ("num: 1 channels: 1 height: 1 width: 1 " + shape_text((2,)), ("a",),
     "layer 'dd' (type DummyData): dummy_data_param gives both shape and the legacy "
     "num/channels/height/width fields; use one or the other"),
    ("num: 1 num: 2 num: 3 channels: 1 height: 1 width: 1", ("a", "b"),
     "dummy_data_param num must be given once or once per top (2 top(s)), found 3"),
    ("num: 1 height: 1 width: 1", ("a",),
     "dummy_data_param channels must be given once or once per top (1 top(s)), found 0"),
    ("", ("a",),
     "layer 'dd' (type DummyData): dummy_data_param needs a shape (or "
     "num/channels/height/width) for its tops"),
    (shape_text((2, -1)), ("a",),
     "dummy_data_param shape for top 'a' must have non-negative dims, found (2, -1)"),
    ('data_filler { type: "nonsense" } ' + shape_text((2,)), ("a",),
     "unknown filler type 'nonsense'"),
])
def test_dummy_data_errors(fields, tops, message):
    with pytest.raises(NetDefinitionError, match=re.escape(message)):
        make(dummy_spec(fields, tops=tops))


# -- through a Net -----------------------------------------------------------------------

MOVEMENT_NET = '''
name: "movement"
force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 18 dim: 2 dim: 3 } } }
layer { name: "noise" type: "DummyData" top: "n"
        dummy_data_param { data_filler { type: "gaussian" } shape { dim: 1 dim: 2 dim: 4 dim: 3 } } }
layer { name: "rs" type: "Reshape" bottom: "x" top: "r"
        reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 0 } } }
layer { name: "sl" type: "Slice" bottom: "r" top: "a" top: "b" slice_param { axis: 2 slice_point: 5 } }
layer { name: "cat" type: "Concat" bottom: "b" bottom: "a" bottom: "n" top: "c" concat_param { axis: 2 } }
layer { name: "fl" type: "Flatten" bottom: "c" top: "f" }
layer { name: "si" type: "Silence" bottom: "r" }
'''


def test_layers_in_a_net_follow_new_input_shapes_and_back_propagate():
    from netdef.device import CPU
    from netdef.net import Net
    net = Net(MOVEMENT_NET, "TRAIN", device=CPU, dtype=np.float64)
    assert net.inputs == ["x"] and net.outputs == ["f"]
    # 'r' feeds Slice and Silence, so the Net inserted a Split after it.
    assert any(lp.type == "Split" for lp in net.layer_params)
    x = np.arange(18.0 * 2 * 3).reshape(1, 18, 2, 3)
    out = net.forward(x=x)
    noise = net.blobs["n"].data.copy()
    r = x.reshape(1, 2, 18, 3)
    expected = np.concatenate([r[:, :, 5:], r[:, :, :5], noise], axis=2).reshape(1, -1)
    assert np.array_equal(out["f"], expected)

    g = np.random.default_rng(0).standard_normal((1, 2 * 22 * 3))
    diffs = net.backward(f=g)
    g4 = g.reshape(1, 2, 22, 3)
    assert np.array_equal(diffs["x"], np.concatenate([g4[:, :, 13:18], g4[:, :, :13]], axis=2)
                          .reshape(1, 18, 2, 3))

    # A new input shape flows through; DummyData draws fresh noise.
    net.forward(x=np.ones((1, 18, 4, 3)))
    assert net.blobs["r"].shape == (1, 2, 36, 3) and net.blobs["f"].shape == (1, 2 * 40 * 3)
    assert not np.array_equal(net.blobs["n"].data, noise)


@pytest.mark.parametrize("kind", [InputLayer, DummyDataLayer])
def test_gpu_path_is_the_cpu_code(kind):
    """Input and DummyData fill their tops with the same code on both
    devices (so there is no host-run kernel test to write)."""
    assert kind.forward_gpu is kind.forward_cpu and kind.backward_gpu is kind.backward_cpu
