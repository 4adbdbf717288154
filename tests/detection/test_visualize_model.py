"""Tests of detection.visualize.model: kinds, inputs, targets, detections, maps to the image."""
import importlib
import types

import numpy as np
import pytest

from detection.detector import generic_classes, im_detect, postprocess
from detection.visualize.model import VisualModel, ranked_detections
from layers.input_pipeline.preprocess import PIXEL_MEANS, prepare_image
from netdef.device import Device
from netdef.errors import DataError, NetDefinitionError
from netdef.net import Net
from netdef.schema import read_net
from solver.detect import detections_json

CLASSIFIER = """
name: "tiny classifier"
force_backward: true
layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 6 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def classifier(text=CLASSIFIER, **kwargs):
    return VisualModel(Net(text, "TEST"), **kwargs)


def rfcn_tiny(device=None, **kwargs):
    """The tiny R-FCN's TEST net with force_backward, random (seeded) weights;
    small test images (shorter side 96) unless told otherwise."""
    param = read_net("prototxt/rfcn_tiny.prototxt")
    param.force_backward = True
    kwargs = {"scale": 96, "max_size": 128, **kwargs}
    return VisualModel(Net(param, "TEST", device=device), **kwargs)


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def detector():
    return rfcn_tiny()


def test_classifier_kind_blobs_and_classes():
    model = classifier()
    assert model.kind == "classifier" and model.rois_layer is None
    assert (model.input_blob, model.score_blob, model.score_layer) == ("data", "fc", "fc")
    assert model.classes == ["class 0", "class 1", "class 2"]
    assert classifier(classes=["a", "b", "c"]).classes == ["a", "b", "c"]
    with pytest.raises(DataError, match="2 class names given, the net scores 3 classes"):
        classifier(classes=["a", "b"])


def test_detector_kind_blobs_and_classes(detector):
    assert detector.kind == "detector" and detector.rois_layer == "proposal"
    assert (detector.score_blob, detector.score_layer) == ("cls_score", "ave_cls_score_rois")
    assert detector.classes == list(generic_classes(7))
    # no weights metadata and a net built from a message: the default test scale
    default = rfcn_tiny(scale=None, max_size=None)
    assert (default.scale, default.max_size) == (600, 1000)


def test_classifier_prepare_is_bgr_minus_means_resized():
    model = classifier()
    image = random_image(6, 8)
    prepared = model.prepare(image)
    data = prepared.inputs["data"]
    assert data.shape == (1, 3, 6, 8) and data.dtype == np.float32
    expected = image[:, :, ::-1].astype(np.float32) - np.asarray(PIXEL_MEANS, np.float32)
    np.testing.assert_allclose(data[0].transpose(1, 2, 0), expected, atol=1e-4)
    assert prepared.image_shape == (6, 8) and prepared.input_shape == (6, 8)
    big = model.prepare(random_image(12, 20))
    assert big.inputs["data"].shape == (1, 3, 6, 8) and big.image_shape == (12, 20)
    assert big.scale == pytest.approx(0.5)


def test_detector_prepare_matches_the_detection_library(detector):
    image = random_image(60, 90)
    prepared = detector.prepare(image)
    blob, scale = prepare_image(image[:, :, ::-1].astype(np.float32), 96, 128)
    np.testing.assert_array_equal(prepared.inputs["data"], blob)
    np.testing.assert_allclose(prepared.inputs["im_info"], [[85, 128, scale]])
    assert prepared.input_shape == (85, 128) and prepared.scale == pytest.approx(128 / 90)


def test_prepare_rejects_a_non_image():
    with pytest.raises(DataError, match=r"expected an \(H, W, 3\) RGB image, found shape \(4, 5\)"):
        classifier().prepare(np.zeros((4, 5), np.uint8))


def test_classifier_target_top_class_and_named_class():
    model = classifier()
    image = random_image(6, 8, seed=3)
    scores = model.forward(model.prepare(image))["prob"][0]
    top = int(np.argmax(scores))
    target = model.target(image)
    assert target.blob == "fc" and target.index == (0, top) and target.rois is None
    assert target.detection is None and model.classes[top] in target.label
    other = (top + 1) % 3
    assert model.target(image, class_name=f"class {other}").index == (0, other)


def test_unknown_class_lists_the_classes():
    with pytest.raises(DataError, match=r"no class 'zebra' \(classes: class 0, class 1, class 2\)"):
        classifier().target(random_image(6, 8), class_name="zebra")


def test_classifier_has_no_detections():
    model = classifier()
    with pytest.raises(DataError, match="a classifier has no detections; choose a class"):
        model.target(random_image(6, 8), detection=0)
    with pytest.raises(DataError, match="needs a detector"):
        model.detections(random_image(6, 8))


def test_a_net_without_backward_is_refused():
    with pytest.raises(NetDefinitionError, match="force_backward=True"):
        VisualModel(Net(CLASSIFIER.replace("force_backward: true", ""), "TEST"))


def test_a_lean_memory_net_is_refused():
    with pytest.raises(NetDefinitionError, match="lean memory plan"):
        VisualModel(Net(CLASSIFIER, "TEST", keep=["prob"]))


def test_unknown_blob_lists_the_blobs():
    model = classifier()
    with pytest.raises(DataError, match=r"no blob 'conv9' \(blobs: data, conv, fc, prob\)"):
        model.blob_data("conv9")


def test_prototxt_text_is_built_with_forced_backward():
    model = VisualModel(CLASSIFIER.replace("force_backward: true", ""))
    assert all(model.net.layer_need_backward)


def test_prototxt_path_builds_the_test_net():
    model = VisualModel("prototxt/rfcn_tiny.prototxt")
    assert model.kind == "detector" and model.net.phase == "TEST"
    # the scale of the file's data layer (as solver.test finds it)
    assert (model.scale, model.max_size) == (192, 256)
    assert all(model.net.layer_need_backward)


def test_detections_are_solver_detects_list(detector):
    image = random_image(48, 64, seed=1)
    found = detector.detections(image, threshold=0.16)
    assert found, "random weights give near-uniform scores above 0.16"
    scores, boxes = im_detect(detector.net, image[:, :, ::-1].astype(np.float32), 96, 128)
    expected = detections_json("x.png", image.shape, postprocess(scores, boxes, 0.05),
                               detector.classes, 0.16)["detections"]
    assert [d.index for d in found] == list(range(len(found)))
    assert len(found) == len(expected)
    for det, want in zip(found, expected):
        assert det.class_name == want["class"] and det.class_index == detector.classes.index(
            want["class"])
        assert det.score == pytest.approx(want["score"], abs=1e-5)
        np.testing.assert_allclose(det.box, want["box"], atol=0.01)
        assert det.roi.shape == (1, 5)


def test_ranked_detections_follow_postprocess_with_cap_and_ties():
    rng = np.random.default_rng(5)
    rois_n, classes = 300, 4
    scores = rng.random((rois_n, classes)).astype(np.float32)
    scores[:10, 2] = 0.75                                 # ties, kept in class then NMS order
    xy = rng.uniform(0, 400, (rois_n, 2))
    wh = rng.uniform(5, 60, (rois_n, 2))
    one = np.concatenate([xy, xy + wh], axis=1)
    boxes = np.tile(one, (1, classes)).astype(np.float32)
    rois = np.concatenate([np.zeros((rois_n, 1)), one * 2], axis=1).astype(np.float32)
    names = list(generic_classes(classes))
    found = ranked_detections(scores, boxes, rois, names, 0.3)
    expected = detections_json("x", (500, 500), postprocess(scores, boxes, 0.05), names,
                               0.3)["detections"]
    assert len(found) == len(expected) and len(found) <= 100
    for det, want in zip(found, expected):
        assert det.class_name == want["class"] and round(det.score, 5) == want["score"]
        np.testing.assert_allclose(det.box, want["box"], atol=0.01)
        row = np.flatnonzero((boxes[:, :4] == det.box).all(axis=1))
        np.testing.assert_array_equal(det.roi, rois[row[:1]])


def test_detection_target_pins_its_roi(detector):
    image = random_image(48, 64, seed=1)
    prepared = detector.prepare(image)
    detector.forward(prepared)
    all_rois = detector.blob_data("rois")
    all_scores = detector.blob_data("cls_score").reshape(all_rois.shape[0], -1)
    target = detector.target(image, detection=2, threshold=0.16)
    det = target.detection
    assert det.index == 2 and target.rois.shape == (1, 5)
    assert target.blob == "cls_score" and target.index == (0, det.class_index, 0, 0)
    detector.forward(prepared, rois=target.rois)
    pinned = detector.blob_data("cls_score").reshape(1, -1)
    row = np.flatnonzero((all_rois == det.roi).all(axis=1))[0]
    np.testing.assert_allclose(pinned[0], all_scores[row], rtol=1e-5, atol=1e-6)
    assert detector.blob_data("cls_prob")[0, det.class_index] == pytest.approx(det.score,
                                                                              abs=1e-6)


def test_detection_target_by_class(detector):
    image = random_image(48, 64, seed=1)
    found = detector.detections(image, threshold=0.16)
    name = found[-1].class_name
    target = detector.target(image, class_name=name, threshold=0.16)
    first = next(d for d in found if d.class_name == name)
    assert target.detection.index == first.index
    both = detector.target(image, class_name="class1", detection=0, threshold=0.16)
    assert both.detection.index == 0 and both.index == (0, 1, 0, 0)


def test_detection_out_of_range_lists_the_detections(detector):
    image = random_image(48, 64, seed=1)
    count = len(detector.detections(image, threshold=0.16))
    with pytest.raises(DataError, match=rf"detection {count} is out of range: {count} "
                                        rf"detection\(s\) score at least 0.16, 0..{count - 1} "
                                        r"\(0: class\d \d\.\d\d"):
        detector.target(image, detection=count, threshold=0.16)
    with pytest.raises(DataError, match="no detection scores at least 0.99"):
        detector.target(image, threshold=0.99)
    with pytest.raises(DataError, match=r"no class 'person' \(classes: __background__, class1"):
        detector.target(image, class_name="person", threshold=0.16)


def test_detector_refuses_other_pixel_means():
    param = read_net("prototxt/rfcn_tiny.prototxt")
    param.force_backward = True
    with pytest.raises(DataError, match="PIXEL_MEANS"):
        VisualModel(Net(param, "TEST"), pixel_means=(0, 0, 0))


def test_to_image_crops_and_resizes():
    model = classifier()
    image = random_image(6, 8)
    prepared = model.prepare(image)
    heat = np.arange(48, dtype=np.float32).reshape(6, 8)
    np.testing.assert_array_equal(model.to_image(heat, prepared), heat)
    big = model.prepare(random_image(12, 16))
    out = model.to_image(np.ones((6, 8), np.float32), big)
    assert out.shape == (12, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out, 1.0, atol=1e-6)


def test_to_image_upsamples_a_feature_grid_by_its_stride(detector):
    image = random_image(48, 64)
    prepared = detector.prepare(image)                      # blob 96 x 128
    grid = np.zeros((12, 16), np.float32)                   # stride 8
    grid[2:4, 6:8] = 1.0
    out = detector.to_image(grid, prepared)
    assert out.shape == (48, 64)
    # cell (y, x) of the grid covers input pixels 8y..8y+7, image pixels 4y..4y+3
    ys, xs = np.nonzero(out > 0.5)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (8, 15, 24, 31)


def test_to_image_rejects_other_ranks():
    model = classifier()
    with pytest.raises(DataError, match=r"expected a 2-D map, found shape \(1, 6, 8\)"):
        model.to_image(np.zeros((1, 6, 8)), model.prepare(random_image(6, 8)))


@pytest.mark.gpu
def test_pinned_forward_on_the_gpu_matches_the_cpu():
    image = random_image(48, 64, seed=1)
    cpu, gpu = rfcn_tiny(), rfcn_tiny(Device("gpu", 0))
    for name, blobs in cpu.net.params.items():
        for mine, theirs in zip(gpu.net.params[name], blobs):
            mine.data[...] = gpu.net.device.asarray(theirs.data)
    target = cpu.target(image, detection=0, threshold=0.16)
    prepared = cpu.prepare(image)
    want = cpu.forward(prepared, rois=target.rois)
    got = gpu.forward(prepared, rois=target.rois)
    for name in ("cls_prob", "bbox_pred"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
    assert gpu.detections(image, threshold=0.16)


def test_weights_metadata_gives_classes_and_test_scale(detector, tmp_path):
    names = ["__background__", "circle", "square", "triangle", "ellipse", "cross", "ring"]
    path = tmp_path / "weights.npz"
    detector.net.save_weights(path, {"classes": names, "test_scale": [96, 128]})
    model = VisualModel("prototxt/rfcn_tiny.prototxt", path)
    assert model.classes == names and (model.scale, model.max_size) == (96, 128)
    np.testing.assert_array_equal(model.net.params["conv1"][0].data,
                                  detector.net.params["conv1"][0].data)
    assert VisualModel("prototxt/rfcn_tiny.prototxt", path, classes=names[1:],
                       scale=150).classes == names


def test_package_exports_are_the_functions_not_their_modules():
    package = importlib.import_module("detection.visualize")
    for name in package.__all__:
        value = getattr(package, name)
        assert not isinstance(value, types.ModuleType), name
        assert value.__module__.startswith("detection.visualize."), name
    assert package.occlusion is importlib.import_module("detection.visualize.occlusion").occlusion
