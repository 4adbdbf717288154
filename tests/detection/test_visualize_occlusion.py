"""Occlusion sensitivity: the peak on a synthetic image with one object,
the batched map against one patch at a time (classifier and detector with a
pinned RoI), the patch layout, progress and errors."""
import dataclasses

import numpy as np
import pytest

from detection.datasets.synthetic import SyntheticConfig, render_image
from detection.visualize.model import Target, VisualModel
from detection.visualize.occlusion import default_patch, occlusion, patch_corners
from netdef.device import Device
from netdef.errors import DataError
from netdef.net import Net
from netdef.schema import read_net

# Saturated colour detector: six 1x1 filters, one per ordered pair of the
# BGR channels (c_i - c_j), minus a threshold above the muted backgrounds'
# colour differences; the mean of their ReLUs is the score of "colourful".
SATURATION = """
name: "saturation"
force_backward: true
layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 64 dim: 80 } } }
layer { name: "diff" type: "Convolution" bottom: "data" top: "diff"
        convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "relu" type: "ReLU" bottom: "diff" top: "diff" }
layer { name: "pool" type: "Pooling" bottom: "diff" top: "pool"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "score" type: "InnerProduct" bottom: "pool" top: "score"
        inner_product_param { num_output: 2 } }
layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }
"""


def saturation_model():
    model = VisualModel(Net(SATURATION, "TEST"), pixel_means=(0, 0, 0))
    weight, bias = model.net.params["diff"]
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    weight.data[...] = 0
    for out, (i, j) in enumerate(pairs):
        weight.data[out, i] = 1
        weight.data[out, j] = -1
    bias.data[...] = -70
    model.net.params["score"][0].data[...] = [[1] * 6, [-1] * 6]
    model.net.params["score"][1].data[...] = 0
    return model


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_peak_lies_inside_the_one_objects_box(seed):
    config = SyntheticConfig(image_size=(64, 80), object_size=(16, 28), max_objects=1)
    image, [(_, x1, y1, x2, y2)] = render_image(np.random.default_rng(seed), 64, 80, config)
    model = saturation_model()
    target = model.target(image, class_name="class 0")
    heat = occlusion(model, image, target, patch=8, stride=4)
    assert heat.shape == (64, 80) and heat.dtype == np.float32
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert x1 <= x <= x2 and y1 <= y <= y2


def starts(extent, patch, stride):
    """Patch starts written out plainly: every stride, then flush with the end."""
    found = list(range(0, extent - patch + 1, stride))
    return found if found[-1] == extent - patch else found + [extent - patch]


def reference_map(model, image, target, patch, stride):
    """One occluded copy at a time through VisualModel.forward; ``patch``
    and ``stride`` (a side or ``(h, w)``) here in input-blob pixels."""
    prepared = model.prepare(image)
    data = prepared.inputs[model.input_blob]
    height, width = prepared.input_shape

    def score(array):
        inputs = dict(prepared.inputs, **{model.input_blob: array})
        model.forward(dataclasses.replace(prepared, inputs=inputs), rois=target.rois)
        return float(model.blob_data(target.blob)[target.index])

    (ph, pw), (sh, sw) = np.broadcast_to(patch, 2), np.broadcast_to(stride, 2)
    base = score(data)
    drops, covered = np.zeros(data.shape[2:]), np.zeros(data.shape[2:])
    for y in starts(height, ph, sh):
        for x in starts(width, pw, sw):
            occluded = data.copy()
            occluded[:, :, y:y + ph, x:x + pw] = 0
            drops[y:y + ph, x:x + pw] += base - score(occluded)
            covered[y:y + ph, x:x + pw] += 1
    return model.to_image(drops / np.maximum(covered, 1), prepared)


CLASSIFIER = SATURATION.replace("dim: 64 dim: 80", "dim: 12 dim: 14").replace(
    "kernel_size: 1 }", 'kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } }').replace(
    "num_output: 2 }", 'num_output: 3 weight_filler { type: "gaussian" std: 0.1 } }')


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_batched_map_equals_one_patch_at_a_time():
    model = VisualModel(Net(CLASSIFIER, "TEST", seed=3))
    image = random_image(24, 28)
    target = model.target(image)
    # the 24 x 28 image is resized to the 12 x 14 blob: image pixels / 2
    expected = reference_map(model, image, target, patch=5, stride=3)
    found = occlusion(model, image, target, patch=10, stride=6, batch=4)
    np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-5)


def tiny_detector(device=None):
    param = read_net("prototxt/rfcn_tiny.prototxt")
    param.force_backward = True
    return VisualModel(Net(param, "TEST", seed=5, device=device), scale=48, max_size=64)


def detector_target(model):
    # The RoI is in input-blob pixels (the 36 x 48 image scaled by 4/3).
    return Target("cls_score", (0, 2, 0, 0), np.array([[0, 8, 12, 40, 44]], np.float32),
                  "class 2")


def test_detector_keeps_the_roi_pinned_in_every_batch():
    model = tiny_detector()
    image = random_image(36, 48, seed=1)
    target = detector_target(model)
    # scale 48 / 36: a 12-pixel patch every 9 pixels is 16 every 12 in the blob
    expected = reference_map(model, image, target, patch=16, stride=12)
    found = occlusion(model, image, target, patch=12, stride=9, batch=5)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-6)


def test_patch_corners_cover_the_far_edges():
    corners = patch_corners(10, 7, (4, 4), (3, 3))
    assert corners.tolist() == [[y, x] for y in (0, 3, 6) for x in (0, 3)]
    corners = patch_corners(10, 7, (4, 2), (5, 2))
    assert corners.tolist() == [[y, x] for y in (0, 5, 6) for x in (0, 2, 4, 5)]
    # a patch larger than the image
    assert patch_corners(3, 5, (8, 8), (2, 2)).tolist() == [[0, 0]]
    assert default_patch(192, 256) == 24 and default_patch(5, 3) == 1


def test_patch_is_in_image_pixels_on_each_axis():
    """A classifier's 24 x 7 image is resized to the 12 x 14 blob: a 4-pixel
    patch is 2 rows by 8 columns there, a stride of 6 is 3 rows, 12 columns."""
    model = VisualModel(Net(CLASSIFIER, "TEST", seed=1))
    image = random_image(24, 7, seed=4)
    target = model.target(image)
    expected = reference_map(model, image, target, patch=(2, 8), stride=(3, 12))
    found = occlusion(model, image, target, patch=4, stride=6)
    np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-5)


def test_progress_counts_patches_per_batch():
    model = VisualModel(Net(CLASSIFIER, "TEST"))
    image = random_image(12, 14)
    calls = []
    occlusion(model, image, model.target(image), patch=6, stride=4,
              batch=4, progress=lambda done, total: calls.append((done, total)))
    # starts 0, 4, 6 down and 0, 4, 8 across: 9 patches, batches of 4
    assert calls == [(4, 9), (8, 9), (9, 9)]


@pytest.mark.parametrize("option, value", [("patch", 0), ("stride", -1), ("batch", 0),
                                           ("patch", 2.5)])
def test_bad_options_are_named(option, value):
    model = VisualModel(Net(CLASSIFIER, "TEST"))
    image = random_image(12, 14)
    with pytest.raises(DataError, match=rf"occlusion: {option} must be a whole number of "
                                        rf"pixels >= 1, found {value}"):
        occlusion(model, image, model.target(image), **{option: value})


@pytest.mark.gpu
def test_gpu_map_matches_the_cpu_map():
    image = random_image(36, 48, seed=2)
    maps = []
    for device in (None, Device("gpu", 0)):
        model = tiny_detector(device)
        maps.append(occlusion(model, image, detector_target(model), patch=16, stride=8))
    np.testing.assert_allclose(maps[1], maps[0], rtol=1e-3, atol=1e-4)
