"""R-FCN inside: the maps, bins and votes of one detection against a plain
reference, the picture, and the errors, on the tiny R-FCN."""
import math

import numpy as np
import pytest

from detection.visualize.model import VisualModel
from detection.visualize.rfcn_inside import ps_vote, rfcn_inside
from netdef.errors import DataError
from tests.detection.test_visualize_rpn_inside import (CLASSIFIER, NET, synthetic_image,
                                                       tiny_rfcn_weights)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("rfcn"))
    model = VisualModel(NET, tiny_rfcn_weights(folder))
    image = synthetic_image(folder)[0]
    return model, image


def round_away(x):
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def reference_bins(low, high, scale, k, size):
    """R-FCN's bins along one axis, written out: [start, end) per bin."""
    first = round_away(low) * scale
    length = max((round_away(high) + 1) * scale - first, 0.1)
    step = length / k
    return [(min(max(math.floor(p * step + first), 0), size),
             min(max(math.ceil((p + 1) * step + first), 0), size)) for p in range(k)]


def pinned_vote(model, image, detection):
    target = model.target(image, detection=detection)
    model.forward(model.prepare(image), rois=target.rois)
    return target, ps_vote(model, target.detection.class_index)


@pytest.mark.parametrize("detection", [0, 3])
def test_maps_bins_and_votes_match_a_plain_reference(setup, detection):
    model, image = setup
    target, vote = pinned_vote(model, image, detection)
    c = target.detection.class_index
    features = model.blob_data("rfcn_cls")[0]
    k = 3
    height, width = features.shape[1:]
    x1, y1, x2, y2 = (float(v) for v in target.rois[0, 1:])
    rows = reference_bins(y1, y2, 0.125, k, height)
    cols = reference_bins(x1, x2, 0.125, k, width)
    assert [tuple(r) for r in vote.rows] == rows and [tuple(c_) for c_ in vote.cols] == cols
    for i in range(k):
        for j in range(k):
            channel = (c * k + i) * k + j
            np.testing.assert_array_equal(vote.maps[i, j], features[channel])
            (r0, r1), (c0, c1) = rows[i], cols[j]
            region = features[channel, r0:r1, c0:c1]
            expected = region.mean() if region.size else 0.0
            assert vote.votes[i, j] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # the class score is the average of the votes (the AVE pooling after PSROIPooling)
    assert vote.score == pytest.approx(vote.votes.mean(), rel=1e-5)
    assert vote.layer == "psroipooled_cls_rois"


def test_the_picture_shows_the_detection_maps_and_votes(setup):
    model, image = setup
    picture = rfcn_inside(model, image, detection=1)
    height, width = image.shape[:2]
    assert picture.height >= height and picture.width > 3 * width
    pixels = np.asarray(picture)
    # the k x k maps are drawn in colour, beside the image
    middle = pixels[:, width + 10:picture.width - 10]
    assert (middle.std(axis=2) > 30).sum() > 1000


def test_a_detection_index_out_of_range_lists_the_detections(setup):
    model, image = setup
    count = len(model.detections(image))
    with pytest.raises(DataError, match=rf"detection 999 is out of range: {count} "
                                        rf"detection\(s\) .* 0\.\.{count - 1} \(0: class1"):
        rfcn_inside(model, image, detection=999)


def test_a_class_outside_the_layer_is_an_error(setup):
    model, image = setup
    pinned_vote(model, image, 0)
    with pytest.raises(DataError, match=r"class index 7 is outside the 7 classes of layer "
                                        r"'psroipooled_cls_rois' \(0\.\.6\)"):
        ps_vote(model, 7)


def test_a_net_without_psroi_pooling_is_not_rfcn():
    model = VisualModel(CLASSIFIER)
    model.forward(model.prepare(np.zeros((16, 16, 3), np.uint8)))
    with pytest.raises(DataError, match="no PSROIPooling layer feeds 'fc' .*layers feeding "
                                        "it: fc, relu, conv"):
        ps_vote(model, 0)


@pytest.mark.gpu
def test_on_the_gpu_the_vote_matches_the_cpu(setup, tmp_path):
    from netdef.device import Device
    model, image = setup
    gpu = VisualModel(NET, tiny_rfcn_weights(str(tmp_path)), device=Device("gpu", 0))
    _, cpu_vote = pinned_vote(model, image, 0)
    _, gpu_vote = pinned_vote(gpu, image, 0)
    np.testing.assert_allclose(gpu_vote.votes, cpu_vote.votes, atol=1e-4)
    assert gpu_vote.score == pytest.approx(cpu_vote.score, abs=1e-4)
    assert rfcn_inside(gpu, image, detection=0).size == rfcn_inside(model, image).size
