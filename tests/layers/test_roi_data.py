"""The RoIData layer end to end on a tiny VOC-layout folder written here:
reference shapes before a dataset, minibatches, order, flips, aspect
grouping, resume from the layer's state, prefetch vs synchronous, the
precomputed-RoI form, a Net around it, and its errors."""
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from layers.roi_data import RoIDataLayer
from netdef.errors import DataError, NetDefinitionError
from netdef.device import to_numpy
from netdef.gradcheck import build_layer, setup_layer
from detection.datasets import DataWarning, load_dataset
from layers.input_pipeline.preprocess import PIXEL_MEANS

CLASSES = ("cat", "dog")
# (id, width, height, objects [(class, x1, y1, x2, y2, difficult)], 1-based as in VOC XML)
IMAGES = [
    ("a", 48, 32, [("cat", 3, 4, 20, 25, 0), ("dog", 25, 10, 46, 30, 0)]),
    ("b", 32, 48, [("dog", 3, 6, 20, 40, 0)]),
    ("c", 40, 30, [("cat", 10, 5, 35, 28, 0), ("dog", 1, 1, 8, 8, 1)]),
    ("d", 30, 44, [("cat", 2, 20, 25, 43, 0)]),
    ("e", 36, 24, []),                                  # no objects: left out
]


def write_voc(root):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "ImageSets/Main/trainval.txt").write_text("\n".join(i[0] for i in IMAGES) + "\n")
    rng = np.random.default_rng(0)
    for image_id, width, height, objects in IMAGES:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.png")
        xml = [f"<annotation><filename>{image_id}.png</filename>",
               f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
        for name, x1, y1, x2, y2, difficult in objects:
            xml.append(f"<object><name>{name}</name><difficult>{difficult}</difficult>"
                       f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                       f"<ymax>{y2}</ymax></bndbox></object>")
        xml.append("</annotation>")
        (root / "Annotations" / f"{image_id}.xml").write_text("".join(xml))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = write_voc(tmp_path_factory.mktemp("voc"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return load_dataset(str(root), "trainval", keep_empty=True, cache=False)


def param_text(fields):
    parts = []
    for key, value in fields.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            parts.append(f"{key}: {str(item).lower() if isinstance(item, bool) else item}")
    return " ".join(parts)


def e2e_spec(name="input-data", tops=("data", "im_info", "gt_boxes"), **fields):
    fields = {"num_classes": 3, "scales": 32, "max_size": 64, "seed": 5, **fields}
    fields = {k: v for k, v in fields.items() if v is not None}
    top_text = " ".join(f'top: "{t}"' for t in tops)
    return f'name: "{name}" type: "RoIData" {top_text} roi_data_param {{ {param_text(fields)} }}'


def roi_spec(**fields):
    fields = {"has_rpn": False, "ims_per_batch": 2, "batch_size": 16, "bg_thresh_lo": 0,
              **fields}
    return e2e_spec("data", ("data", "rois", "labels", "bbox_targets", "bbox_inside_weights",
                             "bbox_outside_weights"), **fields)


def make(spec, dataset=None, proposals=None, phase="TRAIN"):
    layer = build_layer(spec, phase=phase, dtype=np.float32)
    bottoms, tops = setup_layer(layer, [])
    if dataset is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            layer.set_dataset(dataset, proposals)
    return layer, tops


def run(layer, tops, count):
    out = []
    for _ in range(count):
        layer.forward([], tops)
        out.append({name: t.data.copy() for name, t in zip(layer.top_keys, tops)})
    return out


def same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


def record_of(dataset, gt_scaled, im_info):
    """(record, flipped) whose scaled boxes are ``gt_scaled``."""
    scale = im_info[0, 2]
    for record in dataset.records:
        keep = ~record.difficult
        boxes, labels = record.boxes[keep], record.labels[keep]
        if len(boxes) != len(gt_scaled):
            continue
        flipped = np.stack([record.width - boxes[:, 2] - 1, boxes[:, 1],
                            record.width - boxes[:, 0] - 1, boxes[:, 3]], 1)
        for candidate, is_flipped in ((boxes, False), (flipped, True)):
            if np.allclose(candidate * scale, gt_scaled[:, :4], atol=1e-4) \
                    and np.array_equal(labels, gt_scaled[:, 4]):
                return record, is_flipped
    raise AssertionError(f"no record matches gt_boxes {gt_scaled}")


# -- shapes and errors before a dataset --------------------------------------------------

def test_reference_shapes_before_a_dataset():
    _, tops = make(e2e_spec())
    assert [t.shape for t in tops] == [(1, 3, 32, 64), (1, 3), (1, 5)]
    _, tops = make(roi_spec())
    assert [t.shape for t in tops] == [(2, 3, 32, 64), (16, 5), (16, 1, 1, 1), (16, 12), (16, 12),
                                       (16, 12)]


def test_forward_without_a_dataset_says_how_to_train():
    layer, tops = make(e2e_spec())
    with pytest.raises(NetDefinitionError, match=r"layer 'input-data' \(type RoIData\): RoIData "
                                                 r"needs a dataset.*python -m solver\.train"):
        layer.forward([], tops)


@pytest.mark.parametrize("spec,match", [
    (e2e_spec(num_classes=None), "needs num_classes >= 2"),
    (e2e_spec(ims_per_batch=2), r"end-to-end form \(has_rpn\) takes 1 image per batch"),
    (e2e_spec(tops=("data", "im_info", "gt_boxes", "x"), has_rpn=False),
     r"precomputed-RoI form \(has_rpn false\) has 6 tops .* or the first 3 .* found 4"),
    (e2e_spec(tops=("data", "im_info", "gt_boxes", "x")),
     r"end-to-end form \(has_rpn\) has 3 tops"),
    (e2e_spec(scales=0),
     r"scales, max_size and ims_per_batch must be positive, found scales \[0\]"),
    (roi_spec(batch_size=15), r"ims_per_batch \(2\) must divide batch_size \(15\)"),
    (roi_spec(batch_size=-3), r"batch_size must be positive or -1"),
    (roi_spec(fg_fraction=2), r"fg_fraction must lie in \[0, 1\]"),
])
def test_definition_errors(spec, match):
    with pytest.raises(NetDefinitionError, match=match):
        make(spec)


def test_dataset_errors(dataset):
    layer, _ = make(e2e_spec(num_classes=21))
    with pytest.raises(DataError, match=r"has 3 classes \(background included\), the layer's "
                                        r"num_classes is 21"):
        layer.set_dataset(dataset)
    layer, _ = make(e2e_spec())
    with pytest.raises(DataError, match="proposals were given to the end-to-end form"):
        layer.set_dataset(dataset, [np.zeros((0, 4))] * len(dataset.records))
    layer, _ = make(roi_spec())
    with pytest.raises(DataError, match=r"precomputed-RoI form needs proposals"):
        layer.set_dataset(dataset)
    with pytest.raises(DataError, match=r"1 proposal arrays for the 5 images"):
        layer.set_dataset(dataset, [np.zeros((0, 4))])
    bad = [np.zeros((3, 4))] * 4 + [np.zeros((3, 5))]
    with pytest.raises(DataError, match=r"proposals of image 'e' .*expected finite \(R, 4\) "
                                        r"boxes .*found shape \(3, 5\)"):
        layer.set_dataset(dataset, bad)


# -- end-to-end minibatches -----------------------------------------------------------------

def test_images_without_boxes_are_left_out_with_a_warning(dataset):
    layer, _ = make(e2e_spec())
    with pytest.warns(DataWarning, match=r"left out 1 of 5 images .* without ground-truth boxes "
                                         r"\(e\)"):
        layer.set_dataset(dataset)
    assert layer.skipped == ["e"]
    assert layer.random_state()["examples"] == 8          # 4 images and their mirrors


def test_one_epoch_visits_every_image_and_its_mirror(dataset):
    layer, tops = make(e2e_spec(), dataset)
    seen = []
    for batch in run(layer, tops, 8):
        data, im_info, gt = batch["data"], batch["im_info"], batch["gt_boxes"]
        record, flipped = record_of(dataset, gt, im_info)
        seen.append((record.image_id, flipped))
        scale = 32 / min(record.width, record.height)
        if round(scale * max(record.width, record.height)) > 64:
            scale = 64 / max(record.width, record.height)
        h, w = round(record.height * scale), round(record.width * scale)
        assert data.shape == (1, 3, h, w)
        np.testing.assert_allclose(im_info, [[h, w, scale]], rtol=1e-6)
        assert np.all(gt[:, 4] >= 1)                       # difficult "dog" of c dropped
    assert sorted(seen) == sorted((i, f) for i in "abcd" for f in (False, True))
    assert (layer.epoch, layer.cursor) == (0, 8)
    run(layer, tops, 1)
    assert (layer.epoch, layer.cursor) == (1, 1)


def test_flipped_data_is_the_mirror_image(dataset):
    layer, tops = make(e2e_spec(aspect_grouping=False), dataset)
    batches = run(layer, tops, 8)
    by_record = {}
    for batch in batches:
        record, flipped = record_of(dataset, batch["gt_boxes"], batch["im_info"])
        by_record.setdefault(record.image_id, {})[flipped] = batch["data"]
    for image_id, pair in by_record.items():
        np.testing.assert_allclose(pair[True], pair[False][..., ::-1], atol=1e-3)


def test_data_is_bgr_minus_means(dataset):
    """At scale 1 (shorter side asked for = its own), data is the file's
    pixels in BGR order minus the pixel means."""
    record = dataset.records[1]                              # "b", 32 x 48
    layer, tops = make(e2e_spec(use_flipped=False, scales=32, max_size=100), dataset)
    for batch in run(layer, tops, 4):
        rec, _ = record_of(dataset, batch["gt_boxes"], batch["im_info"])
        if rec is record:
            assert batch["im_info"][0, 2] == 1.0
            rgb = np.asarray(Image.open(record.path).convert("RGB"), np.float32)
            expected = rgb[:, :, ::-1] - np.asarray(PIXEL_MEANS, np.float32)
            np.testing.assert_allclose(batch["data"][0].transpose(1, 2, 0), expected, atol=1e-4)
            return
    raise AssertionError("record not seen in an epoch")


def test_same_seed_same_batches_other_seed_other_order(dataset):
    a = run(*make(e2e_spec(), dataset), 10)
    b = run(*make(e2e_spec(), dataset), 10)
    c = run(*make(e2e_spec(seed=6), dataset), 10)
    assert same(a, b)
    assert not same(a, c)


def test_aspect_grouping_pairs_orientations(dataset):
    layer, tops = make(e2e_spec(), dataset)
    kinds = []
    for batch in run(layer, tops, 16):
        h, w = batch["data"].shape[2:]
        kinds.append(w >= h)
    # two landscape (a, c) and two portrait (b, d) images, each with its mirror:
    # consecutive pairs share an orientation
    assert all(kinds[i] == kinds[i + 1] for i in range(0, 16, 2))


def test_prefetch_and_synchronous_give_the_same_batches(dataset):
    threaded_layer, tops = make(e2e_spec(scales=(24, 40)), dataset)
    assert threaded_layer.prefetch
    threaded = run(threaded_layer, tops, 12)
    sync_layer, tops = make(e2e_spec(scales=(24, 40), prefetch=False), dataset)
    sync = run(sync_layer, tops, 12)
    assert same(threaded, sync)
    assert {b["data"].shape[2] for b in sync} | {b["data"].shape[3] for b in sync} >= {24, 40}
    assert threaded_layer._pipeline.threaded and not sync_layer._pipeline.threaded
    threaded_layer.close()


@pytest.mark.parametrize("prefetch", [True, False])
def test_resume_from_the_state_continues_the_order(dataset, prefetch):
    spec = e2e_spec(scales=(24, 40), prefetch=prefetch)
    layer, tops = make(spec, dataset)
    run(layer, tops, 5)
    state = json.loads(json.dumps(layer.random_state()))   # as a snapshot stores it
    assert state == {"epoch": 0, "cursor": 5, "order_seed": 5, "examples": 8}
    expected = run(layer, tops, 9)                          # crosses into epoch 1
    # a new layer, state restored before or after the dataset is given
    resumed, tops2 = make(spec, dataset)
    resumed.set_random_state(state)
    assert same(run(resumed, tops2, 9), expected)
    late, tops3 = make(spec)
    late.set_random_state(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        late.set_dataset(dataset)
    assert same(run(late, tops3, 9), expected)
    # and the original layer rewound mid-prefetch gives them again
    layer.set_random_state(state)
    assert same(run(layer, tops, 9), expected)


def test_state_keys_are_the_random_state_attributes(dataset):
    """SGDSolver restores a layer's state only when its keys are the
    layer's random_state_attributes."""
    layer, tops = make(e2e_spec(), dataset)
    assert set(layer.random_state()) == set(layer.random_state_attributes)
    fresh, _ = make(e2e_spec())
    assert fresh.random_state() == {"epoch": 0, "cursor": 0, "order_seed": 5, "examples": -1}
    assert layer.get_state() == layer.random_state()


def test_restoring_the_current_position_keeps_the_prefetched_batches(dataset):
    layer, tops = make(e2e_spec(), dataset)
    run(layer, tops, 2)
    pipeline = layer._pipeline
    layer.set_random_state(layer.random_state())      # e.g. SGDSolver's rewind after a NaN
    assert layer._pipeline is pipeline
    expected = run(*make(e2e_spec(), dataset), 4)[2:]
    assert same(run(layer, tops, 2), expected)
    layer.close()


def test_resume_with_another_dataset_is_refused(dataset):
    layer, _ = make(e2e_spec(use_flipped=False), dataset)
    state = dict(layer.random_state(), examples=8)
    with pytest.raises(DataError, match=r"saved data order is for 8 training examples .*the "
                                        r"dataset gives 4"):
        layer.set_random_state(state)


def test_test_phase_keeps_the_dataset_order_without_flips(dataset):
    layer, tops = make(e2e_spec(scales=(24, 40)), dataset, phase="TEST")
    ids = []
    for batch in run(layer, tops, 5):
        record, flipped = record_of(dataset, batch["gt_boxes"], batch["im_info"])
        assert not flipped and min(batch["data"].shape[2:]) == 24
        ids.append(record.image_id)
    assert ids == ["a", "b", "c", "d", "a"]


def test_unreadable_image_error_names_the_file(dataset, tmp_path):
    import dataclasses
    from detection.datasets import DetectionDataset
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    records = [dataclasses.replace(r, path=str(broken)) for r in dataset.records]
    bad = DetectionDataset("bad", dataset.classes, records)
    for prefetch in (True, False):
        layer, tops = make(e2e_spec(prefetch=prefetch), bad)
        for _ in range(2):       # raised again, not skipped
            with pytest.raises(DataError, match=r"cannot read image '.*broken\.png'"):
                layer.forward([], tops)
        assert (layer.epoch, layer.cursor) == (0, 0)


# -- precomputed RoIs -------------------------------------------------------------------------

def make_proposals(dataset, count=30, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for record in dataset.records:
        x1 = rng.uniform(0, record.width * 0.5, count)
        y1 = rng.uniform(0, record.height * 0.5, count)
        x2 = np.minimum(x1 + rng.uniform(3, record.width * 0.6, count), record.width - 1)
        y2 = np.minimum(y1 + rng.uniform(3, record.height * 0.6, count), record.height - 1)
        near_gt = record.boxes + rng.uniform(-1, 1, record.boxes.shape)
        out.append(np.concatenate([np.stack([x1, y1, x2, y2], 1), near_gt]).astype(np.float32))
    return out


def test_precomputed_rois_counts_fg_fraction_and_shapes(dataset):
    proposals = make_proposals(dataset)
    layer, tops = make(roi_spec(), dataset, proposals)
    assert not layer.has_rpn and layer.skipped == []      # e has background proposals
    for batch in run(layer, tops, 6):
        data, rois, labels = batch["data"], batch["rois"], batch["labels"].reshape(-1)
        assert data.shape[0] == 2
        assert rois.shape == (16, 5) and batch["labels"].shape == (16, 1, 1, 1)
        for name in ("bbox_targets", "bbox_inside_weights", "bbox_outside_weights"):
            assert batch[name].shape == (16, 12)
        for image in (0, 1):
            mine = rois[:, 0] == image
            assert mine.sum() == 8                         # batch_size / ims_per_batch
            fg = labels[mine] > 0
            assert fg.sum() <= 2                           # round(0.25 * 8)
            # RoIs lie inside the scaled image they belong to
            assert np.all(rois[mine, 3] < data.shape[3] + 1e-3)
            inside = batch["bbox_inside_weights"][mine]
            np.testing.assert_array_equal(inside.sum(axis=1), np.where(fg, 4, 0))
            cols = np.flatnonzero(inside[fg].any(axis=0)) // 4
            assert set(cols) <= set(labels[mine][fg].astype(int))


def test_precomputed_form_with_gt_gives_full_foreground_share(dataset):
    proposals = make_proposals(dataset)
    layer, tops = make(roi_spec(fg_thresh=0.5), dataset, proposals)
    fg_counts = [int((b["labels"][b["rois"][:, 0] == i] > 0).sum())
                 for b in run(layer, tops, 5) for i in (0, 1)]
    # an image with gt has its gt boxes (and proposals near them) as foreground,
    # up to the 2 allowed; "e" (no gt) only background
    assert sorted(set(fg_counts)) == [0, 2]


def test_precomputed_form_is_deterministic_and_prefetch_free(dataset):
    proposals = make_proposals(dataset)
    a = run(*make(roi_spec(), dataset, proposals), 6)
    b = run(*make(roi_spec(prefetch=False), dataset, proposals), 6)
    assert same(a, b)


def test_precomputed_class_agnostic_targets(dataset):
    proposals = make_proposals(dataset)
    layer, tops = make(roi_spec(class_agnostic=True), dataset, proposals)
    assert tops[3].shape == (16, 8)
    batch = run(layer, tops, 1)[0]
    fg = batch["labels"].reshape(-1) > 0
    assert batch["bbox_targets"].shape == (16, 8)
    np.testing.assert_array_equal(batch["bbox_inside_weights"][fg, 4:], 1)
    np.testing.assert_array_equal(batch["bbox_inside_weights"][:, :4], 0)


# -- inside a Net -------------------------------------------------------------------------------

NET = """
name: "tiny"
layer { name: "input-data" type: "Python" top: "data" top: "im_info" top: "gt_boxes"
        python_param { module: "roi_data_layer.layer" layer: "RoIDataLayer"
                       param_str: "'num_classes': 3, 'scales': [32], 'max_size': 64, 'seed': 2" } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.01 } } }
"""


def test_net_with_the_python_data_layer(dataset):
    from netdef.net import Net
    net = Net(NET, "TRAIN")
    layer = net.layer_dict["input-data"]
    assert isinstance(layer, RoIDataLayer) and layer.num_classes == 3
    assert net.blobs["data"].shape == (1, 3, 32, 64)
    assert net.blobs["conv"].shape == (1, 2, 32, 64)
    with pytest.raises(NetDefinitionError, match="RoIDataLayer needs a dataset"):
        net.forward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        layer.set_dataset(dataset)
    for _ in range(3):
        net.forward()
        data = net.blobs["data"].data
        assert net.blobs["conv"].shape == (1, 2) + data.shape[2:]
        assert net.blobs["im_info"].data[0, :2].tolist() == list(data.shape[2:])
    layer.close()


# -- devices -------------------------------------------------------------------------------------

def test_gpu_path_stages_the_host_minibatch(dataset):
    """On a (stand-in) GPU the prefetched minibatch goes through pinned
    staging into the tops: the same values as the CPU's."""
    from bench.standin_cupy import installed
    from netdef.device import CPU, Device
    results = []
    with installed():
        for device in (CPU, Device("gpu", 0)):
            layer = build_layer(roi_spec(), device=device, dtype=np.float32)
            _, tops = setup_layer(layer, [])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DataWarning)
                layer.set_dataset(dataset, make_proposals(dataset))
            layer.forward([], tops)
            results.append([np.array(to_numpy(t.data)) for t in tops])
            layer.close()
    for cpu, gpu in zip(*results):
        np.testing.assert_array_equal(cpu, gpu)


@pytest.mark.gpu
def test_gpu_tops_equal_cpu_tops(dataset):
    import cupy
    from netdef.device import CPU, Device
    results = []
    for device in (CPU, Device("gpu", 0)):
        layer = build_layer(roi_spec(), device=device, dtype=np.float32)
        _, tops = setup_layer(layer, [])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            layer.set_dataset(dataset, make_proposals(dataset))
        out = []
        for _ in range(3):
            layer.forward([], tops)
            out.append([cupy.asnumpy(t.data) if device.is_gpu else t.data.copy() for t in tops])
            if device.is_gpu:
                assert all(isinstance(t.data, cupy.ndarray) for t in tops)
        results.append(out)
        layer.close()
    for cpu, gpu in zip(*results):
        for a, b in zip(cpu, gpu):
            np.testing.assert_array_equal(a, b)
