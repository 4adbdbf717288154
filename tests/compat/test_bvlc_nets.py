"""BVLC's AlexNet and GoogLeNet, SqueezeNet v1.1, and py-faster-rcnn's ZF and
VGG_CNN_M_1024 test nets build as shipped and give Caffe's blob shapes."""
import numpy as np
import pytest

from netdef import Net
from netdef.inspect import main as inspect_main
from tests.compat.bvlc_nets import BUILDERS, CAFFE_SHAPES


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builds_with_caffes_blob_shapes(name):
    net = Net(BUILDERS[name](), "TEST")
    for blob, expected in CAFFE_SHAPES[name].items():
        found = net.blobs[blob].shape
        # None: the RoI count, which the proposal layer sets per image
        assert len(found) == len(expected), (blob, found, expected)
        assert all(e is None or f == e for f, e in zip(found, expected)), (blob, found, expected)


@pytest.mark.parametrize("name", ["alexnet", "squeezenet_v1_1"])
def test_runs_forward_to_a_distribution(name):
    net = Net(BUILDERS[name](), "TEST")
    data = np.random.default_rng(0).standard_normal(net.blobs["data"].shape).astype(np.float32)
    prob = net.forward(data=data)["prob"]
    np.testing.assert_allclose(prob.reshape(prob.shape[0], -1).sum(axis=1), 1.0, rtol=1e-5)


def test_inspect_reports_the_classic_nets(tmp_path, capsys):
    path = tmp_path / "alexnet.prototxt"
    path.write_text(BUILDERS["alexnet"]())
    assert inspect_main([str(path)]) == 0
    report = capsys.readouterr().out
    assert "norm1                        LRN                conv1 10x96x55x55 -> norm1 10x96x55x55" in report
