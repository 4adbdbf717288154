"""RPN inside: the Proposal layer's steps redone, anchors, AnchorTarget
labels, the picture and its errors, on the tiny R-FCN with random weights.

``tiny_rfcn_weights`` and ``synthetic_image`` are shared with the R-FCN
inside and command tests."""
import os

import numpy as np
import pytest
from PIL import Image

from detection.datasets import load_dataset
from detection.datasets.synthetic import generate
from detection.visualize.model import VisualModel
from detection.visualize.rpn_inside import (_check_location, anchor_labels, rpn_inside,
                                            rpn_state)
from layers.detection_targets import LABEL_FG
from netdef.errors import DataError
from netdef.net import Net

NET = os.path.join(os.path.dirname(__file__), "..", "..", "prototxt", "rfcn_tiny.prototxt")

CLASSIFIER = """
name: "tiny classifier"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def tiny_rfcn_weights(folder):
    """A .caffemodel of the tiny R-FCN with its fillers' random weights,
    except that class 1's position-sensitive maps get a bias of 4: every
    RoI scores class 1 at about 0.9, so there are detections to look at."""
    net = Net(NET, "TEST")
    net.params["rfcn_cls"][1].data[9:18] = 4.0
    path = os.path.join(folder, "tiny_random.caffemodel")
    net.save(path)
    return path


def synthetic_image(folder):
    """(image (H, W, 3) uint8 RGB, its path, its ground-truth boxes) of a
    generated test image of the built-in dataset's kind."""
    root = generate(os.path.join(folder, "data"), num_train=1, num_test=2)
    record = load_dataset(root, "test").records[0]
    with Image.open(record.path) as opened:
        return np.asarray(opened.convert("RGB")), record.path, record.boxes


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("rpn"))
    model = VisualModel(NET, tiny_rfcn_weights(folder))
    image, _, boxes = synthetic_image(folder)
    return model, image, boxes


def plain_nms(boxes, threshold, limit):
    """Greedy NMS over boxes sorted best first (+1 pixel areas): each box in
    turn against the ones kept so far, up to ``limit`` kept."""
    kept = np.zeros((0, 4))
    index = []
    for i, box in enumerate(boxes):
        w = np.minimum(box[2], kept[:, 2]) - np.maximum(box[0], kept[:, 0]) + 1
        h = np.minimum(box[3], kept[:, 3]) - np.maximum(box[1], kept[:, 1]) + 1
        inter = np.clip(w, 0, None) * np.clip(h, 0, None)
        union = ((box[2] - box[0] + 1) * (box[3] - box[1] + 1) +
                 (kept[:, 2] - kept[:, 0] + 1) * (kept[:, 3] - kept[:, 1] + 1) - inter)
        if not (inter / union > threshold).any():
            kept = np.vstack([kept, box])
            index.append(i)
            if len(index) == limit:
                break
    return index


def test_the_proposals_before_nms_give_the_layers_rois_after_it(setup):
    model, image, _ = setup
    state = rpn_state(model, model.prepare(image))
    layer = model.net.layer_dict[model.rois_layer]
    assert np.all(np.diff(state.scores[state.order]) <= 0)           # best first
    assert state.order.size == min(layer.pre_nms_top_n, state.scores.size)
    kept = plain_nms(state.boxes[state.order], layer.nms_thresh, layer.post_nms_top_n)
    np.testing.assert_allclose(state.boxes[state.order[kept]], state.rois, atol=1e-3)


def test_the_anchors_at_a_cell_are_the_base_anchors_shifted_there(setup):
    model, image, _ = setup
    state = rpn_state(model, model.prepare(image))
    height, width = state.map_shape
    a, stride = state.num_anchors, state.feat_stride
    assert state.anchors.shape == (height * width * a, 4)
    row, col = 5, 7
    block = state.anchors[(row * width + col) * a:(row * width + col + 1) * a]
    shift = np.array([col, row, col, row]) * stride
    np.testing.assert_allclose(block, state.base_anchors + shift)


def test_anchor_labels_of_a_box_equal_to_an_anchor(setup):
    model, image, _ = setup
    state = rpn_state(model, model.prepare(image))
    height, width = state.map_shape
    index = ((height // 2) * width + width // 2) * state.num_anchors   # an inside anchor
    labels = anchor_labels(model, state, state.anchors[index:index + 1])
    assert labels[index] == LABEL_FG
    assert (labels >= 0).sum() <= 256                                # batch_size
    far = state.anchors[:, 0] > state.anchors[index, 2] + 50          # disjoint from the box
    assert not (labels[far] == LABEL_FG).any()


def test_the_picture_has_four_panels_over_the_image(setup):
    model, image, boxes = setup
    picture = rpn_inside(model, image, gt_boxes=boxes)
    height, width = image.shape[:2]
    assert picture.width >= 2 * width and picture.height >= 2 * height
    top_left = np.asarray(picture)[height // 2:height, :width // 2]
    assert (top_left != 255).any()                                   # the image is there
    assert rpn_inside(model, image, location=(0, 0)).size == picture.size


def test_the_default_location_is_the_best_anchors_cell(setup):
    model, image, _ = setup
    state = rpn_state(model, model.prepare(image))
    best = int(np.argmax(np.where(np.isin(np.arange(state.scores.size), state.order),
                                  state.scores, -np.inf)))
    assert _check_location(None, state) == divmod(best // state.num_anchors,
                                                  state.map_shape[1])


def test_a_location_off_the_map_is_an_error(setup):
    model, image, _ = setup
    height, width = rpn_state(model, model.prepare(image)).map_shape
    with pytest.raises(DataError, match=rf"location \(99, 0\) is outside the RPN's {height} x "
                                        rf"{width} map: rows 0\.\.{height - 1}, columns "
                                        rf"0\.\.{width - 1}"):
        rpn_inside(model, image, location=(99, 0))


def test_ground_truth_with_a_class_column_and_a_bad_shape(setup):
    model, image, boxes = setup
    with_class = np.concatenate([boxes, np.ones((len(boxes), 1))], axis=1)
    assert rpn_inside(model, image, gt_boxes=with_class).size == \
        rpn_inside(model, image, gt_boxes=boxes).size
    assert rpn_inside(model, image, gt_boxes=np.zeros((0, 4))).size
    with pytest.raises(DataError, match=r"gt_boxes must be \(G, 4\) .*got shape \(2, 3\)"):
        rpn_inside(model, image, gt_boxes=np.zeros((2, 3)))


def test_a_classifier_has_no_rpn():
    model = VisualModel(CLASSIFIER)
    with pytest.raises(DataError, match="is a classifier .*RPN inside needs a detector"):
        rpn_inside(model, np.zeros((16, 16, 3), np.uint8))


@pytest.mark.gpu
def test_on_the_gpu_the_rpn_state_matches_the_cpu(setup, tmp_path):
    from netdef.device import Device
    model, image, boxes = setup
    gpu = VisualModel(NET, tiny_rfcn_weights(str(tmp_path)), device=Device("gpu", 0))
    cpu_state = rpn_state(model, model.prepare(image))
    gpu_state = rpn_state(gpu, gpu.prepare(image))
    np.testing.assert_allclose(gpu_state.scores, cpu_state.scores, atol=1e-5)
    np.testing.assert_allclose(gpu_state.rois[:20], cpu_state.rois[:20], atol=1e-2)
    picture = rpn_inside(gpu, image, gt_boxes=boxes)
    assert picture.size == rpn_inside(model, image, gt_boxes=boxes).size
