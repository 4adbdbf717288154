"""Single-stage inference (detection.single_stage through Detector): a hand-built
TEST net whose detection_out comes from known priors, offsets and scores, so the
pixel boxes, classes and scores it must give are computed by hand below.

The net: Input data (1, 3, 24, 32) -> global average pooling -> two InnerProducts
(loc, conf: their weights and biases set by the tests) and a PriorBox on the 1 x 1
pooled map -> DetectionOutput (CORNER code, offsets added to the priors as they
are: variance_encoded_in_target). PriorBox with min_size 8 and 16 on a 1 x 1 map of
a 32 x 24 input puts both priors at the centre (16, 12):
    prior 0 (8 x 8):   [12/32, 8/24, 20/32, 16/24]  = [0.375, 1/3, 0.625, 2/3]
    prior 1 (16 x 16): [ 8/32, 4/24, 24/32, 20/24]  = [0.25, 1/6, 0.75, 5/6]
"""
import numpy as np
import pytest

from detection.datasets import DetectionDataset
from detection.detector import (DEFAULT_MAX_PER_IMAGE, Detector, keep_detection_blobs,
                                resolve_test_net)
from detection.single_stage import (InputTransform, LabelMap, SSD_MEAN, input_transform,
                                    label_map, read_rows, scored_classes, warp_input)
from netdef import Net
from netdef.errors import DataError, NetDefinitionError

INPUT_H, INPUT_W = 24, 32
PRIORS = np.array([[0.375, 1 / 3, 0.625, 2 / 3], [0.25, 1 / 6, 0.75, 5 / 6]])
CLASSES = ("__background__", "a", "b", "c", "d", "e", "f")   # 7, background included

TRAIN_INPUT = """
layer { name: "data" type: "AnnotatedData" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param { %s resize_param { resize_mode: WARP height: 24 width: 32 } }
  data_param { batch_size: 2 } }
"""

NET = """name: "single_stage_tiny"
%s
layer { name: "input" type: "Input" top: "data" include { phase: TEST }
  input_param { shape { dim: 1 dim: 3 dim: %d dim: %d } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
  pooling_param { pool: AVE global_pooling: true } }
layer { name: "loc" type: "InnerProduct" bottom: "pool" top: "loc"
  inner_product_param { num_output: 8 } }
layer { name: "conf" type: "InnerProduct" bottom: "pool" top: "conf"
  inner_product_param { num_output: %d } }
layer { name: "prior" type: "PriorBox" bottom: "pool" bottom: "data" top: "prior"
  prior_box_param { min_size: 8 min_size: 16 } }
layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "loc" bottom: "conf" bottom: "prior"
  bottom: "label" top: "mbox_loss" include { phase: TRAIN }
  multibox_loss_param { num_classes: %d } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "loc" bottom: "conf"
  bottom: "prior" top: "detection_out" include { phase: TEST }
  detection_output_param { num_classes: %d background_label_id: %d code_type: CORNER
    variance_encoded_in_target: true confidence_threshold: 0.01
    nms_param { nms_threshold: 0.45 } } }
"""


def net_text(num_classes=7, background=0, transform="mean_value: 10 mean_value: 20 "
             "mean_value: 30 scale: 0.5", train=True):
    """The tiny net's file text (module docstring): TRAIN phase AnnotatedData with
    ``transform`` (none with ``train`` False: a deploy file), TEST phase Input."""
    head = TRAIN_INPUT % transform if train else ""
    return NET % (head, INPUT_H, INPUT_W, 2 * num_classes, num_classes, num_classes,
                  background)


def write_net(tmp_path, name="tiny.prototxt", **options):
    path = tmp_path / name
    path.write_text(net_text(**options))
    return path


def set_outputs(net, loc, conf, conf_weight=None):
    """Fix the InnerProducts: ``loc`` (2, 4) offsets and ``conf`` (2, K)
    scores as biases; weights 0, or ``conf_weight`` (2K, 3) for conf."""
    for name, values in (("loc", loc), ("conf", conf)):
        weight, bias = net.params[name]
        weight.data[...] = 0
        bias.data[...] = np.asarray(values, np.float64).reshape(-1)
    if conf_weight is not None:
        net.params["conf"][0].data[...] = conf_weight


# Wanted detections in a 96 x 64 image (width x height), in inclusive pixels:
#   prior 0 -> class 2, score 0.9, [12, 8, 47, 31]: normalized
#       [12/96, 8/64, 48/96, 32/64] = [0.125, 0.125, 0.5, 0.5]
#   prior 1 -> class 5, score 0.6, [48, 16, 95, 63], from normalized
#       [0.5, 0.25, 1.1, 1.0]: 1.1 * 96 - 1 = 104.6 is clipped to the image's 95.
TARGETS = np.array([[0.125, 0.125, 0.5, 0.5], [0.5, 0.25, 1.1, 1.0]])
EXPECTED = {2: [[12, 8, 47, 31, 0.9]], 5: [[48, 16, 95, 63, 0.6]]}
IMAGE = np.full((64, 96, 3), 100, np.float32)


def scores_for(labels_scores, width):
    """(2, width) conf scores: prior p scores ``labels_scores[p]`` = (label, s)."""
    conf = np.zeros((2, width))
    for p, (label, score) in enumerate(labels_scores):
        conf[p, label] = score
    return conf


def check_expected(dets, expected):
    assert len(dets) == 7 and dets[0].shape == (0, 5)
    for c in range(1, 7):
        want = np.array(expected.get(c, np.zeros((0, 5))), np.float64).reshape(-1, 5)
        assert dets[c].dtype == np.float32 and dets[c].shape == want.shape, c
        np.testing.assert_allclose(dets[c], want, rtol=0, atol=2e-4)


@pytest.mark.parametrize("background, labels", [(0, (2, 5)), (-1, (1, 4))])
def test_boxes_come_back_in_pixels_with_dataset_classes(tmp_path, background, labels):
    """With a background column (bg 0) the label is the class; without one
    (sigmoid, bg -1) label l is class l + 1: the same detections either way."""
    num_classes = 7 if background == 0 else 6
    net = Net(write_net(tmp_path, num_classes=num_classes, background=background), "TEST")
    keep_detection_blobs(net)
    set_outputs(net, TARGETS - PRIORS, scores_for(zip(labels, (0.9, 0.6)), num_classes))
    detector = Detector(net)
    assert detector.single_stage and label_map(net).classes == scored_classes(net) == 7
    check_expected(detector.detect(IMAGE), EXPECTED)


def test_score_threshold_cap_and_order(tmp_path):
    """Both priors on class 3: highest score first; the score threshold and
    max_per_image cut as for two-stage nets."""
    net = Net(write_net(tmp_path), "TEST")
    set_outputs(net, TARGETS - PRIORS, scores_for([(3, 0.3), (3, 0.7)], 7))
    both = {3: [[48, 16, 95, 63, 0.7], [12, 8, 47, 31, 0.3]]}
    check_expected(Detector(net).detect(IMAGE), both)
    check_expected(Detector(net, score_thresh=0.5).detect(IMAGE), {3: both[3][:1]})
    check_expected(Detector(net, max_per_image=1).detect(IMAGE), {3: both[3][:1]})
    assert DEFAULT_MAX_PER_IMAGE == 100


def test_no_second_nms(tmp_path):
    """Two boxes of one class overlapping at IoU 0.4 (in pixels): the net's NMS
    (0.45) keeps both, and the Detector's nms_thresh 0.3 does not drop one."""
    # Image 100 x 100: [0, 0, 49, 99] and [20, 0, 69, 99] share 30 of 70 columns.
    image = np.zeros((100, 100, 3), np.float32)
    targets = np.array([[0.0, 0.0, 0.5, 1.0], [0.2, 0.0, 0.7, 1.0]])
    net = Net(write_net(tmp_path), "TEST")
    set_outputs(net, targets - PRIORS, scores_for([(1, 0.8), (1, 0.5)], 7))
    dets = Detector(net, nms_thresh=0.3).detect(image)
    check_expected(dets, {1: [[0, 0, 49, 99, 0.8], [20, 0, 69, 99, 0.5]]})


def test_nothing_found_gives_empty_classes(tmp_path):
    """No score above the net's threshold: Caffe-SSD's -1 rows, no detection."""
    net = Net(write_net(tmp_path), "TEST")
    set_outputs(net, np.zeros((2, 4)), np.zeros((2, 7)))
    detector = Detector(net)
    detector.detect(IMAGE)
    rows = net.blobs["detection_out"].data
    assert rows.shape == (1, 1, 1, 7) and (rows[0, 0, 0, 1:] == -1).all()
    check_expected(detector.detect(IMAGE), {})


def test_mean_and_scale_of_the_train_phase_reach_the_net(tmp_path):
    """conf of prior 0, class 1 = 0.01 x the pooled blue channel of an image of
    (150, 100, 100) = 0.01 x (150 - mean) x scale: 0.01 x (150 - 10) x 0.5 =
    0.7 with the file's AnnotatedData, 0.01 x (150 - 104) = 0.46 with SSD's
    mean in a deploy file; green and red (weight 0) change nothing."""
    image = np.full((64, 96, 3), 100, np.float32)
    image[:, :, 0] = 150
    weight = np.zeros((14, 3))
    weight[1, 0] = 0.01
    for transform, train, score in (("mean_value: 10 mean_value: 20 mean_value: 30 scale: 0.5",
                                     True, 0.7), ("", False, 0.46)):
        path = write_net(tmp_path, f"net{train}.prototxt", transform=transform, train=train)
        net = Net(path, "TEST")
        set_outputs(net, TARGETS - PRIORS, np.zeros((2, 7)), conf_weight=weight)
        detector = Detector(net)
        check_expected(detector.detect(image), {1: [[12, 8, 47, 31, score]]})
    assert detector.input_transform == InputTransform()
    # The transform given to the Detector wins over the file's.
    given = Detector(net, input_transform=InputTransform((50, 0, 0), 2.0, "given"))
    check_expected(given.detect(image), {1: [[12, 8, 47, 31, 2.0]]})


def test_warp_input_hand_computed():
    """A constant image warps to the same constant; (pixel - mean) x scale per
    BGR channel; the shape is the Input's (1, 3, H, W)."""
    image = np.empty((64, 96, 3), np.float32)
    image[...] = (50, 60, 70)
    out = warp_input(image, 24, 32, InputTransform((10, 20, 30), 0.5, "test"))
    assert out.shape == (1, 3, 24, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 5, 7], [20, 20, 20], atol=1e-4)
    np.testing.assert_allclose(np.ptp(out[0].reshape(3, -1), axis=1), 0, atol=1e-4)
    # A left-to-right ramp stays one: columns increase, rows are equal.
    ramp = np.repeat(np.arange(96, dtype=np.float32)[None, :, None], 64, 0).repeat(3, 2)
    warped = warp_input(ramp, 24, 32, InputTransform((0, 0, 0), 1.0, "test"))[0, 0]
    assert (np.diff(warped[0]) > 0).all() and np.ptp(warped, axis=0).max() < 1e-3
    with pytest.raises(DataError, match=r"expected an \(H, W, 3\) BGR image, found shape"):
        warp_input(np.zeros((4, 4)), 24, 32, InputTransform())


def test_input_transform_from_the_net_files(tmp_path):
    """TRAIN phase first; one mean value for all channels; no mean_value: 0
    (Caffe's transformer); no AnnotatedData: SSD's mean."""
    train = write_net(tmp_path, "a.prototxt", transform="mean_value: 7")
    assert input_transform(train).mean == (7.0, 7.0, 7.0)
    assert input_transform(train).scale == 1.0
    assert input_transform(write_net(tmp_path, "b.prototxt", transform="")).mean == (0, 0, 0)
    deploy = write_net(tmp_path, "c.prototxt", train=False)
    assert input_transform(deploy) == InputTransform() and InputTransform().mean == SSD_MEAN
    assert input_transform(None, deploy, tmp_path / "missing", train).mean == (7.0,) * 3
    test_phase = tmp_path / "d.prototxt"
    test_phase.write_text(TRAIN_INPUT.replace("TRAIN", "TEST") % "mean_value: 1 mean_value: 2 "
                          "mean_value: 3" + TRAIN_INPUT % "mean_value: 4")
    assert input_transform(test_phase).mean == (4.0, 4.0, 4.0)
    assert "'data' (AnnotatedData)" in input_transform(test_phase).source


@pytest.mark.parametrize("transform, message", [
    ("mean_file: 'm.binaryproto'", "reads transform_param.mean_value only; found a mean_file"),
    ("mean_value: 1 mean_value: 2", r"mean_value needs 1 value or 3 \(B, G, R\); found 2"),
])
def test_input_transform_errors(tmp_path, transform, message):
    with pytest.raises(NetDefinitionError, match=r"layer 'data' \(AnnotatedData\): .*" + message):
        input_transform(write_net(tmp_path, transform=transform))


def test_input_transform_refuses_a_resize_other_than_warp(tmp_path):
    path = write_net(tmp_path)
    path.write_text(path.read_text().replace("resize_mode: WARP", "resize_mode: FIT_SMALL_SIZE"))
    with pytest.raises(NetDefinitionError, match="warps the whole image .* found resize_mode "
                                                 "FIT_SMALL_SIZE"):
        input_transform(path)


def test_dataset_class_count_mismatch(tmp_path):
    """DetectionOutput's num_classes (+1 without a background column) against
    the dataset's 7: a DataError naming both."""
    for num_classes, background, says in ((5, 0, r"detection_out's num_classes\)"),
                                          (7, -1, r"detection_out's num_classes 7 \+ background "
                                                  r"\(background_label_id -1\)\)")):
        net = Net(write_net(tmp_path, num_classes=num_classes, background=background), "TEST")
        set_outputs(net, np.zeros((2, 4)), np.zeros((2, num_classes)))
        dataset = DetectionDataset("toy", CLASSES, [])
        with pytest.raises(DataError, match=rf"detects {5 if background == 0 else 8} classes, "
                                            rf"background included \({says}.*dataset 'toy' "
                                            rf"has 7"):
            Detector(net).detect_dataset(dataset)


def test_background_label_other_than_0_or_minus_1(tmp_path):
    net = Net(write_net(tmp_path, background=3), "TEST")
    with pytest.raises(NetDefinitionError, match=r"layer 'detection_out' \(DetectionOutput\): "
                                                 r"background_label_id 3: evaluation needs 0"):
        Detector(net)


def test_bad_single_stage_nets(tmp_path):
    """A label outside the classes, an input besides data, and a detection_out
    without Caffe-SSD's row shape are named errors."""
    labels = LabelMap(4, 1, "its num_classes")
    with pytest.raises(NetDefinitionError, match=r"net.prototxt: 'detection_out' has label 3 "
                                                 r"\(class 4\); classes 1\.\.3 exist \(its "
                                                 r"num_classes\)"):
        read_rows([[0, 1, 0.5, 0, 0, 1, 1], [0, 3, 0.5, 0, 0, 1, 1]], labels, 10, 10,
                  "net.prototxt")
    two_inputs = tmp_path / "two.prototxt"
    two_inputs.write_text(net_text().replace(
        'layer { name: "pool"', 'layer { name: "info" type: "Input" top: "im_info" '
        'input_param { shape { dim: 1 dim: 3 } } }\nlayer { name: "pool"'))
    with pytest.raises(NetDefinitionError, match=r"takes one Input, 'data' \(1, 3, H, W\); its "
                                                 r"inputs: data, im_info"):
        Detector(Net(two_inputs, "TEST")).detect(IMAGE)
    flat = tmp_path / "flat.prototxt"
    flat.write_text('name: "flat"\nlayer { name: "input" type: "Input" top: "data" '
                    'input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }\n'
                    'layer { name: "detection_out" type: "Reshape" bottom: "data" '
                    'top: "detection_out" reshape_param { shape { dim: 1 dim: 48 } } }\n')
    with pytest.raises(NetDefinitionError, match=r"detection_out' \(Reshape\) writes "
                                                 r"'detection_out' but has no num_classes"):
        Detector(Net(flat, "TEST"))


def test_resolve_pairs_an_annotated_data_train_file_with_its_test_file(tmp_path):
    """Caffe-SSD's layout: train.prototxt (AnnotatedData, no phase rules) and
    test.prototxt beside it."""
    train = tmp_path / "train.prototxt"
    train.write_text(TRAIN_INPUT.replace("include { phase: TRAIN }", "") % "")
    (tmp_path / "test.prototxt").write_text(net_text(train=False))
    assert resolve_test_net(train) == (str(tmp_path / "test.prototxt"), False)


def test_read_rows_keeps_image_0_and_drops_filler_rows():
    """Rows of image 1 and Caffe-SSD's -1 filler rows are no detections; the
    rest become pixel boxes of a 96 x 64 image (hand-computed as above)."""
    rows = [[0, 2, 0.9, 0.125, 0.125, 0.5, 0.5],
            [1, 3, 0.8, 0.125, 0.125, 0.5, 0.5],
            [0, -1, -1, -1, -1, -1, -1],
            [-1, -1, -1, -1, -1, -1, -1],
            [0, 4, 0.7, 0.5, 0.25, 1.1, 1.0]]
    classes, scores, boxes = read_rows(rows, LabelMap(7, 0, "test"), 96, 64)
    np.testing.assert_array_equal(classes, [2, 4])
    np.testing.assert_allclose(scores, [0.9, 0.7], rtol=1e-6)
    np.testing.assert_allclose(boxes, [[12, 8, 47, 31], [48, 16, 95, 63]], atol=1e-4)
    empty = read_rows(np.full((2, 7), -1.0), LabelMap(7, 0, "test"), 96, 64)
    assert [a.shape for a in empty] == [(0,), (0,), (0, 4)]


YOLO = """name: "yolo_tiny"
layer { name: "input" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
  pooling_param { pool: AVE global_pooling: true } }
layer { name: "pred" type: "Convolution" bottom: "pool" top: "pred"
  convolution_param { num_output: 11 kernel_size: 1 } }
layer { name: "region_out" type: "RegionOutput" bottom: "pred" top: "detection_out"
  region_param { classes: 6 num: 1 softmax: true anchors: 1 anchors: 1 }
  detection_output_param { confidence_threshold: 0.01 nms_param { nms_threshold: 0.45 } } }
"""


def test_yolo_region_output_labels_are_dataset_classes(tmp_path):
    """RegionOutput (YOLOv2) labels count from 1 as the dataset's classes. One
    1 x 1 cell, anchor 1 x 1 cell: tx = ty = 0 puts the centre at 0.5, tw = th
    = ln 0.5 makes the box half the image: [0.25, 0.25, 0.75, 0.75], in a
    256 x 192 image [64, 48, 191, 143]; objectness logit 10 and class logit 20
    on the third class (label 3) score sigmoid(10) x ~1 = 0.99995."""
    path = tmp_path / "yolo.prototxt"
    path.write_text(YOLO)
    net = Net(path, "TEST")
    weight, bias = net.params["pred"]
    weight.data[...] = 0
    bias.data[...] = [0, 0, np.log(0.5), np.log(0.5), 10, 0, 0, 20, 0, 0, 0]
    assert label_map(net) == LabelMap(7, 0, "region_out's num_classes", "region_out")
    dets = Detector(net).detect(np.zeros((192, 256, 3), np.float32))
    score = 1 / (1 + np.exp(-10)) / (1 + 5 * np.exp(-20))
    check_expected(dets, {3: [[64, 48, 191, 143, score]]})


@pytest.mark.gpu
def test_gpu_detects_as_the_cpu(tmp_path):
    """The same weights on both devices: the same detections (SSD-style and
    YOLO nets, with weights that make the image matter)."""
    from netdef.device import CPU, Device
    ssd, yolo = write_net(tmp_path), tmp_path / "yolo.prototxt"
    yolo.write_text(YOLO)
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 255, (64, 96, 3)).astype(np.float32)
    for path, setup in ((ssd, lambda net: set_outputs(net, TARGETS - PRIORS,
                                                      scores_for([(2, 0.5), (5, 0.4)], 7),
                                                      rng.normal(0, 0.01, (14, 3)))),
                        (yolo, None)):
        cpu = Net(path, "TEST", device=CPU)
        if setup is not None:
            setup(cpu)
        weights = tmp_path / f"{path.stem}.npz"
        cpu.save_weights(weights)
        gpu = Net(path, "TEST", device=Device("gpu", 0), weights=str(weights))
        got_cpu, got_gpu = Detector(cpu).detect(image), Detector(gpu).detect(image)
        assert sum(len(d) for d in got_cpu) > 0
        for a, b in zip(got_cpu, got_gpu):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-3)
