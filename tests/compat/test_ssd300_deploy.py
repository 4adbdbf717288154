"""Caffe-SSD's VGG16 SSD300 VOC0712 deploy net (rebuilt from its facts in
tests/compat/ssd300_deploy.py) builds unchanged and ``netdef.inspect``
reports Caffe-SSD's blob shapes; a narrow stand-in with the same head runs
forward end to end into DetectionOutput."""
import re

import numpy as np
import pytest

from netdef.inspect import main as inspect_main
from netdef.net import Net
from tests.compat.ssd300_deploy import (ASPECT_RATIOS, FEATURE_SIZES, SOURCES, deploy_text,
                                        num_priors)

# Caffe-SSD's shapes for the 21 VOC classes (8732 priors).
EXPECTED = {
    "conv4_3_norm": (1, 512, 38, 38), "fc7": (1, 1024, 19, 19), "conv6_2": (1, 512, 10, 10),
    "conv7_2": (1, 256, 5, 5), "conv8_2": (1, 256, 3, 3), "conv9_2": (1, 256, 1, 1),
    "conv4_3_norm_mbox_loc_perm": (1, 38, 38, 16), "conv4_3_norm_mbox_conf_flat": (1, 121296),
    "fc7_mbox_priorbox": (1, 2, 8664), "conv9_2_mbox_priorbox": (1, 2, 16),
    "mbox_loc": (1, 34928), "mbox_conf": (1, 183372), "mbox_priorbox": (1, 2, 34928),
    "mbox_conf_reshape": (1, 8732, 21), "mbox_conf_softmax": (1, 8732, 21),
    "mbox_conf_flatten": (1, 183372), "detection_out": (1, 1, 1, 7),
}


@pytest.fixture(scope="module")
def deploy_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ssd") / "deploy.prototxt"
    path.write_text(deploy_text())
    return path


def test_inspect_reports_caffe_ssd_shapes(deploy_file, capsys):
    assert inspect_main([str(deploy_file)]) == 0
    report = capsys.readouterr().out
    for blob, shape in EXPECTED.items():
        dims = "x".join(str(d) for d in shape)
        assert re.search(rf"-> {re.escape(blob)} {dims}\b", report), (blob, dims)
    # VGG16-SSD300's parameter count (26.3M, as Caffe-SSD's model has).
    assert "total: 26,285,486 parameters" in report


def test_net_blob_shapes(deploy_file):
    net = Net(str(deploy_file), "TEST")
    for blob, shape in EXPECTED.items():
        assert net.blobs[blob].shape == shape, blob
    total = sum(size * size * num_priors(r) for size, r in zip(FEATURE_SIZES, ASPECT_RATIOS))
    assert total == 8732
    for source, size, ratios in zip(SOURCES, FEATURE_SIZES, ASPECT_RATIOS):
        assert net.blobs[f"{source}_mbox_priorbox"].shape == (1, 2, size * size * num_priors(ratios) * 4)
    assert net.outputs == ["detection_out"]
    # The Normalize scale starts at 20 per channel, as the file's filler says.
    np.testing.assert_array_equal(net.params["conv4_3_norm"][0].data, np.full(512, 20.0))


def test_narrow_stand_in_runs_into_detection_output():
    net = Net(deploy_text(narrow=16), "TEST", seed=1)
    image = np.random.default_rng(0).uniform(-100, 100, (1, 3, 300, 300)).astype(np.float32)
    out = net.forward(data=image)["detection_out"]
    assert net.blobs["mbox_priorbox"].shape == (1, 2, 34928)
    assert out.shape[:2] == (1, 1) and out.shape[3] == 7 and 1 <= out.shape[2] <= 200
    rows = out[0, 0]
    assert np.all(rows[:, 0] == 0)
    labels, scores = rows[:, 1], rows[:, 2]
    assert np.all((labels >= 1) & (labels <= 20))      # background 0 never reported
    assert np.all(scores > np.float32(0.01))
    assert np.all(np.diff(labels) >= 0)                 # by label, then by score
    for label in np.unique(labels):
        assert np.all(np.diff(scores[labels == label]) <= 0)
