"""Data (LMDB): raw, float and encoded Datums against what was written,
cycling, transforms, resuming, every error, and a small LeNet-like net
that trains from an LMDB through the solver."""
import io
import sys

import numpy as np
import pytest
from PIL import Image

from netdef import caffe_pb2
from netdef.device import Device, to_numpy
from netdef.errors import DataError, NetDefinitionError
from netdef.gradcheck import build_layer, setup_layer

lmdb = pytest.importorskip("lmdb")


def raw_datum(image, label):
    c, h, w = image.shape
    return caffe_pb2.Datum(channels=c, height=h, width=w, data=image.tobytes(), label=label)


def float_datum(image, label):
    c, h, w = image.shape
    return caffe_pb2.Datum(channels=c, height=h, width=w, float_data=image.ravel(), label=label)


def encoded_datum(array, mode, label):
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, "PNG")
    return caffe_pb2.Datum(data=out.getvalue(), encoded=True, label=label)


def write_lmdb(path, datums):
    """An LMDB as convert_imageset writes it: zero-padded keys in order."""
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, datum in enumerate(datums):
            value = datum if isinstance(datum, bytes) else datum.SerializeToString()
            txn.put(f"{i:08d}_item".encode(), value)
    env.close()
    return str(path)


def images(count, shape=(3, 5, 6), seed=0):
    return [np.random.default_rng(seed + i).integers(0, 256, size=shape).astype(np.uint8)
            for i in range(count)]


def spec(source, batch=2, transform="", extra="", tops=("data", "label")):
    top_text = " ".join(f'top: "{t}"' for t in tops)
    return (f'name: "db" type: "Data" {top_text} data_param {{ source: "{source}" '
            f'batch_size: {batch} backend: LMDB {extra} }} transform_param {{ {transform} }}')


def make(text, phase="TRAIN", dtype=np.float32, seed=0, device=None):
    kwargs = {"device": device} if device is not None else {}
    layer = build_layer(text, phase=phase, dtype=dtype, seed=seed, **kwargs)
    _, tops = setup_layer(layer, [])
    return layer, tops


def forward(layer, tops):
    layer.forward([], tops)
    return [to_numpy(t.data).copy() for t in tops]


def test_raw_datums_in_key_order_cycling(tmp_path):
    pics = images(5)
    source = write_lmdb(tmp_path / "db", [raw_datum(p, 20 + i) for i, p in enumerate(pics)])
    layer, tops = make(spec(source, batch=3))
    assert tops[0].shape == (3, 3, 5, 6) and tops[1].shape == (3,)
    served = []
    for _ in range(4):
        data, label = forward(layer, tops)
        served += list(zip(data, label))
    for k, (image, label) in enumerate(served):
        np.testing.assert_array_equal(image, pics[k % 5])
        assert label == 20 + k % 5


def test_float_datums_and_a_data_only_top(tmp_path):
    values = [np.random.default_rng(i).normal(size=(2, 3, 3)).astype(np.float32) for i in range(3)]
    source = write_lmdb(tmp_path / "db", [float_datum(v, i) for i, v in enumerate(values)])
    layer, tops = make(spec(source, batch=3, tops=("data",)), dtype=np.float64)
    data, = forward(layer, tops)
    np.testing.assert_array_equal(data, np.stack(values).astype(np.float64))


def test_encoded_datums_decode_natively_or_as_forced(tmp_path):
    rgb = images(1, shape=(4, 5, 3))[0]
    grey = images(1, shape=(4, 5), seed=3)[0]
    source = write_lmdb(tmp_path / "db", [encoded_datum(rgb, "RGB", 1),
                                          encoded_datum(grey, "L", 2)])
    layer, tops = make(spec(source, batch=1))
    color, label = forward(layer, tops)
    np.testing.assert_array_equal(color[0], rgb[:, :, ::-1].transpose(2, 0, 1))
    assert label.tolist() == [1]
    native, _ = forward(layer, tops)
    np.testing.assert_array_equal(native[0, 0], grey)
    layer, tops = make(spec(source, batch=2, transform="force_color: true"))
    forced, _ = forward(layer, tops)
    assert forced.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(forced[1], np.stack([grey] * 3))
    layer, tops = make(spec(source, batch=2, transform="force_gray: true"))
    assert forward(layer, tops)[0].shape == (2, 1, 4, 5)


def write_mean(path, mean):
    c, h, w = mean.shape
    blob = caffe_pb2.BlobProto(num=1, channels=c, height=h, width=w, data=mean.ravel())
    path.write_bytes(blob.SerializeToString())
    return str(path)


def test_test_phase_centre_crop_with_mean_file_and_scale(tmp_path):
    pics = images(2, shape=(3, 6, 7))
    source = write_lmdb(tmp_path / "db", [raw_datum(p, 0) for p in pics])
    mean = np.random.default_rng(9).uniform(0, 255, size=(3, 6, 7)).astype(np.float32)
    transform = f'crop_size: 4 scale: 0.25 mean_file: "{write_mean(tmp_path / "m", mean)}"'
    layer, tops = make(spec(source, transform=transform), phase="TEST")
    data, _ = forward(layer, tops)
    for out, pic in zip(data, pics):
        expected = (pic[:, 1:5, 1:5].astype(np.float32) - mean[:, 1:5, 1:5]) * np.float32(0.25)
        np.testing.assert_array_equal(out, expected)


def test_train_crops_are_crops_of_each_record(tmp_path):
    pics = images(4, shape=(1, 5, 5))
    source = write_lmdb(tmp_path / "db", [raw_datum(p, 0) for p in pics])
    layer, tops = make(spec(source, batch=4, transform="crop_size: 3 mirror: true"))
    for _ in range(3):
        data, _ = forward(layer, tops)
        for out, pic in zip(data, pics):
            crops = [pic[:, y:y + 3, x:x + 3] for y in range(3) for x in range(3)]
            assert any(np.array_equal(out, c) or np.array_equal(out, c[:, :, ::-1])
                       for c in crops)


def test_rand_skip_and_resume(tmp_path):
    pics = images(6, shape=(1, 2, 2))
    source = write_lmdb(tmp_path / "db", [raw_datum(p, i) for i, p in enumerate(pics)])
    text = spec(source, batch=4, extra="rand_skip: 5", transform="mirror: true")
    layer, tops = make(text, seed=3)
    start = layer.position
    assert 0 <= start < 5
    assert forward(layer, tops)[1].tolist() == [(start + k) % 6 for k in range(4)]
    state = layer.random_state()
    expected = [forward(layer, tops) for _ in range(3)]
    resumed, tops2 = make(text, seed=3)
    resumed.set_random_state(state)
    for want in expected:
        got = forward(resumed, tops2)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


# -- errors --------------------------------------------------------------------------

def test_error_leveldb_is_not_supported(tmp_path):
    text = f'name: "db" type: "Data" top: "data" data_param {{ source: "x" batch_size: 1 }}'
    with pytest.raises(NetDefinitionError, match="backend LEVELDB .* is not supported; convert "
                                                 "'x' to an LMDB.*set backend: LMDB"):
        make(text)


def test_error_missing_or_empty_database(tmp_path):
    with pytest.raises(DataError, match=r"layer 'db'.*cannot open the LMDB '.*nothing'"):
        make(spec(tmp_path / "nothing"))
    source = write_lmdb(tmp_path / "empty", [])
    with pytest.raises(DataError, match="the LMDB '.*empty' holds no records"):
        make(spec(source))


def test_error_record_that_is_not_a_datum_or_has_the_wrong_size(tmp_path):
    source = write_lmdb(tmp_path / "db", [b"\xff\xff garbage"])
    with pytest.raises(DataError, match=r"record 0 \(key '00000000_item'\) of LMDB .* is not "
                                        "a Caffe Datum"):
        make(spec(source))
    bad = caffe_pb2.Datum(channels=1, height=2, width=3, data=b"12345", label=0)
    source = write_lmdb(tmp_path / "db2", [raw_datum(images(1, (1, 2, 3))[0], 0), bad])
    layer, tops = make(spec(source, batch=1))
    forward(layer, tops)
    with pytest.raises(DataError, match=r"record 1 .*: a Datum of 1 x 2 x 3 .* holds 5 values"):
        forward(layer, tops)


def test_error_records_of_different_sizes_in_one_batch(tmp_path):
    source = write_lmdb(tmp_path / "db", [raw_datum(images(1, (1, 2, 3))[0], 0),
                                          raw_datum(images(1, (1, 3, 3))[0], 0)])
    layer, tops = make(spec(source, batch=2))
    with pytest.raises(DataError, match="record 1 .* is 3 x 3 pixels .* record 0 .* is 2 x 3"):
        forward(layer, tops)


def test_error_batch_size_missing(tmp_path):
    with pytest.raises(NetDefinitionError, match="batch_size must be positive, found 0"):
        make(spec(tmp_path, batch=0))


def test_error_without_the_lmdb_package(tmp_path, monkeypatch):
    source = write_lmdb(tmp_path / "db", [raw_datum(images(1)[0], 0)])
    monkeypatch.setitem(sys.modules, "lmdb", None)   # import lmdb now raises ImportError
    with pytest.raises(NetDefinitionError, match=r"needs the lmdb package.*"
                                                 r"pip install -e '\.\[data\]'"):
        make(spec(source))


@pytest.mark.gpu
def test_tops_land_on_the_gpu(tmp_path):
    import cupy
    pics = images(2)
    source = write_lmdb(tmp_path / "db", [raw_datum(p, i) for i, p in enumerate(pics)])
    layer, tops = make(spec(source), device=Device("gpu", 0))
    layer.forward([], tops)
    assert isinstance(tops[0].data, cupy.ndarray) and isinstance(tops[1].data, cupy.ndarray)
    np.testing.assert_array_equal(tops[0].data.get(), np.stack(pics))
    assert tops[1].data.get().tolist() == [0, 1]


# -- a small classifier trained from an LMDB ------------------------------------------

LENET = """
name: "tiny_lenet"
layer { name: "mnist" type: "Data" top: "data" top: "label"
  data_param { source: "SOURCE" batch_size: 8 backend: LMDB }
  transform_param { scale: 0.00390625 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy"
  include { phase: TEST } }
"""

SOLVER = """
net: "net.prototxt"
base_lr: 0.1
momentum: 0.9
lr_policy: "fixed"
max_iter: 20
test_iter: 2
test_interval: 100
display: 0
snapshot: 0
random_seed: 1
"""


def bar_images(count, seed=0):
    """Class 0: a bright horizontal bar; class 1: a vertical one; noise."""
    rng = np.random.default_rng(seed)
    datums = []
    for i in range(count):
        label = i % 2
        image = rng.integers(0, 60, size=(1, 8, 8)).astype(np.uint8)
        k = rng.integers(1, 7)
        if label:
            image[0, :, k] = 255
        else:
            image[0, k, :] = 255
        datums.append(raw_datum(image, label))
    return datums


def test_lenet_like_net_trains_from_an_lmdb(tmp_path):
    from solver.sgd import SGDSolver
    source = write_lmdb(tmp_path / "train_lmdb", bar_images(48))
    (tmp_path / "net.prototxt").write_text(LENET.replace("SOURCE", source))
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    solver = SGDSolver(str(tmp_path / "solver.prototxt"), stream=None)
    losses = []
    for _ in range(20):
        solver.step(1)
        losses.append(solver.loss_window[-1])
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    # The TEST net (with Accuracy) reads the same database.
    result = solver.test(0)
    assert result["accuracy"] >= 0.75 and result["loss"] < losses[0]


def test_a_snapshot_resumes_at_the_same_records(tmp_path):
    from solver.sgd import SGDSolver
    source = write_lmdb(tmp_path / "train_lmdb", bar_images(20))
    net = LENET.replace("SOURCE", source).replace("scale: 0.00390625",
                                                  "scale: 0.00390625 crop_size: 6 mirror: true")
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(
        SOLVER.replace("test_iter: 2\n", "").replace("test_interval: 100\n", "")
        + 'snapshot_prefix: "snap/lenet"\n')
    first = SGDSolver(str(tmp_path / "solver.prototxt"), stream=None, dtype=np.float64)
    first.step(3)
    path = first.snapshot()
    expected = []
    for _ in range(3):
        first.step(1)
        expected.append(first.loss_window[-1])
    second = SGDSolver(str(tmp_path / "solver.prototxt"), stream=None, dtype=np.float64)
    second.restore(path)
    assert second.net.layer_dict["mnist"].position == 3 * 8
    for want in expected:
        second.step(1)
        assert second.loss_window[-1] == want
