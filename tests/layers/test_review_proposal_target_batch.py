"""Review finding: ProposalTarget accepts RoIs of images other than 0.

The layer handles one image: it appends the gt boxes with batch index 0 and
matches every RoI against them, whatever the RoI's batch index. py-R-FCN's
and py-faster-rcnn's rpn/proposal_target_layer.py stop there
(``assert np.all(all_rois[:, 0] == 0), 'Only single item batches are
supported'``). Here RoIs of image 1 are labelled with image 0's boxes and
come out as foreground with regression targets, silently. Expected: a
DataError naming the layer, the RoI blob and the batch index found.
"""
import numpy as np
import pytest

from netdef.errors import DataError
from netdef.gradcheck import build_layer, setup_layer
from tests.layers.test_proposal_target import GT, ROIS, spec


def test_rois_of_another_image_are_refused():
    rois = ROIS.copy()
    rois[:150, 0] = 1                      # half of the RoIs claim image 1
    layer = build_layer(spec("num_classes: 21 batch_size: -1"), dtype=np.float64, seed=0)
    bottoms, tops = setup_layer(layer, [rois, GT])
    with pytest.raises(DataError, match=r"layer 'roi-data'.*rpn_rois.*batch index"):
        layer.forward(bottoms, tops)
