"""Binary .caffemodel reading/writing and the pickle-free array container.

The fixtures are built here with the schema (the real protobuf runtime), in
tmp_path: a current-format weights file and a legacy V1 one with
(num, channels, height, width) blobs and a double-precision blob.
"""
import os
import pickle

import numpy as np
import pytest

from netdef import caffe_pb2
from netdef.caffemodel import (caffemodel_blobs, conform_blob, load_net_param,
                               read_caffemodel, write_caffemodel)
from netdef.errors import WeightsError
from netdef.snapshot_format import META_KEY, load_arrays, save_arrays


def values(count, seed):
    return np.random.default_rng(seed).standard_normal(count)


# ---------------------------------------------------------------------------
# Fixtures

def new_style_net():
    """Conv (weights + bias), in-place ReLU, InnerProduct with a double blob."""
    net = caffe_pb2.NetParameter(name="tiny")
    data = net.layer.add(name="data", type="Input", top=["data"])
    data.input_param.shape.add(dim=[1, 3, 5, 5])
    conv = net.layer.add(name="conv1", type="Convolution", bottom=["data"], top=["conv1"])
    conv.convolution_param.num_output = 2
    conv.convolution_param.kernel_size.append(3)
    conv.param.add(lr_mult=1)
    conv.param.add(lr_mult=2, decay_mult=0)
    weight = conv.blobs.add()
    weight.shape.dim.extend([2, 3, 3, 3])
    weight.data.extend(values(54, 0).astype(np.float32))
    bias = conv.blobs.add()
    bias.shape.dim.extend([2])
    bias.data.extend([0.5, -0.25])
    net.layer.add(name="relu1", type="ReLU", bottom=["conv1"], top=["conv1"])
    fc = net.layer.add(name="fc", type="InnerProduct", bottom=["conv1"], top=["fc"])
    fc.inner_product_param.num_output = 4
    fc_weight = fc.blobs.add()
    fc_weight.shape.dim.extend([4, 18])
    fc_weight.double_data.extend(values(72, 1))
    return net


def legacy_v1_net():
    """A V1 weights file: legacy inputs, enum types, 4-D legacy blob dims."""
    net = caffe_pb2.NetParameter(name="old")
    net.input.append("data")
    net.input_dim.extend([1, 3, 5, 5])
    V1 = caffe_pb2.V1LayerParameter
    conv = net.layers.add(name="conv1", type=V1.CONVOLUTION, bottom=["data"],
                          top=["conv1"], blobs_lr=[1, 2], weight_decay=[1, 0])
    conv.convolution_param.num_output = 2
    conv.convolution_param.kernel_size.append(3)
    weight = conv.blobs.add(num=2, channels=3, height=3, width=3)
    weight.data.extend(values(54, 2).astype(np.float32))
    bias = conv.blobs.add(num=1, channels=1, height=1, width=2)
    bias.data.extend([1.0, 2.0])
    net.layers.add(name="relu1", type=V1.RELU, bottom=["conv1"], top=["conv1"])
    fc = net.layers.add(name="fc", type=V1.INNER_PRODUCT, bottom=["conv1"], top=["fc"])
    fc_weight = fc.blobs.add(num=1, channels=1, height=4, width=18)
    fc_weight.double_data.extend(values(72, 3))
    fc_bias = fc.blobs.add()  # no shape information at all: 1-D
    fc_bias.data.extend([0.0, 1.0, 2.0, 3.0])
    return net


@pytest.fixture
def new_style_file(tmp_path):
    path = tmp_path / "tiny.caffemodel"
    path.write_bytes(new_style_net().SerializeToString())
    return path


@pytest.fixture
def legacy_file(tmp_path):
    path = tmp_path / "old.caffemodel"
    path.write_bytes(legacy_v1_net().SerializeToString())
    return path


# ---------------------------------------------------------------------------
# Reading

@pytest.mark.parametrize("fixture", ["new_style_file", "legacy_file"])
def test_raw_message_round_trips_byte_for_byte(fixture, request):
    path = request.getfixturevalue(fixture)
    raw = load_net_param(path, upgrade=False)
    assert raw.SerializeToString() == path.read_bytes()


def test_read_new_style_caffemodel(new_style_file):
    net = read_caffemodel(new_style_file)
    assert [layer.name for layer in net.layer] == ["data", "conv1", "relu1", "fc"]
    blobs = caffemodel_blobs(net)
    assert list(blobs) == ["conv1", "fc"]  # only layers that carry blobs
    weight, bias = blobs["conv1"]
    assert weight.dtype == np.float32 and weight.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(
        weight, values(54, 0).astype(np.float32).reshape(2, 3, 3, 3))
    np.testing.assert_array_equal(bias, np.array([0.5, -0.25], np.float32))
    (fc_weight,) = blobs["fc"]
    assert fc_weight.dtype == np.float64 and fc_weight.shape == (4, 18)
    np.testing.assert_array_equal(fc_weight, values(72, 1).reshape(4, 18))


def test_read_legacy_v1_caffemodel(legacy_file):
    net = read_caffemodel(legacy_file)
    assert not net.layers and not net.input and not net.input_dim
    assert [(l.name, l.type) for l in net.layer] == [
        ("input", "Input"), ("conv1", "Convolution"), ("relu1", "ReLU"),
        ("fc", "InnerProduct")]
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[1].param] == [(1, 1), (2, 0)]
    blobs = caffemodel_blobs(net)
    weight, bias = blobs["conv1"]
    assert weight.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(
        weight, values(54, 2).astype(np.float32).reshape(2, 3, 3, 3))
    assert bias.shape == (1, 1, 1, 2)  # legacy 4-D, as Caffe reads it
    fc_weight, fc_bias = blobs["fc"]
    assert fc_weight.dtype == np.float64 and fc_weight.shape == (1, 1, 4, 18)
    assert fc_bias.shape == (4,) and fc_bias.dtype == np.float32
    # Caffe's legacy rule fits them into parameters with fewer axes.
    np.testing.assert_array_equal(conform_blob(bias, (2,)), [1.0, 2.0])
    assert conform_blob(fc_weight, (4, 18)).shape == (4, 18)
    assert conform_blob(weight, (2, 3, 3, 3)) is weight


def varint(v):
    out = b""
    while v > 0x7F:
        out += bytes([v & 0x7F | 0x80])
        v >>= 7
    return out + bytes([v])


def message_field(number, payload):
    """The bytes of a length-delimited field ``number`` holding ``payload``."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_other_forks_layer_params_survive_as_unknown_fields(tmp_path):
    """py-faster-rcnn's Caffe stores roi_pooling_param at 8266711: such a file
    still loads, its weights included, and re-serializes byte for byte."""
    roi = caffe_pb2.ROIPoolingParameter(pooled_h=7, pooled_w=7,
                                        spatial_scale=0.0625).SerializeToString()
    pool = caffe_pb2.LayerParameter(name="roi_pool5", type="ROIPooling").SerializeToString()
    pool += varint(8266711 << 3 | 2) + varint(len(roi)) + roi
    fc = caffe_pb2.LayerParameter(name="fc6", type="InnerProduct")
    fc.blobs.add(shape=caffe_pb2.BlobShape(dim=[2, 3]), data=[1, 2, 3, 4, 5, 6])
    data = b"".join(varint(100 << 3 | 2) + varint(len(layer)) + layer
                    for layer in (pool, fc.SerializeToString()))
    path = tmp_path / "frcnn.caffemodel"
    path.write_bytes(data)
    assert load_net_param(path, upgrade=False).SerializeToString() == data
    net = read_caffemodel(path)
    assert not net.layer[0].HasField("roi_pooling_param")
    np.testing.assert_array_equal(caffemodel_blobs(net)["fc6"][0], [[1, 2, 3], [4, 5, 6]])


def _bvlc_net_bytes():
    """A BVLC-format binary net: Clip (clip_param at 148), Swish (swish_param
    at 147) and, for contrast, the fork's ROIPooling (roi_pooling_param 147)."""
    clip = caffe_pb2.ClipParameter(min=-0.5, max=6.0).SerializeToString()
    swish = caffe_pb2.SwishParameter(beta=1.5).SerializeToString()
    roi = caffe_pb2.ROIPoolingParameter(pooled_h=7, pooled_w=6,
                                        spatial_scale=0.0625).SerializeToString()
    layers = [
        caffe_pb2.LayerParameter(name="clip", type="Clip").SerializeToString()
        + message_field(148, clip),
        caffe_pb2.LayerParameter(name="swish", type="Swish").SerializeToString()
        + message_field(147, swish),
        caffe_pb2.LayerParameter(name="pool", type="ROIPooling").SerializeToString()
        + message_field(147, roi),
    ]
    return b"".join(message_field(100, layer) for layer in layers)


def test_bvlc_clip_and_swish_fields_are_decoded_by_layer_type(tmp_path):
    path = tmp_path / "bvlc.caffemodel"
    path.write_bytes(_bvlc_net_bytes())
    clip, swish, pool = read_caffemodel(path).layer
    assert (clip.clip_param.min, clip.clip_param.max) == (-0.5, 6.0)
    assert not clip.HasField("smooth_l1_loss_param")
    assert swish.swish_param.beta == 1.5
    assert not swish.HasField("roi_pooling_param")
    assert (pool.roi_pooling_param.pooled_h, pool.roi_pooling_param.pooled_w) == (7, 6)
    assert not pool.HasField("swish_param")
    # Without the upgrade the fields stay where the fork's numbers put them.
    raw_clip = load_net_param(path, upgrade=False).layer[0]
    assert raw_clip.smooth_l1_loss_param.sigma == -0.5
    assert not raw_clip.HasField("clip_param")


def test_bvlc_binary_net_with_a_clip_layer_builds_and_clips(tmp_path):
    from netdef import Net
    source = caffe_pb2.LayerParameter(name="in", type="Input", top=["x"])
    source.input_param.shape.add(dim=[1, 4])
    clip = caffe_pb2.LayerParameter(name="clip", type="Clip", bottom=["x"], top=["y"])
    clip_param = caffe_pb2.ClipParameter(min=-0.5, max=6.0).SerializeToString()
    raw = (message_field(100, source.SerializeToString())
           + message_field(100, clip.SerializeToString() + message_field(148, clip_param)))
    path = tmp_path / "clip.binaryproto"
    path.write_bytes(raw)
    net = Net(load_net_param(path), "TEST")
    out = net.forward(x=np.array([[-3.0, 0.25, 2.0, 9.0]]))
    np.testing.assert_array_equal(out["y"], [[-0.5, 0.25, 2.0, 6.0]])


def test_raw_v1_blobs_read_without_upgrade(legacy_file):
    blobs = caffemodel_blobs(load_net_param(legacy_file, upgrade=False))
    assert [a.shape for a in blobs["fc"]] == [(1, 1, 4, 18), (4,)]


def test_conform_blob_rejects_other_shapes():
    with pytest.raises(WeightsError, match=r"fc blob 0: the weights have shape "
                                           r"\(1, 2, 4, 18\) but the net expects \(4, 18\)"):
        conform_blob(np.zeros((1, 2, 4, 18)), (4, 18), "fc blob 0")
    with pytest.raises(WeightsError, match="expects"):
        conform_blob(np.zeros((4, 18)), (1, 1, 4, 18))


# ---------------------------------------------------------------------------
# Writing

def test_write_then_read_back(tmp_path):
    path = tmp_path / "out" / "model.caffemodel"
    path.parent.mkdir()
    w32 = values(24, 4).astype(np.float32).reshape(2, 3, 2, 2)
    b64 = values(2, 5)
    scalar = np.float32(7.5)
    write_caffemodel(path, [("conv", "Convolution", [w32, b64]),
                            ("relu", "ReLU", []),
                            ("scale", "Scale", [scalar, np.arange(3)])], name="written")
    assert os.listdir(path.parent) == ["model.caffemodel"]  # no temporary left
    raw = load_net_param(path, upgrade=False)
    assert raw.SerializeToString() == path.read_bytes()
    assert raw.name == "written"
    assert [(l.name, l.type) for l in raw.layer] == [
        ("conv", "Convolution"), ("relu", "ReLU"), ("scale", "Scale")]
    assert list(raw.layer[0].blobs[0].shape.dim) == [2, 3, 2, 2]
    assert len(raw.layer[0].blobs[1].double_data) == 2 and not raw.layer[0].blobs[1].data
    blobs = caffemodel_blobs(read_caffemodel(path))
    assert list(blobs) == ["conv", "scale"]
    np.testing.assert_array_equal(blobs["conv"][0], w32)
    assert blobs["conv"][1].dtype == np.float64
    np.testing.assert_array_equal(blobs["conv"][1], b64)
    assert blobs["scale"][0].shape == () and blobs["scale"][0] == 7.5
    np.testing.assert_array_equal(blobs["scale"][1], np.arange(3, dtype=np.float32))


def test_written_bytes_equal_the_protobuf_serialization(tmp_path):
    """The streamed, hand-encoded output is what protobuf itself writes."""
    w = values(12, 9).astype(np.float32).reshape(3, 4)
    d = values(5, 10)
    path = tmp_path / "m.caffemodel"
    write_caffemodel(path, [("fc", "InnerProduct", [w, d]), ("relu", "ReLU", [])],
                     name="ref")
    expected = caffe_pb2.NetParameter(name="ref")
    fc = expected.layer.add(name="fc", type="InnerProduct")
    fc.blobs.add(shape=caffe_pb2.BlobShape(dim=[3, 4]), data=w.ravel().tolist())
    fc.blobs.add(shape=caffe_pb2.BlobShape(dim=[5]), double_data=d.tolist())
    expected.layer.add(name="relu", type="ReLU")
    assert path.read_bytes() == expected.SerializeToString()


def test_write_replaces_atomically_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "model.caffemodel"
    write_caffemodel(path, [("a", "Scale", [np.ones(2)])])
    before = path.read_bytes()
    with pytest.raises(TypeError, match="layer 'b' blob 0: cannot store"):
        write_caffemodel(path, [("b", "Scale", [np.array(["x"], dtype=object)])])
    assert path.read_bytes() == before
    write_caffemodel(path, [("c", "Scale", [np.zeros(3)])])
    assert list(caffemodel_blobs(read_caffemodel(path))) == ["c"]
    assert os.listdir(tmp_path) == ["model.caffemodel"]


def test_write_into_missing_directory_is_a_weights_error(tmp_path):
    path = tmp_path / "missing" / "model.caffemodel"
    with pytest.raises(WeightsError, match="model.caffemodel: cannot write"):
        write_caffemodel(path, [("a", "Scale", [np.ones(2)])])


def test_write_checks_layer_entries(tmp_path):
    with pytest.raises(TypeError, match=r"\(layer_name, layer_type, arrays\)"):
        write_caffemodel(tmp_path / "x.caffemodel", [("only", "two")])


# ---------------------------------------------------------------------------
# Corrupt files

def test_garbage_is_not_a_caffemodel(tmp_path):
    path = tmp_path / "garbage.caffemodel"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(WeightsError) as info:
        read_caffemodel(path)
    assert str(info.value).startswith(f"{path}: not a Caffe binary NetParameter")


def test_truncated_caffemodel(new_style_file):
    data = new_style_file.read_bytes()
    new_style_file.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(WeightsError, match="not a Caffe binary NetParameter.*do not decode"):
        read_caffemodel(new_style_file)


def test_empty_file_and_file_without_layers(tmp_path):
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty.caffemodel: .*the file is empty"):
        read_caffemodel(empty)
    nameless = tmp_path / "nameless.caffemodel"
    nameless.write_bytes(caffe_pb2.NetParameter(name="x").SerializeToString())
    with pytest.raises(WeightsError, match="holds no layers"):
        read_caffemodel(nameless)
    unnamed = tmp_path / "unnamed.caffemodel"
    net = caffe_pb2.NetParameter()
    net.layer.add(type="ReLU")
    unnamed.write_bytes(net.SerializeToString())
    with pytest.raises(WeightsError, match="none of its 1 layers has a name"):
        read_caffemodel(unnamed)


def test_prototxt_given_as_weights_gets_a_hint(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text('name: "net"\nlayer {\n  name: "relu"\n  type: "ReLU"\n}\n')
    with pytest.raises(WeightsError, match="looks like prototxt text"):
        read_caffemodel(path)


def test_missing_caffemodel(tmp_path):
    with pytest.raises(WeightsError, match="nothere.caffemodel: no such file"):
        read_caffemodel(tmp_path / "nothere.caffemodel")


def test_blob_count_mismatch_names_layer_and_blob(tmp_path):
    net = new_style_net()
    del net.layer[1].blobs[1].data[-1]  # conv1's bias: shape (2,), one value
    path = tmp_path / "short.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(WeightsError) as info:
        read_caffemodel(path)
    assert str(info.value) == (
        f"{path}: layer 'conv1': blob 1 has shape (2,) (2 values) but its data "
        f"holds 1 values")
    with pytest.raises(WeightsError, match="layer 'conv1': blob 1 has shape"):
        caffemodel_blobs(net)


def test_legacy_blob_count_mismatch(tmp_path):
    net = legacy_v1_net()
    net.layers[2].blobs[0].double_data.append(1.0)
    path = tmp_path / "long.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(WeightsError, match=r"layer 'fc': blob 0 has shape \(1, 1, 4, 18\) "
                                           r"\(72 values\) but its double_data holds 73"):
        read_caffemodel(path)


def test_mixed_layer_forms_in_weights_file(tmp_path):
    net = legacy_v1_net()
    net.layer.add(name="new", type="ReLU")
    path = tmp_path / "mixed.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(WeightsError, match="mixed.caffemodel: the net mixes"):
        read_caffemodel(path)


# ---------------------------------------------------------------------------
# The native array container

def test_save_and_load_arrays(tmp_path):
    path = tmp_path / "snap.npz"
    arrays = {
        "conv1/0": values(24, 6).astype(np.float32).reshape(2, 3, 2, 2),
        "conv1/1": values(2, 7),
        "momentum/conv1/0": np.zeros((2, 3, 2, 2), np.float16),
        "iter": np.int64(1234),
        "mask": np.array([True, False]),
        "empty": np.zeros((0, 4), np.float32),
    }
    meta = {"iter": 1234, "rng": {"state": 2**127 + 5}, "bbox_stds": [0.1, 0.1, 0.2, 0.2],
            "name": "rfcn"}
    save_arrays(path, arrays, meta)
    assert os.listdir(tmp_path) == ["snap.npz"]
    loaded, loaded_meta = load_arrays(path)
    assert list(loaded) == list(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == np.asarray(array).dtype
        np.testing.assert_array_equal(loaded[name], array)
    assert loaded_meta == meta
    # Plain NumPy can read it too, without pickle.
    with np.load(path, allow_pickle=False) as archive:
        assert META_KEY in archive.files


def test_save_arrays_overwrites_atomically(tmp_path):
    path = tmp_path / "snap.npz"
    save_arrays(path, {"a": np.ones(2)}, {"v": 1})
    with pytest.raises(TypeError, match="dtype object"):
        save_arrays(path, {"b": np.array([{}], dtype=object)}, {"v": 2})
    assert load_arrays(path)[1] == {"v": 1}
    save_arrays(path, {"b": np.zeros(1)})
    arrays, meta = load_arrays(path)
    assert list(arrays) == ["b"] and meta == {}
    assert os.listdir(tmp_path) == ["snap.npz"]


def test_save_arrays_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_arrays(tmp_path / "x.npz", {META_KEY: np.zeros(1)})
    with pytest.raises(TypeError, match="non-empty strings"):
        save_arrays(tmp_path / "x.npz", {"": np.zeros(1)})
    with pytest.raises(TypeError, match="meta must be a dict"):
        save_arrays(tmp_path / "x.npz", {}, [1])
    with pytest.raises(TypeError):
        save_arrays(tmp_path / "x.npz", {}, {"f": object()})
    assert os.listdir(tmp_path) == []


def corrupt_variants(tmp_path):
    good = tmp_path / "good.npz"
    save_arrays(good, {"w": values(1000, 8)}, {"iter": 1})
    data = good.read_bytes()
    yield "truncated", data[: len(data) // 2]
    flipped = bytearray(data)
    flipped[len(flipped) // 3] ^= 0xFF  # inside w's bytes: CRC mismatch
    yield "flipped", bytes(flipped)
    yield "garbage", bytes(range(256)) * 3
    yield "pickle", pickle.dumps({"w": [1, 2, 3]})
    yield "empty", b""


def test_corrupt_snapshots_raise_weights_error(tmp_path):
    for label, data in corrupt_variants(tmp_path):
        path = tmp_path / f"{label}.npz"
        path.write_bytes(data)
        with pytest.raises(WeightsError) as info:
            load_arrays(path)
        assert str(info.value).startswith(f"{path}: "), label


def test_foreign_npz_and_npy_are_refused(tmp_path):
    npz = tmp_path / "foreign.npz"
    np.savez(npz, a=np.zeros(2))
    with pytest.raises(WeightsError, match="foreign.npz: .*no '__meta__' entry"):
        load_arrays(npz)
    npy = tmp_path / "single.npy"
    np.save(npy, np.zeros(2))
    with pytest.raises(WeightsError, match="single .npy array"):
        load_arrays(npy)
    other = tmp_path / "other.npz"
    np.savez(other, **{META_KEY: np.frombuffer(b'{"format": "x"}', np.uint8)})
    with pytest.raises(WeightsError, match="does not describe a netdef-arrays file"):
        load_arrays(other)


def test_missing_snapshot(tmp_path):
    with pytest.raises(WeightsError, match="gone.npz: no such file"):
        load_arrays(tmp_path / "gone.npz")


# ---------------------------------------------------------------------------
# The one copy by layer name (netdef.weights): files, snapshots, nets

NET_TEXT = """name: "pair"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 5 dim: 5 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
        inner_product_param { num_output: NUM weight_filler { type: "gaussian" } } }
"""


def pair_net(num_output=4, seed=0):
    from netdef import Net
    return Net(NET_TEXT.replace("NUM", str(num_output)), "TRAIN", seed=seed)


def test_copy_layers_reports_loaded_missing_unused_and_conforms_legacy_shapes():
    from netdef.weights import copy_layers
    net = pair_net()
    weight = values(72, 4).astype(np.float32)
    stored = {"fc": [weight.reshape(1, 1, 4, 18), np.arange(4, dtype=np.float32)],
              "gone": [np.zeros(3)]}
    report = copy_layers(net, stored, "mine")
    assert (report.loaded, report.missing, report.unused) == (["fc"], ["conv1"], ["gone"])
    assert np.array_equal(net.params["fc"][0].data, weight.reshape(4, 18))
    assert "mine: 1 layers loaded; 1 not in the file (conv1)" in report.summary()
    with pytest.raises(WeightsError, match=r"^mine: layer 'fc': the file has 1 blob\(s\), "
                                           r"the net has 2 \(hint\)$"):
        copy_layers(net, {"fc": [weight]}, "mine", hint=" (hint)")
    skipped = copy_layers(net, {"fc": [weight]}, "mine", skip_mismatched=True)
    assert skipped.loaded == [] and skipped.skipped[0][0] == "fc"


def test_share_layers_copies_a_train_net_into_a_test_net_with_exact_shapes():
    from netdef.weights import share_layers
    train, test = pair_net(seed=1), pair_net(seed=2)
    report = share_layers(train, test, "solver.prototxt")
    assert report.loaded == ["conv1", "fc"]
    for name in ("conv1", "fc"):
        for a, b in zip(train.params[name], test.params[name]):
            assert np.array_equal(a.data, b.data) and a.data is not b.data
    with pytest.raises(WeightsError, match=r"solver.prototxt: layer 'fc' param 0: shape "
                                           r"\(4, 18\) in the train net but \(5, 18\) in the "
                                           r"test net"):
        share_layers(train, pair_net(5), "solver.prototxt")


def test_solver_snapshot_weights_load_through_the_same_copy(tmp_path):
    from netdef.weights import group_param_keys, read_layer_arrays
    net = pair_net(seed=3)
    net.save_weights(str(tmp_path / "w.npz"))
    layers = read_layer_arrays(str(tmp_path / "w.npz"))
    assert list(layers) == ["conv1", "fc"] and len(layers["conv1"]) == 2
    grouped = group_param_keys({"a/10": 10, "a/1": 1, "b/0": 0, "a/0": 0,
                                **{f"a/{i}": i for i in range(2, 10)}})
    assert grouped == {"a": list(range(11)), "b": [0]}
    with pytest.raises(WeightsError, match=r"layer 'a' has parameter blobs \[2, 10\]"):
        group_param_keys({"a/10": 10, "a/2": 2})   # blob 2 would land in slot 0
    other = pair_net(seed=4)
    assert other.copy_from(str(tmp_path / "w.npz")).loaded == ["conv1", "fc"]
    assert np.array_equal(other.params["conv1"][0].data, net.params["conv1"][0].data)
