"""The AnnotatedData layer on a tiny VOC-layout folder: reference shapes,
minibatches against a plainly computed warp and label, the mirror, the
filler row, order and resume, keyed draws, the session's class count,
and every documented error."""
import types
import warnings

import numpy as np
import pytest
from PIL import Image

from layers.annotated_data import AnnotatedDataLayer
from layers.detection_output import DetectionOutputLayer
from netdef import caffe_pb2
from netdef.errors import DataError, NetDefinitionError
from netdef.gradcheck import build_layer, setup_layer
from netdef.schema import parse_text
from detection.datasets import DataWarning, load_dataset
from solver.session import net_class_count
from tests.layers.test_roi_data import IMAGES, write_voc
from tests.netdef.test_ssd_schema import SSD_TRAIN_LAYERS

MEAN = (104.0, 117.0, 123.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = write_voc(tmp_path_factory.mktemp("voc"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return load_dataset(str(root), "trainval", keep_empty=True, cache=False)


def spec(batch=2, height=12, width=16, transform="", annotated="", mean=MEAN, mirror=False,
         extra=""):
    means = " ".join(f"mean_value: {m}" for m in mean)
    return (f'name: "data" type: "AnnotatedData" top: "data" top: "label" '
            f'data_param {{ source: "unused_lmdb" batch_size: {batch} }} '
            f'transform_param {{ {means} mirror: {str(mirror).lower()} '
            f'resize_param {{ resize_mode: WARP height: {height} width: {width} }} {transform} }} '
            f'annotated_data_param {{ {annotated} }} {extra}')


def make(text, dataset=None, phase="TRAIN", seed=3, classes=3):
    layer = build_layer(text, phase=phase, dtype=np.float32, seed=seed)
    _, tops = setup_layer(layer, [])
    layer.set_num_classes(classes)
    if dataset is not None:
        layer.set_dataset(dataset)
    return layer, tops


def run(layer, tops, count):
    out = []
    for _ in range(count):
        layer.forward([], tops)
        out.append((tops[0].data.copy(), tops[1].data.copy()))
    return out


def reference_image(record, height, width, mean, scale=1.0):
    """Plain: read RGB with Pillow, swap to BGR, resize each channel as float
    bilinearly, subtract the mean, scale: (3, height, width)."""
    rgb = np.asarray(Image.open(record.path).convert("RGB"), np.float32)
    channels = []
    for c in (2, 1, 0):
        plane = Image.fromarray(np.ascontiguousarray(rgb[:, :, c]))
        channels.append(np.asarray(plane.resize((width, height), Image.BILINEAR), np.float32))
    return (np.stack(channels) - np.asarray(mean, np.float32)[:, None, None]) * scale


def reference_rows(record, position):
    """Plain label rows: x1 / W, y1 / H, (x2 + 1) / W, (y2 + 1) / H."""
    rows, seen = [], {}
    for (x1, y1, x2, y2), label, difficult in zip(record.boxes, record.labels,
                                                  record.difficult):
        instance = seen.get(int(label), 0)
        seen[int(label)] = instance + 1
        rows.append([position, label, instance, x1 / record.width, y1 / record.height,
                     (x2 + 1) / record.width, (y2 + 1) / record.height, float(difficult)])
    return np.array(rows, np.float64).reshape(-1, 8)


def find_record(dataset, image):
    for record in dataset.records:
        for mirrored in (False, True):
            ref = reference_image(record, image.shape[1], image.shape[2], MEAN)
            if mirrored:
                ref = ref[:, :, ::-1]
            if np.allclose(ref, image, atol=1e-3):
                return record, mirrored
    raise AssertionError("no record gives this image")


# -- shapes, contents ---------------------------------------------------------------------

def test_reference_shapes_and_forward_needs_a_dataset():
    layer, tops = make(spec(batch=4, height=10, width=14))
    assert tops[0].shape == (4, 3, 10, 14) and tops[1].shape == (1, 1, 1, 8)
    assert (tops[1].data == -1).all()
    assert layer.scales == (10,) and layer.max_size == 14 and layer.bbox_normalization is None
    with pytest.raises(NetDefinitionError, match="needs a dataset.*python -m solver.train"):
        layer.forward([], tops)


def test_minibatch_matches_a_plain_warp_and_label(dataset):
    layer, tops = make(spec(batch=2), dataset)
    seen = set()
    for data, label in run(layer, tops, 5):
        assert data.shape == (2, 3, 12, 16) and label.shape[:3] == (1, 1, label.shape[2])
        expected = []
        for i in range(2):
            record, mirrored = find_record(dataset, data[i])
            assert not mirrored
            seen.add(record.image_id)
            expected.append(reference_rows(record, i))
        expected = np.concatenate(expected)
        if len(expected) == 0:
            expected = -np.ones((1, 8))
        np.testing.assert_allclose(label[0, 0], expected, rtol=0, atol=1e-6)
    assert seen == {i[0] for i in IMAGES}     # the image without boxes is kept
    layer.close()


def test_scale_multiplies_after_the_mean(dataset):
    layer, tops = make(spec(batch=1, transform="scale: 0.5"), dataset)
    assert layer.transform.scale == 0.5
    data, _ = run(layer, tops, 1)[0]
    record, _ = find_record(dataset, data[0] / 0.5)
    np.testing.assert_allclose(data[0], reference_image(record, 12, 16, MEAN, 0.5), atol=1e-3)
    layer.close()


def test_mirror_flips_pixels_and_boxes_together(dataset):
    layer, tops = make(spec(batch=1, mirror=True), dataset, seed=11)
    flips = []
    for data, label in run(layer, tops, 12):
        record, mirrored = find_record(dataset, data[0])
        flips.append(mirrored)
        expected = reference_rows(record, 0)
        if mirrored:
            expected[:, [3, 5]] = 1 - expected[:, [5, 3]]
        if len(expected) == 0:
            expected = -np.ones((1, 8))
        np.testing.assert_allclose(label[0, 0], expected, atol=1e-6)
    assert any(flips) and not all(flips)
    assert layer.use_flipped
    layer.close()


def test_a_batch_without_boxes_gives_the_filler_row(tmp_path):
    root = write_voc(tmp_path)
    (root / "ImageSets/Main/trainval.txt").write_text("e\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        empty = load_dataset(str(root), "trainval", keep_empty=True, cache=False)
    layer, tops = make(spec(batch=1), empty)
    _, label = run(layer, tops, 1)[0]
    assert label.shape == (1, 1, 1, 8) and (label == -1).all()
    layer.close()


# -- order, state, keyed draws ------------------------------------------------------------

AUGMENTED = dict(mirror=True, transform="distort_param { brightness_prob: 0.5 "
                 "brightness_delta: 32 hue_prob: 0.5 hue_delta: 18 } expand_param { prob: 0.5 "
                 "max_expand_ratio: 2 } emit_constraint { emit_type: CENTER }",
                 annotated="batch_sampler { sampler { min_scale: 0.5 max_scale: 1 "
                 "min_aspect_ratio: 0.5 max_aspect_ratio: 2 } sample_constraint { "
                 "min_jaccard_overlap: 0.1 } max_sample: 1 max_trials: 20 }")


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])
                                    for x, y in zip(a, b))


def test_resume_from_the_layer_state_continues_identically(dataset):
    layer, tops = make(spec(batch=2, **AUGMENTED), dataset)
    run(layer, tops, 3)
    state = layer.get_state()
    assert set(state) == {"epoch", "cursor", "order_seed", "examples"}
    assert state["examples"] == len(IMAGES)
    expected = run(layer, tops, 4)
    layer.close()
    again, tops2 = make(spec(batch=2, **AUGMENTED), dataset, seed=99)
    again.set_state(state)
    assert same(run(again, tops2, 4), expected)
    again.close()


def test_the_same_seed_gives_the_same_batches_and_another_seed_others(dataset):
    first, t1 = make(spec(batch=2, **AUGMENTED), dataset, seed=5)
    second, t2 = make(spec(batch=2, **AUGMENTED), dataset, seed=5)
    second.prefetch = False            # built synchronously: the same batches
    other, t3 = make(spec(batch=2, **AUGMENTED), dataset, seed=6)
    a, b, c = run(first, t1, 5), run(second, t2, 5), run(other, t3, 5)
    assert same(a, b) and not same(a, c)
    for layer in (first, second, other):
        layer.close()


def test_skipping_batches_gives_what_a_single_process_gets_later(dataset):
    """Data parallelism: rank 1 of 2 skips one minibatch per iteration and
    gets the batch a single process builds second, draws included."""
    single, t1 = make(spec(batch=1, **AUGMENTED), dataset)
    expected = run(single, t1, 4)
    rank, t2 = make(spec(batch=1, **AUGMENTED), dataset)
    got = []
    for _ in range(2):
        rank.next_minibatch()
        got += run(rank, t2, 1)
    assert same(got, [expected[1], expected[3]])
    single.close()
    rank.close()


def test_test_phase_visits_the_images_in_order(dataset):
    layer, tops = make(spec(batch=1), dataset, phase="TEST")
    ids = [find_record(dataset, data[0])[0].image_id for data, _ in run(layer, tops, 5)]
    assert ids == [r.image_id for r in dataset.records]
    layer.close()


# -- the session's class count --------------------------------------------------------------

def _fake(cls, name, **attributes):
    layer = object.__new__(cls)
    layer.name = name
    layer.__dict__.update(attributes)
    return layer


class _Loss:
    """A layer of no registered type: the session reads only its num_classes."""


def test_class_count_comes_from_the_net_layers():
    data = _fake(AnnotatedDataLayer, "data", num_classes=None)
    loss = _fake(_Loss, "mbox_loss", num_classes=7)
    out = _fake(DetectionOutputLayer, "detection_out", num_classes=6, background=-1)
    assert net_class_count(types.SimpleNamespace(layers=[data, loss, out]), "NET") \
        == (7, ["mbox_loss"])
    with_bg = _fake(DetectionOutputLayer, "detection_out", num_classes=5, background=0)
    with pytest.raises(NetDefinitionError, match=r"NET: .*disagree \(mbox_loss: 7; "
                                                 r"detection_out: 5\)"):
        net_class_count(types.SimpleNamespace(layers=[data, loss, with_bg]), "NET")
    with pytest.raises(NetDefinitionError, match="NET: .*the net has none"):
        net_class_count(types.SimpleNamespace(layers=[data]), "NET")


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    (spec(batch=0), r"data_param.batch_size .*at least 1, found 0"),
    (spec().replace("resize_param { resize_mode: WARP height: 12 width: 16 }", ""),
     r"needs transform_param.resize_param with height and width.*found height 0, width 0"),
    (spec().replace("WARP", "FIT_SMALL_SIZE"), r"resize_mode must be WARP, found FIT_SMALL_SIZE"),
    (spec().replace("resize_mode: WARP", "resize_mode: WARP prob: 0.5"),
     r"resize_param.prob must be 1.*found 0.5"),
    (spec(mean=(1, 2)), r"mean_value takes 1 value or 3 \(B, G, R\), found 2"),
    (spec(transform='mean_file: "m.binaryproto"'), r"transform_param.mean_file is not supported"),
    (spec(transform="crop_size: 8"), r"crop_size / crop_h / crop_w / force_gray are not"),
    (spec(transform="noise_param { prob: 0.5 }"), r"transform_param.noise_param is not supported"),
    (spec(transform="expand_param { max_expand_ratio: 0.5 }"),
     r"max_expand_ratio must be at least 1, found 0.5"),
    (spec(annotated="batch_sampler { sampler { min_scale: 0 max_scale: 1 } }"),
     r"batch_sampler 0: needs 0 < min_scale <= max_scale <= 1, found 0, 1"),
    (spec(annotated="batch_sampler { sampler { min_aspect_ratio: 2 max_aspect_ratio: 1 } }"),
     r"batch_sampler 0: needs 0 < min_aspect_ratio <= max_aspect_ratio, found 2, 1"),
])
def test_definition_errors_name_the_layer(text, message):
    with pytest.raises(NetDefinitionError, match=r"layer 'data' \(type AnnotatedData\): .*"
                                                  + message):
        make(text)


def test_dataset_errors(dataset):
    layer, _ = make(spec(batch=2), classes=5)
    with pytest.raises(DataError, match=r"layer 'data'.*dataset '.*' has 3 classes .*the net's "
                                        r"loss layers is 5"):
        layer.set_dataset(dataset)
    layer.set_num_classes(3)
    with pytest.raises(DataError, match="proposals were given; SSD's data layer takes none"):
        layer.set_dataset(dataset, proposals=[np.zeros((0, 4))] * len(dataset.records))
    with pytest.raises(DataError, match="on_error must be 'raise' or 'skip', found 'maybe'"):
        layer.set_dataset(dataset, on_error="maybe")
    big, _ = make(spec(batch=9))
    with pytest.raises(DataError, match=r"has 5 image\(s\), fewer than data_param.batch_size 9"):
        big.set_dataset(dataset)


def test_resume_with_another_dataset_size_is_refused(dataset):
    layer, _ = make(spec(batch=1))
    with pytest.raises(DataError, match="saved data order is for 7 training examples"):
        layer.set_state({"epoch": 0, "cursor": 0, "order_seed": 1, "examples": 7})
        layer.set_dataset(dataset)


def test_caffe_ssd_train_layer_builds_unchanged():
    net = parse_text(SSD_TRAIN_LAYERS, caffe_pb2.NetParameter(), "ssd_train.prototxt")
    layer, tops = make(net.layer[0])
    t = layer.transform
    assert tops[0].shape == (32, 3, 300, 300)
    assert t.mean == MEAN and t.mirror and t.expand == (0.5, 4.0) and len(t.samplers) == 2
    assert t.emit == (0, 0.0) and t.distort.hue_delta == 18


@pytest.mark.gpu
def test_gpu_tops_equal_cpu_tops(dataset):
    """On the GPU the batches (built on the host, staged in pinned memory)
    are the CPU's, labels of varying length included."""
    import cupy
    from netdef.device import CPU, Device
    results = []
    for device in (CPU, Device("gpu", 0)):
        layer = build_layer(spec(batch=2, **AUGMENTED), device=device, dtype=np.float32, seed=4)
        _, tops = setup_layer(layer, [])
        layer.set_num_classes(3)
        layer.set_dataset(dataset)
        out = []
        for _ in range(4):
            layer.forward([], tops)
            assert all(isinstance(t.data, cupy.ndarray) == device.is_gpu for t in tops)
            out.append([cupy.asnumpy(t.data) if device.is_gpu else t.data.copy() for t in tops])
        layer.close()
        results.append(out)
    for cpu, gpu in zip(*results):
        for a, b in zip(cpu, gpu):
            np.testing.assert_array_equal(a, b)
