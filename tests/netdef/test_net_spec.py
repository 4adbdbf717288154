"""NetSpec, pycaffe's way of writing nets in Python.

The first test is a user's script, written out by hand, that rebuilds the
TRAIN phase of prototxt/rfcn_tiny.prototxt; it must give the same layers as
the file read and filtered the way the Net does. The others check each
argument rule and each error.
"""
from pathlib import Path

import pytest

from netdef import caffe_pb2
from netdef.errors import NetDefinitionError
from netdef.graph import filter_net
from netdef.net import Net
from netdef.net_spec import NetSpec, layers as L, params as P, to_proto
from netdef.schema import parse_text, read_net

PROTOTXT = Path(__file__).resolve().parents[2] / "prototxt"

TRAIN_ONLY = dict(phase=caffe_pb2.TRAIN)
LEARNED = [dict(lr_mult=1), dict(lr_mult=2)]
BIAS_UNDECAYED = [dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)]
ANCHORS = dict(feat_stride=8, base_size=8, scales=[3, 6, 12])


def trunk_conv(bottom, num_output, **extra):
    """A trunk convolution of the tiny net: 3x3, MSRA weights."""
    return L.Convolution(bottom, param=BIAS_UNDECAYED, num_output=num_output, kernel_size=3,
                         weight_filler=dict(type="msra"),
                         bias_filler=dict(type="constant", value=0), **extra)


def head_conv(bottom, num_output, **extra):
    """A 1x1 (or given) head convolution, Gaussian 0.01 weights."""
    extra.setdefault("kernel_size", 1)
    return L.Convolution(bottom, param=LEARNED, num_output=num_output, pad=extra.pop("pad", 0),
                         weight_filler=dict(type="gaussian", std=0.01),
                         bias_filler=dict(type="constant", value=0), **extra)


def tiny_rfcn_trunk(n):
    n.data, n.im_info, n.gt_boxes = L.RoIData(
        name="input-data", ntop=3, include=TRAIN_ONLY,
        roi_data_param=dict(num_classes=7, scales=192, max_size=256))
    bottom = n.data
    for i, width in enumerate((16, 32, 64, 64), start=1):
        n[f"conv{i}"] = trunk_conv(bottom, width, pad=1)
        n[f"conv{i}_relu"] = L.ReLU(n[f"conv{i}"], in_place=True)
        if i < 4:
            n[f"pool{i}"] = L.Pooling(n[f"conv{i}"], pool=P.Pooling.MAX, kernel_size=2, stride=2)
            bottom = n[f"pool{i}"]
    n.conv5 = trunk_conv(n.conv4, 64, pad=2, dilation=2)
    n.conv5_relu = L.ReLU(n.conv5, in_place=True)


def tiny_rfcn_rpn(n):
    n["rpn/output"] = head_conv(n.conv5, 64, name="rpn_conv/3x3", kernel_size=3, pad=1, stride=1)
    n.rpn_relu = L.ReLU(n["rpn/output"], in_place=True, name="rpn_relu/3x3")
    n.rpn_cls_score = head_conv(n.rpn_relu, 18, stride=1)
    n.rpn_bbox_pred = head_conv(n.rpn_relu, 36, stride=1)
    n.rpn_cls_score_reshape = L.Reshape(n.rpn_cls_score, shape=dict(dim=[0, 2, -1, 0]))
    (n.rpn_labels, n.rpn_bbox_targets, n.rpn_bbox_inside_weights,
     n.rpn_bbox_outside_weights) = L.AnchorTarget(
        n.rpn_cls_score, n.gt_boxes, n.im_info, n.data, name="rpn-data", ntop=4,
        include=TRAIN_ONLY, **ANCHORS)
    n.rpn_cls_loss = L.SoftmaxWithLoss(
        n.rpn_cls_score_reshape, n.rpn_labels, name="rpn_loss_cls", include=TRAIN_ONLY,
        loss_weight=1, propagate_down=[True, False],
        loss_param=dict(ignore_label=-1, normalize=True))
    n.rpn_loss_bbox = L.SmoothL1Loss(
        n.rpn_bbox_pred, n.rpn_bbox_targets, n.rpn_bbox_inside_weights,
        n.rpn_bbox_outside_weights, include=TRAIN_ONLY, loss_weight=1, sigma=3)
    n.rpn_cls_prob = L.Softmax(n.rpn_cls_score_reshape)
    n.rpn_cls_prob_reshape = L.Reshape(n.rpn_cls_prob, shape=dict(dim=[0, 18, -1, 0]))
    n.rpn_rois = L.Proposal(n.rpn_cls_prob_reshape, n.rpn_bbox_pred, n.im_info, name="proposal",
                            include=TRAIN_ONLY, train_pre_nms_top_n=6000,
                            train_post_nms_top_n=300, **ANCHORS)
    n.rois, n.labels, n.bbox_targets, n.bbox_inside_weights, n.bbox_outside_weights = \
        L.ProposalTarget(n.rpn_rois, n.gt_boxes, name="roi-data", ntop=5, include=TRAIN_ONLY,
                         num_classes=7, batch_size=128, bg_thresh_lo=0.1, class_agnostic=True)


def tiny_rfcn_head(n):
    n.conv_new_1 = head_conv(n.conv5, 128)
    n.conv_new_1_relu = L.ReLU(n.conv_new_1, in_place=True)
    n.rfcn_cls = head_conv(n.conv_new_1, 63)
    n.rfcn_bbox = head_conv(n.conv_new_1, 72)
    n.psroipooled_cls_rois = L.PSROIPooling(n.rfcn_cls, n.rois, spatial_scale=0.125,
                                            output_dim=7, group_size=3)
    n.cls_score = L.Pooling(n.psroipooled_cls_rois, name="ave_cls_score_rois",
                            pool=P.Pooling.AVE, kernel_size=3, stride=3)
    n.psroipooled_loc_rois = L.PSROIPooling(n.rfcn_bbox, n.rois, spatial_scale=0.125,
                                            output_dim=8, group_size=3)
    n.bbox_pred = L.Pooling(n.psroipooled_loc_rois, name="ave_bbox_pred_rois",
                            include=TRAIN_ONLY, pool="AVE", kernel_size=3, stride=3)
    n.loss_cls = L.SoftmaxWithLoss(n.cls_score, n.labels, name="loss", include=TRAIN_ONLY,
                                   loss_weight=1, propagate_down=[True, False])
    n.accuracy = L.Accuracy(n.cls_score, n.labels, include=TRAIN_ONLY,
                            propagate_down=[False, False])
    n.loss_bbox = L.SmoothL1LossOHEM(
        n.bbox_pred, n.bbox_targets, n.bbox_inside_weights, include=dict(phase="TRAIN"),
        loss_weight=1, propagate_down=[True, False, False],
        loss_param=dict(normalization=P.Loss.PRE_FIXED, pre_fixed_normalizer=128))
    n.silence = L.Silence(n.bbox_outside_weights, ntop=0, include=TRAIN_ONLY)


def tiny_rfcn_train():
    n = NetSpec()
    tiny_rfcn_trunk(n)
    tiny_rfcn_rpn(n)
    tiny_rfcn_head(n)
    return n


def test_rebuilds_the_tiny_rfcn_train_net_layer_for_layer():
    expected, _ = filter_net(read_net(PROTOTXT / "rfcn_tiny.prototxt"), "TRAIN")
    built = tiny_rfcn_train().to_proto(name="R-FCN tiny")
    assert built.name == expected.name
    assert [layer.name for layer in built.layer] == [layer.name for layer in expected.layer]
    for ours, theirs in zip(built.layer, expected.layer):
        assert ours == theirs, f"layer '{theirs.name}':\nNetSpec:\n{ours}\nfile:\n{theirs}"
    assert built == expected


def test_the_prototxt_text_reads_back_and_builds():
    text = tiny_rfcn_train().to_prototxt(name="R-FCN tiny")
    assert text.startswith('name: "R-FCN tiny"\nlayer {\n  name: "input-data"\n')
    assert parse_text(text, caffe_pb2.NetParameter) == tiny_rfcn_train().to_proto("R-FCN tiny")
    net = Net(text, "TRAIN")
    assert net.blobs["cls_score"].shape == (128, 7, 1, 1)


# -- the argument rules ---------------------------------------------------------------

def small_net():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    return n


def test_keywords_go_to_the_types_message_else_to_the_layer():
    n = small_net()
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3, loss_weight=0.5, name="c",
                           param=dict(lr_mult=3), transform_param=dict(scale=2))
    layer = n.to_proto().layer[1]
    assert layer.convolution_param.num_output == 4
    assert list(layer.convolution_param.kernel_size) == [3]      # one value for a repeated field
    assert list(layer.loss_weight) == [0.5] and layer.name == "c"
    assert [p.lr_mult for p in layer.param] == [3]               # a dict for a repeated message
    assert layer.transform_param.scale == 2


def test_types_that_share_a_message_and_types_without_one():
    n = small_net()
    n.up = L.Deconvolution(n.data, num_output=2, kernel_size=2, stride=2)
    n.prob = L.SoftmaxWithLoss(n.up, n.data, axis=1)
    n.flat = L.Flatten(n.data, axis=2)                  # FlattenParameter
    n.drop = L.Silence(n.data, ntop=0, propagate_down=False)
    up, loss, flat, silence = n.to_proto().layer[1:]
    assert up.convolution_param.stride == [2] and loss.softmax_param.axis == 1
    assert flat.flatten_param.axis == 2 and list(silence.propagate_down) == [False]


def test_lists_dicts_enum_names_numbers_and_messages():
    n = small_net()
    n.pool = L.Pooling(n.data, pool="STOCHASTIC", kernel_h=2, kernel_w=3)
    n.pool2 = L.Pooling(n.data, pool=P.Pooling.AVE, kernel_size=2)
    filler = caffe_pb2.FillerParameter(type="gaussian", std=0.5)
    n.ip = L.InnerProduct(n.data, num_output=2, weight_filler=filler,
                          include=[dict(phase="TEST"), dict(stage=["a", "b"])])
    n.bn = L.BatchNorm(n.data, param=[dict(lr_mult=0)] * 3, use_global_stats=True)
    pool, pool2, ip, bn = n.to_proto().layer[1:]
    assert pool.pooling_param.pool == caffe_pb2.PoolingParameter.STOCHASTIC
    assert (pool.pooling_param.kernel_h, pool.pooling_param.kernel_w) == (2, 3)
    assert pool2.pooling_param.pool == P.Pooling.AVE == caffe_pb2.PoolingParameter.AVE
    assert ip.inner_product_param.weight_filler == filler
    assert ip.include[0].phase == caffe_pb2.TEST and list(ip.include[1].stage) == ["a", "b"]
    assert len(bn.param) == 3 and bn.batch_norm_param.use_global_stats


def test_an_empty_dict_still_writes_the_message():
    n = small_net()
    n.t = L.Dropout(n.data, transform_param={})
    assert n.to_proto().layer[1].HasField("transform_param")


def test_ntop_in_place_and_layer_names():
    n = small_net()
    n.a, n.b = L.Slice(n.data, ntop=2, axis=1, slice_point=1)
    n.a_relu = L.ReLU(n.a, in_place=True)
    n.silence = L.Silence(n.b, ntop=0)
    net = n.to_proto()
    slice_, relu, silence = net.layer[1:]
    assert slice_.name == "a" and list(slice_.top) == ["a", "b"]  # named after its first top
    assert relu.name == "a_relu" and list(relu.bottom) == list(relu.top) == ["a"]
    assert silence.name == "silence" and not silence.top


def test_unnamed_tops_and_layers_get_type_and_count():
    n = small_net()
    n.Convolution1 = L.ReLU(n.data)     # an assigned name the counter must skip
    n.out = L.Eltwise(L.Convolution(n.data, num_output=1), L.Convolution(n.data, num_output=1))
    L.Silence(n.out, ntop=0)            # not assigned, not needed: not written
    net = n.to_proto()
    assert [(l.name, list(l.top)) for l in net.layer[2:]] == [
        ("Convolution2", ["Convolution2"]), ("Convolution3", ["Convolution3"]),
        ("out", ["out"])]
    assert list(net.layer[-1].bottom) == ["Convolution2", "Convolution3"]
    silence = to_proto(L.Silence(n.out, ntop=0)).layer[-1]
    assert silence.name == "Silence1" and silence.type == "Silence"


def test_layers_come_after_the_layers_they_read():
    n = small_net()
    n.c = L.ReLU(L.ReLU(n.data))        # assigned first: its unnamed input is written first
    n.d = L.ReLU(n.c)
    assert [l.name for l in n.to_proto().layer] == ["data", "ReLU1", "c", "d"]


def test_a_deep_chain_needs_no_recursion():
    n = small_net()
    top = n.data
    for _ in range(3000):
        top = L.ReLU(top)
    n.out = top
    assert len(n.to_proto().layer) == 3001


def test_item_access_keys_and_vals():
    n = small_net()
    n["rpn/output"] = L.ReLU(n.data)
    assert n["rpn/output"] is n.vals()[1] and n.keys() == ["data", "rpn/output"]
    assert n.to_proto().layer[1].top == ["rpn/output"]


# -- errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("make,message", [
    (lambda d: L.Convolution(d, kernal_size=3),
     "L.Convolution: unknown keyword 'kernal_size': not a field of ConvolutionParameter "
     "(convolution_param) or LayerParameter. Did you mean 'kernel_size'"),
    (lambda d: L.Silence(d, axis=1),
     "L.Silence: unknown keyword 'axis': not a field of LayerParameter (type Silence has "
     "no parameter message of its own)."),
    (lambda d: L.ReLU(d, foo_param=dict(a=1)), "L.ReLU: unknown keyword 'foo_param'"),
    (lambda d: L.Convolution(d, weight_filler=dict(tpye="xavier")),
     "L.Convolution: convolution_param.weight_filler: FillerParameter has no field 'tpye'. "
     "Did you mean 'type'?"),
    (lambda d: L.Pooling(d, pool="MAXIMUM"),
     "L.Pooling: pooling_param.pool: 'MAXIMUM' is not a PoolMethod value (one of MAX, AVE, "
     "STOCHASTIC)."),
    (lambda d: L.Pooling(d, pool=7), "pooling_param.pool: expected a PoolMethod name or number"),
    (lambda d: L.Convolution(d, num_output=1.5),
     "L.Convolution: convolution_param.num_output: expected an integer, found 1.5"),
    (lambda d: L.Convolution(d, kernel_size=[3, "x"]),
     "convolution_param.kernel_size: expected an integer for each item, found 'x'"),
    (lambda d: L.Convolution(d, num_output=[1, 2]),
     "convolution_param.num_output: expected an integer, found list [1, 2]"),
    (lambda d: L.Convolution(d, weight_filler=3),
     "convolution_param.weight_filler: expected a dict of FillerParameter fields, found int 3"),
    (lambda d: L.Convolution(d, weight_filler=caffe_pb2.ParamSpec()),
     "convolution_param.weight_filler: expected a FillerParameter, found a ParamSpec"),
    (lambda d: L.ReLU(d, top="x"), "L.ReLU: 'top' is set by the NetSpec"),
    (lambda d: L.ReLU(d, ntop=-1), "L.ReLU: ntop must be an integer >= 0, found -1"),
    (lambda d: L.Eltwise(d, d, in_place=True),
     "L.Eltwise: in_place=True writes each top over its bottom, so it needs as many tops as "
     "bottoms; found 2 bottom(s) and ntop=1"),
])
def test_bad_keywords_are_named_with_the_layer_type(make, message):
    with pytest.raises(NetDefinitionError) as info:
        make(small_net().data)
    assert message in str(info.value)


def test_bottoms_must_be_tops():
    with pytest.raises(TypeError, match="L.ReLU: bottom 0 is str 'data'; bottoms are tops"):
        L.ReLU("data")


def test_assigning_several_tops_to_one_name():
    n = small_net()
    with pytest.raises(TypeError, match=r"'x' is given 2 tops; assign them to as many names "
                                        r"\(n.a, n.b = L.Slice\(..., ntop=2\)\)"):
        n.x = L.Slice(n.data, ntop=2)
    with pytest.raises(TypeError, match="'y' must be a top made by a layer"):
        n.y = "data"


def test_unknown_tops_and_constants():
    n = small_net()
    with pytest.raises(AttributeError, match="NetSpec has no top 'dat'. Did you mean 'data'"):
        n.dat
    with pytest.raises(KeyError, match="NetSpec has no top 'dta'"):
        n["dta"]
    with pytest.raises(AttributeError, match="PoolingParameter has no constant 'MAXX'. "
                                             "Did you mean 'MAX'"):
        P.Pooling.MAXX
    with pytest.raises(AttributeError, match="caffe_pb2 has no message PolingParameter. "
                                             "Did you mean 'Pooling'"):
        P.Poling
