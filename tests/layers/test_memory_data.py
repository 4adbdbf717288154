"""MemoryData: arrays given with reset served in order, batch after batch,
inside a Net too; every error."""
import numpy as np
import pytest

from netdef.device import Device, to_numpy
from netdef.errors import DataError, DataWarning, NetDefinitionError
from netdef.gradcheck import build_layer, setup_layer
from netdef.net import Net

SPEC = ('name: "mem" type: "MemoryData" top: "data" top: "label" '
        'memory_data_param { batch_size: 2 channels: 3 height: 2 width: 4 }')


def make(text=SPEC, dtype=np.float32, device=None):
    kwargs = {"device": device} if device is not None else {}
    layer = build_layer(text, dtype=dtype, **kwargs)
    _, tops = setup_layer(layer, [])
    return layer, tops


def arrays(n=6):
    data = np.arange(n * 24, dtype=np.float64).reshape(n, 3, 2, 4) / 7
    return data, np.arange(n) + 0.5


def test_batches_in_order_and_round_again():
    layer, tops = make()
    assert tops[0].shape == (2, 3, 2, 4) and tops[1].shape == (2,)
    data, labels = arrays(6)
    layer.reset(data, labels)
    for k in range(5):                      # three batches, then from the first again
        layer.forward([], tops)
        rows = slice(2 * (k % 3), 2 * (k % 3) + 2)
        np.testing.assert_array_equal(tops[0].data, data[rows].astype(np.float32))
        np.testing.assert_array_equal(tops[1].data, labels[rows].astype(np.float32))


def test_reset_starts_over_and_takes_pycaffes_label_shape():
    layer, tops = make(dtype=np.float64)
    data, labels = arrays(4)
    layer.reset(data, labels)
    layer.forward([], tops)
    layer.reset(data[::-1].copy(), labels[::-1].reshape(4, 1, 1, 1))
    layer.forward([], tops)
    np.testing.assert_array_equal(tops[0].data, data[::-1][:2])
    np.testing.assert_array_equal(tops[1].data, labels[::-1][:2])
    assert tops[0].data.dtype == np.float64


def test_in_a_net_the_layer_is_fed_through_reset():
    net = Net(f"layer {{ {SPEC} }}\n"
              'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
              'inner_product_param { num_output: 2 } }', "TEST")
    data, labels = arrays(4)
    net.layer_dict["mem"].reset(data, labels)
    net.forward()
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, labels[2:].astype(np.float32))


def test_pycaffes_set_input_arrays_feeds_the_first_memory_data_layer():
    net = Net(f"layer {{ {SPEC} }}\n"
              'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
              'inner_product_param { num_output: 2 } }', "TEST")
    data, labels = arrays(4)
    net.set_input_arrays(data, labels)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[:2].astype(np.float32))
    with pytest.raises(NetDefinitionError, match=r"takes \(data, labels\) for a MemoryData"):
        net.set_input_arrays(data)
    with pytest.raises(NetDefinitionError, match=r"takes \(data, labels\)"):
        net.set_input_arrays(data, labels, ip=data)
    plain = Net('layer { name: "in" type: "Input" top: "x" '
                'input_param { shape { dim: 1 dim: 2 } } }', "TEST")
    with pytest.raises(NetDefinitionError, match=r"needs a MemoryData layer as the net's first"):
        plain.set_input_arrays(data, labels)
    plain.set_input_arrays(x=np.ones((1, 2)))      # the keyword form is unchanged
    np.testing.assert_array_equal(plain.blobs["x"].data, 1)


def test_transform_param_is_not_applied_and_says_so():
    layer, tops = make(SPEC + " transform_param { scale: 2 }")
    data, labels = arrays(2)
    with pytest.warns(DataWarning, match="does not apply transform_param"):
        layer.reset(data, labels)
    layer.forward([], tops)
    np.testing.assert_array_equal(tops[0].data, data.astype(np.float32))


# -- errors --------------------------------------------------------------------------

def test_error_dimensions_must_be_positive():
    with pytest.raises(NetDefinitionError, match="must all be positive, found 2, 3, 0, 4"):
        make(SPEC.replace("height: 2", "height: 0"))


def test_error_data_of_the_wrong_shape():
    layer, _ = make()
    with pytest.raises(DataError, match=r"layer 'mem'.*reset data must be \(n, 3, 2, 4\).*"
                                        r"found \(2, 3, 4, 2\)"):
        layer.reset(np.zeros((2, 3, 4, 2)), np.zeros(2))


def test_error_labels_that_do_not_match_the_rows():
    layer, _ = make()
    with pytest.raises(DataError, match=r"reset labels must be \(4,\).*found \(3,\)"):
        layer.reset(np.zeros((4, 3, 2, 4)), np.zeros(3))


def test_error_rows_not_a_multiple_of_batch_size():
    layer, _ = make()
    with pytest.raises(DataError, match="reset got 3 rows, not a multiple of batch_size 2"):
        layer.reset(np.zeros((3, 3, 2, 4)), np.zeros(3))


def test_error_forward_before_reset():
    layer, tops = make()
    with pytest.raises(NetDefinitionError, match=r"has no data: call layer.reset\(data, labels\)"):
        layer.forward([], tops)


@pytest.mark.gpu
def test_tops_land_on_the_gpu():
    import cupy
    layer, tops = make(device=Device("gpu", 0))
    data, labels = arrays(2)
    layer.reset(cupy.asarray(data), labels)
    layer.forward([], tops)
    assert isinstance(tops[0].data, cupy.ndarray) and isinstance(tops[1].data, cupy.ndarray)
    np.testing.assert_array_equal(to_numpy(tops[0].data), data.astype(np.float32))
