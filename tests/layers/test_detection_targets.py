"""The target creators as plain functions: box arrays in, targets out, the
same numbers as the layers that call them (layers/detection_targets.py)."""
import numpy as np
import pytest

from layers.anchor_target import ANCHOR_SAMPLING_SALT, PROPOSAL_SAMPLING_SALT
from layers.boxes import generate_anchors, shifted_anchors
from layers.detection_targets import (LABEL_BG, LABEL_FG, LABEL_IGNORE, AnchorTargetCreator,
                                      ProposalTargetCreator)
from netdef.errors import DataError
from tests.layers import test_anchor_target as at
from tests.layers import test_proposal_target as pt


def test_proposal_targets_equal_the_layer():
    layer, _, tops = pt.run(pt.spec("num_classes: 21 bbox_normalize_targets: true"), seed=4)
    creator = ProposalTargetCreator(21, normalize=True)
    rng = layer.keyed_rng(PROPOSAL_SAMPLING_SALT, draw=0)   # the pass's draw, as the layer's
    rois, labels, targets, inside, outside = creator(pt.ROIS, pt.GT, rng)
    np.testing.assert_array_equal(rois, tops[0])
    np.testing.assert_array_equal(labels, tops[1].reshape(-1))
    for got, top in zip((targets, inside, outside), tops[2:]):
        np.testing.assert_array_equal(got, top)
    assert targets.shape == (rois.shape[0], 84)


def test_anchor_targets_equal_the_layer():
    layer, tops = at.run(at.spec(), at.inputs(), seed=2)
    anchors = shifted_anchors(generate_anchors(16, (0.5, 1, 2), (8, 16, 32)), 16, at.H, at.W,
                              np)
    labels, targets, inside, outside = AnchorTargetCreator()(
        anchors, at.GT[:, :4], at.IM_INFO[0, :2], layer.keyed_rng(ANCHOR_SAMPLING_SALT, draw=0))
    assert set(np.unique(labels)) <= {LABEL_FG, LABEL_BG, LABEL_IGNORE}
    layout = labels.reshape(at.H, at.W, at.A).transpose(2, 0, 1).reshape(1, 1, -1, at.W)
    np.testing.assert_array_equal(layout, tops[0])
    for got, top in zip((targets, inside, outside), tops[1:]):
        np.testing.assert_array_equal(
            got.reshape(at.H, at.W, 4 * at.A).transpose(2, 0, 1)[None], top)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_classes=1), "needs num_classes >= 2"),
    (dict(num_classes=3, batch_size=0), "batch_size must be positive or -1"),
    (dict(num_classes=3, fg_fraction=1.5), r"fg_fraction must lie in \[0, 1\]"),
    (dict(num_classes=3, stds=(1, 1)), "need 4 values each"),
])
def test_proposal_settings_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProposalTargetCreator(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size must be positive"),
    (dict(positive_weight=2.0), "positive_weight must be negative"),
])
def test_anchor_settings_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AnchorTargetCreator(**kwargs)


def test_a_bad_class_names_its_source():
    gt = pt.GT.copy()
    gt[0, 4] = 30
    with pytest.raises(DataError, match=r"^image 7: gt_boxes has class 30, expected an integer"):
        ProposalTargetCreator(21, batch_size=-1)(pt.ROIS, gt, np.random.default_rng(0),
                                                 source="image 7: gt_boxes")
