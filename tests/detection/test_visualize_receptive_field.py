"""Receptive fields: hand-computed values for the tiny R-FCN trunk and
ResNet-50, each layer rule on small nets, a gradient's support as an
independent check, and the errors."""
from pathlib import Path

import numpy as np
import pytest

from detection.visualize.receptive_field import ReceptiveField, receptive_field, \
    receptive_fields
from netdef import Net
from netdef.errors import DataError

PROTOTXT = Path(__file__).resolve().parents[2] / "prototxt"


def square(size, stride, offset):
    return ReceptiveField((size, size), (stride, stride), (offset, offset))


@pytest.fixture(scope="module")
def tiny():
    return Net(str(PROTOTXT / "rfcn_tiny.prototxt"), "TEST")


@pytest.fixture(scope="module")
def resnet50():
    return Net(str(PROTOTXT / "resnet50_deploy.prototxt"), "TEST")


# The tiny trunk by hand (size r, stride j, start o; a k x k window with pad
# p and dilation d adds (d (k - 1)) j to r, multiplies j by its stride and
# moves o by -p j):
#   conv1 3x3 p1       r = 1 + 2 = 3,      j = 1, o = -1
#   pool1 2x2 s2       r = 3 + 1 = 4,      j = 2, o = -1
#   conv2 3x3 p1       r = 4 + 2*2 = 8,    j = 2, o = -1 - 2 = -3
#   pool2 2x2 s2       r = 8 + 2 = 10,     j = 4, o = -3
#   conv3 3x3 p1       r = 10 + 2*4 = 18,  j = 4, o = -3 - 4 = -7
#   pool3 2x2 s2       r = 18 + 4 = 22,    j = 8, o = -7
#   conv4 3x3 p1       r = 22 + 2*8 = 38,  j = 8, o = -7 - 8 = -15
#   conv5 3x3 d2 p2    r = 38 + 4*8 = 70,  j = 8, o = -15 - 2*8 = -31
#   rpn_conv 3x3 p1    r = 70 + 2*8 = 86,  j = 8, o = -31 - 8 = -39
#   conv_new_1, rfcn_cls (1x1 on conv5): conv5's field.
TINY = {"data": square(1, 1, 0), "conv1": square(3, 1, -1), "pool1": square(4, 2, -1),
        "conv2": square(8, 2, -3), "pool2": square(10, 4, -3), "conv3": square(18, 4, -7),
        "pool3": square(22, 8, -7), "conv4": square(38, 8, -15), "conv5": square(70, 8, -31),
        "rpn/output": square(86, 8, -39), "rpn_cls_score": square(86, 8, -39),
        "conv_new_1": square(70, 8, -31), "rfcn_cls": square(70, 8, -31)}


@pytest.mark.parametrize("blob", sorted(TINY))
def test_tiny_rfcn_trunk_by_hand(tiny, blob):
    assert receptive_field(tiny, blob) == TINY[blob]


# ResNet-50 (Caffe's: the stride sits in each stage's first 1x1, branch2a
# and branch1; every bottleneck's 3x3 has pad 1, so it adds 2 j to r and
# moves o by -j; the 1x1 convolutions and the shortcut add nothing):
#   conv1 7x7 s2 p3           r = 7,               j = 2,  o = -3
#   pool1 3x3 s2              r = 7 + 2*2 = 11,    j = 4,  o = -3
#   res2a..c (3 blocks, j 4)  r = 11 + 3*8 = 35,         o = -3 - 3*4 = -15
#   res3a..d (4 blocks, j 8)  r = 35 + 4*16 = 99,        o = -15 - 4*8 = -47
#   res4a..f (6, j 16)        r = 99 + 6*32 = 291,       o = -47 - 6*16 = -143
#   res5a..c (3, j 32)        r = 291 + 3*64 = 483,      o = -143 - 3*32 = -239
#   pool5 7x7 AVE s1          r = 483 + 6*32 = 675,      o = -239
RESNET50 = {"conv1": square(7, 2, -3), "pool1": square(11, 4, -3),
            "res2a": square(19, 4, -7), "res2c": square(35, 4, -15),
            "res3a_branch2a": square(35, 8, -15), "res3a": square(51, 8, -23),
            "res3d": square(99, 8, -47), "res4f": square(291, 16, -143),
            "res5c": square(483, 32, -239), "pool5": square(675, 32, -239)}


@pytest.mark.parametrize("blob", sorted(RESNET50))
def test_resnet50_by_hand(resnet50, blob):
    assert receptive_field(resnet50, blob) == RESNET50[blob]


def test_box_and_center_of_a_unit():
    field = ReceptiveField((70, 38), (8, 4), (-31, -15))
    assert field.box(2, 3) == [-15 + 12, -31 + 16, -15 + 12 + 37, -31 + 16 + 69]
    assert field.center(0, 0) == ((-31 + 38) / 2, (-15 + 22) / 2)


def test_listing_leaves_out_inserted_splits_and_per_roi_blobs(tiny):
    names = list(receptive_fields(tiny))
    assert names[:3] == ["data", "conv1", "pool1"]
    assert not any("split" in name for name in names)
    assert "cls_score" not in names and "rois" not in names


def test_a_visual_model_stands_for_its_net(tiny):
    class Holder:
        net = tiny
    assert receptive_field(Holder(), "conv5") == TINY["conv5"]


def net_from(body, size=(12, 12), force_backward=False):
    head = (f'force_backward: {str(force_backward).lower()}\n'
            'layer { name: "in" type: "Input" top: "data" input_param { shape { '
            f'dim: 1 dim: 1 dim: {size[0]} dim: {size[1]} }} }} }}\n')
    return Net(head + body, "TEST")


def layer(name, kind, bottoms, params=""):
    bottoms = " ".join(f'bottom: "{b}"' for b in bottoms.split())
    return f'layer {{ name: "{name}" type: "{kind}" {bottoms} top: "{name}" {params} }}\n'


def conv(name, bottom, geometry, kind="Convolution"):
    return layer(name, kind, bottom, "convolution_param { num_output: 1 " + geometry +
                 ' weight_filler { type: "constant" value: 1 } }')


def test_rectangular_kernels_strides_and_pads():
    net = net_from(conv("c", "data", "kernel_h: 3 kernel_w: 5 stride_h: 2 stride_w: 3 "
                                     "pad_h: 1 pad_w: 2"))
    assert receptive_field(net, "c") == ReceptiveField((3, 5), (2, 3), (-1, -2))


def test_global_pooling_takes_the_whole_map():
    net = net_from(conv("c", "data", "kernel_size: 3 stride: 2") +
                   layer("g", "Pooling", "c", "pooling_param { pool: AVE global_pooling: true }"))
    # c: r 3, j 2, o 0 on a 5 x 5 map; the 5 x 5 kernel adds 4 * 2.
    assert receptive_field(net, "g") == square(11, 2, 0)


def test_eltwise_and_channel_concat_take_the_union():
    body = (conv("a", "data", "kernel_size: 1") + conv("b", "data", "kernel_size: 5 pad: 2") +
            layer("s", "Eltwise", "a b") + layer("k", "Concat", "a b") +
            layer("r", "ReLU", "s"))
    net = net_from(body)
    assert receptive_field(net, "s") == square(5, 1, -2)
    assert receptive_field(net, "k") == square(5, 1, -2)
    assert receptive_field(net, "r") == square(5, 1, -2)


def test_lrn_within_channel_is_a_window_across_channels_is_not():
    body = (layer("w", "LRN", "data", "lrn_param { local_size: 5 norm_region: WITHIN_CHANNEL }")
            + layer("x", "LRN", "data", "lrn_param { local_size: 5 }"))
    net = net_from(body)
    assert receptive_field(net, "w") == square(5, 1, -2)
    assert receptive_field(net, "x") == square(1, 1, 0)


def test_crop_moves_the_offset_by_its_cells():
    body = (conv("c", "data", "kernel_size: 3 stride: 2") +   # 5 x 5, r 3, j 2, o 0
            conv("small", "c", "kernel_size: 3") +            # 3 x 3: the crop's shape
            layer("cut", "Crop", "c small", "crop_param { axis: 2 offset: 1 offset: 2 }"))
    net = net_from(body)
    assert receptive_field(net, "cut") == ReceptiveField((3, 3), (2, 2), (2, 4))


def test_deconvolution_gives_the_continuous_bounds():
    net = net_from(conv("up", "data", "kernel_size: 4 stride: 2 pad: 1", kind="Deconvolution"))
    # top t reads bottom positions (t + 1 - 3) / 2 .. (t + 1) / 2: size
    # 1 + 3 / 2, stride 1 / 2, offset -1.
    assert receptive_field(net, "up") == ReceptiveField((2.5, 2.5), (0.5, 0.5), (-1, -1))


@pytest.mark.parametrize("body, blob", [
    (conv("c1", "data", "kernel_size: 3 stride: 2 pad: 1") +
     layer("p", "Pooling", "c1", "pooling_param { pool: AVE kernel_size: 3 stride: 2 }") +
     conv("c2", "p", "kernel_size: 3 dilation: 2 pad: 1"), "c2"),
    (conv("c1", "data", "kernel_h: 2 kernel_w: 3 stride: 3 pad_h: 1") +
     conv("c2", "c1", "kernel_size: 2"), "c2"),
    (conv("d", "data", "kernel_size: 3 stride: 1 pad: 1", kind="Deconvolution") +
     conv("c", "d", "kernel_size: 3 stride: 2"), "c"),
], ids=["conv-ave-dilated", "rectangular", "deconv-stride-1"])
def test_the_field_is_the_support_of_a_units_gradient(body, blob):
    """With positive weights and no ReLU, the input pixels a unit's
    gradient reaches are exactly its field (clipped to the image)."""
    net = net_from(body, size=(23, 23), force_backward=True)
    net.forward(data=np.ones((1, 1, 23, 23), np.float32))
    top = net.blobs[blob]
    y, x = top.shape[2] // 2, top.shape[3] // 2
    seed = np.zeros(top.shape, np.float32)
    seed[0, 0, y, x] = 1
    support = np.argwhere(net.backward(**{blob: seed})["data"][0, 0] != 0)
    x1, y1, x2, y2 = receptive_field(net, blob).box(y, x)
    assert support.min(0).tolist() == [max(y1, 0), max(x1, 0)]
    assert support.max(0).tolist() == [min(y2, 22), min(x2, 22)]


def test_unknown_blob_lists_the_blobs_with_a_field(tiny):
    with pytest.raises(DataError, match=r"no blob 'conv9' \(blobs with a receptive field: "
                                        r"data, conv1, pool1, "):
        receptive_field(tiny, "conv9")


@pytest.mark.parametrize("blob, reason", [
    ("cls_score", r"layer 'psroipooled_cls_rois' \(PSROIPooling\) ties no output position"),
    ("rois", r"layer 'proposal' \(Proposal\) ties no output position"),
    ("im_info", r"'im_info' is not an image input"),
])
def test_blob_without_a_field_names_the_reason(tiny, blob, reason):
    with pytest.raises(DataError, match=rf"blob '{blob}' has none: {reason}.*conv5"):
        receptive_field(tiny, blob)


def test_inner_product_has_none(resnet50):
    with pytest.raises(DataError, match=r"'fc1000' \(InnerProduct\) ties no output"):
        receptive_field(resnet50, "prob")


def test_spatial_concat_has_none():
    net = net_from(conv("a", "data", "kernel_size: 1") +
                   layer("k", "Concat", "a a", "concat_param { axis: 2 }"))
    with pytest.raises(DataError, match=r"layer 'k' \(Concat\) ties no output"):
        receptive_field(net, "k")


def test_joining_different_strides_is_named():
    body = (conv("a", "data", "kernel_size: 1 stride: 2") +                 # 6 x 6, j 2
            layer("cut", "Crop", "data a", "crop_param { axis: 2 }") +      # 6 x 6, j 1
            layer("s", "Eltwise", "a cut"))
    net = net_from(body)
    with pytest.raises(DataError, match=r"layer 's' \(Eltwise\) joins bottoms at different "
                                        r"strides \(1, 2\)"):
        receptive_field(net, "s")
