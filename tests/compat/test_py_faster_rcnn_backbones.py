"""py-faster-rcnn's ZF and VGG_CNN_M_1024 nets (models/pascal_voc/{ZF,
VGG_CNN_M_1024}/faster_rcnn_end2end/*.prototxt, faster_rcnn_alt_opt/*.pt),
written by prototxt.faster_rcnn --backbone, build with the shapes
py-faster-rcnn gives them, and each is recognised with its yml config.
(Training them through solver.train is run by hand: too slow for the suite,
see the README text of this work.)

Facts checked (ZF's end-to-end train.prototxt): conv1 96 7x7/2 pad 3, LRN
WITHIN_CHANNEL (local_size 3, alpha 5e-5, beta 0.75), pool 3x3/2 pad 1,
conv2 256 5x5/2 pad 2, conv3 / conv4 384, conv5 256, rpn_conv/3x3 256,
roi_pool_conv5 6x6 at 1/16, fc6 / fc7 4096, every layer trained;
VGG_CNN_M_1024: conv1 96 7x7/2 frozen, fc7 1024. ZF's drop6 / drop7 say
``scale_train: false`` (its weights expect unscaled dropout in training).
"""
import math

import pytest

from netdef import Net
from netdef.schema import read_net
from solver.defaults import reference_config
from tests.compat.reference_nets import FASTER_RCNN_BACKBONE_NETS, net_param

ZF, VGG_M = FASTER_RCNN_BACKBONE_NETS["zf"], FASTER_RCNN_BACKBONE_NETS["vgg_cnn_m_1024"]
SMALL = (128, 160)
ROIS = 16
A = 9
POOL = {"zf": "roi_pool_conv5", "vgg_cnn_m_1024": "pool5"}      # the RoI pooling top
FC7 = {"zf": 4096, "vgg_cnn_m_1024": 1024}
CONV5 = {"zf": 256, "vgg_cnn_m_1024": 512}


def by_name(nets):
    return pytest.mark.parametrize("reference", nets, ids=[r.name for r in nets])


def _pool(size, pad):
    """Caffe's pooling 3x3 / 2: ceil, a window starting in the padding dropped."""
    out = math.ceil((size + 2 * pad - 3) / 2) + 1
    return out - 1 if (out - 1) * 2 >= size + pad else out


def conv5_size(backbone, size):
    """conv5's height or width: conv1 7x7/2, pool1, conv2 5x5/2, pool2 (ZF
    pads conv1 by 3, conv2 by 2 and the poolings by 1; VGG-M pads conv2 by 1)."""
    if backbone == "zf":
        return _pool((_pool((size + 6 - 7) // 2 + 1, 1) + 4 - 5) // 2 + 1, 1)
    return _pool((_pool((size - 7) // 2 + 1, 0) + 2 - 5) // 2 + 1, 0)


def backbone_of(reference):
    return dict(reference.options)["backbone"]


def test_the_zf_facts():
    layers = {lp.name: lp for lp in read_net(ZF[0].text()).layer}
    conv1, conv2 = layers["conv1"].convolution_param, layers["conv2"].convolution_param
    assert (conv1.num_output, list(conv1.kernel_size), list(conv1.stride), list(conv1.pad)) == \
        (96, [7], [2], [3])
    assert (conv2.num_output, list(conv2.kernel_size), list(conv2.stride), list(conv2.pad)) == \
        (256, [5], [2], [2])
    lrn = layers["norm1"].lrn_param
    assert (lrn.local_size, lrn.beta, lrn.norm_region) == (3, 0.75, 1)   # WITHIN_CHANNEL
    assert lrn.alpha == pytest.approx(5e-5)
    assert layers["pool1"].pooling_param.pad == 1
    assert [layers[n].convolution_param.num_output for n in ("conv3", "conv4", "conv5")] == \
        [384, 384, 256]
    assert layers["rpn_conv/3x3"].convolution_param.num_output == 256
    pool = layers["roi_pool_conv5"].roi_pooling_param
    assert (pool.pooled_h, pool.pooled_w, pool.spatial_scale) == (6, 6, 0.0625)
    assert [p.lr_mult for p in layers["conv1"].param] == [1, 2]
    vgg_m = {lp.name: lp for lp in read_net(VGG_M[0].text()).layer}
    assert [p.lr_mult for p in vgg_m["conv1"].param] == [0, 0]
    assert vgg_m["fc7"].inner_product_param.num_output == 1024
    assert [layers[n].dropout_param.scale_train for n in ("drop6", "drop7")] == [False, False]
    assert vgg_m["drop6"].dropout_param.scale_train


@pytest.mark.parametrize("backbone, size", [("zf", (39, 64)), ("vgg_cnn_m_1024", (36, 61))])
def test_conv5_at_600x1000(backbone, size):
    """The test net at the reference image: conv5's map and the RPN's."""
    reference = FASTER_RCNN_BACKBONE_NETS[backbone][1]
    assert tuple(conv5_size(backbone, s) for s in (600, 1000)) == size
    net = Net(net_param(reference, (600, 1000)), "TEST")
    assert net.blobs["conv5"].shape == (1, CONV5[backbone]) + size
    assert net.blobs["rpn_cls_score"].shape == (1, 2 * A) + size


# Every ZF file; of VGG-M (whose fc6 takes 18432 inputs: slow to build), the
# end-to-end train net (its test net is built at 600 x 1000 above).
BUILT = list(ZF) + [VGG_M[0]]


@by_name(BUILT)
def test_builds_with_reference_shapes(reference):
    backbone = backbone_of(reference)
    name = dict(reference.options)["net"]
    net = Net(net_param(reference, SMALL, rois=ROIS), reference.phase)
    shapes = {n: b.shape for n, b in net.blobs.items()}
    h, w = (conv5_size(backbone, s) for s in SMALL)
    assert shapes["conv5"] == (1, CONV5[backbone], h, w)
    if "fast_rcnn_train" not in name:
        assert shapes["rpn/output"] == (1, 256, h, w)
        assert shapes["rpn_cls_score"] == (1, 2 * A, h, w)
        assert shapes["rpn_bbox_pred"] == (1, 4 * A, h, w)
    if name.endswith("rpn_train"):
        assert shapes["rpn_labels"] == (1, 1, A * h, w)
        return
    if name == "rpn_test":
        count = shapes["rois"][0]
        assert 0 < count <= 300 and shapes["scores"] == (count, 1)
        return
    rois = shapes["rois"][0]
    if name == "stage1_fast_rcnn_train" or name == "stage2_fast_rcnn_train":
        assert rois == ROIS
    expected = {POOL[backbone]: (rois, CONV5[backbone], 6, 6), "fc7": (rois, FC7[backbone]),
                "cls_score": (rois, 21), "bbox_pred": (rois, 84)}
    assert {n: shapes[n] for n in expected} == expected


@by_name(ZF + VGG_M)
def test_recognised_with_py_faster_rcnn_yml(reference):
    config = reference_config(read_net(reference.text()))
    name = dict(reference.options)["net"]
    end_to_end = name.startswith("end2end") or name == "faster_rcnn_test"
    assert config.project == "py-faster-rcnn"
    assert config.file == ("faster_rcnn_end2end.yml" if end_to_end else "faster_rcnn_alt_opt.yml")
