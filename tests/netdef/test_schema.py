"""Schema field numbers, prototxt parsing, upgrades and error messages."""
import filecmp
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

from netdef import caffe_pb2
from netdef.errors import ParseError
from netdef.schema import (V1_LAYER_TYPES, format_net, parse_text, read_net,
                           read_solver, upgrade_net, upgrade_solver)

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
RESNET50 = FIXTURES / "resnet50_deploy_excerpt.prototxt"


def number(message, field):
    return message.DESCRIPTOR.fields_by_name[field].number


# ---------------------------------------------------------------------------
# Field numbers

@pytest.mark.parametrize("field, expected", [
    ("roi_pooling_param", 147),
    ("smooth_l1_loss_param", 148),
    ("psroi_pooling_param", 149),
    ("box_annotator_ohem_param", 150),
])
def test_detection_params_take_the_py_rfcn_fork_numbers(field, expected):
    assert number(caffe_pb2.LayerParameter, field) == expected


def test_detection_param_messages_match_the_fork():
    roi = caffe_pb2.ROIPoolingParameter()
    assert [(f.name, f.number) for f in roi.DESCRIPTOR.fields] == [
        ("pooled_h", 1), ("pooled_w", 2), ("spatial_scale", 3)]
    assert (roi.pooled_h, roi.pooled_w, roi.spatial_scale) == (0, 0, 1)
    ps = caffe_pb2.PSROIPoolingParameter()
    assert [(f.name, f.number) for f in ps.DESCRIPTOR.fields] == [
        ("spatial_scale", 1), ("output_dim", 2), ("group_size", 3)]
    assert caffe_pb2.SmoothL1LossParameter().sigma == 1
    assert number(caffe_pb2.SmoothL1LossParameter, "sigma") == 1
    ohem = caffe_pb2.BoxAnnotatorOHEMParameter()
    assert (number(ohem, "roi_per_img"), number(ohem, "ignore_label")) == (1, 2)
    assert ohem.ignore_label == -1
    loss = caffe_pb2.LossParameter
    assert loss.PRE_FIXED == 3 and loss.NONE == 4
    assert number(loss, "pre_fixed_normalizer") == 4
    assert loss().pre_fixed_normalizer == 1
    assert number(caffe_pb2.DropoutParameter, "scale_train") == 2


@pytest.mark.parametrize("message, field, expected", [
    (caffe_pb2.NetParameter, "name", 1),
    (caffe_pb2.NetParameter, "layers", 2),
    (caffe_pb2.NetParameter, "input", 3),
    (caffe_pb2.NetParameter, "input_dim", 4),
    (caffe_pb2.NetParameter, "force_backward", 5),
    (caffe_pb2.NetParameter, "state", 6),
    (caffe_pb2.NetParameter, "debug_info", 7),
    (caffe_pb2.NetParameter, "input_shape", 8),
    (caffe_pb2.NetParameter, "layer", 100),
    (caffe_pb2.BlobProto, "num", 1),
    (caffe_pb2.BlobProto, "width", 4),
    (caffe_pb2.BlobProto, "data", 5),
    (caffe_pb2.BlobProto, "diff", 6),
    (caffe_pb2.BlobProto, "shape", 7),
    (caffe_pb2.BlobProto, "double_data", 8),
    (caffe_pb2.BlobProto, "double_diff", 9),
    (caffe_pb2.LayerParameter, "blobs", 7),
    (caffe_pb2.LayerParameter, "phase", 10),
    (caffe_pb2.LayerParameter, "propagate_down", 11),
    (caffe_pb2.LayerParameter, "transform_param", 100),
    (caffe_pb2.LayerParameter, "loss_param", 101),
    (caffe_pb2.LayerParameter, "convolution_param", 106),
    (caffe_pb2.LayerParameter, "python_param", 130),
    (caffe_pb2.LayerParameter, "batch_norm_param", 139),
    (caffe_pb2.LayerParameter, "scale_param", 142),
    (caffe_pb2.LayerParameter, "input_param", 143),
    (caffe_pb2.LayerParameter, "recurrent_param", 146),
    (caffe_pb2.V1LayerParameter, "blobs_lr", 7),
    (caffe_pb2.V1LayerParameter, "param", 1001),
    (caffe_pb2.V1LayerParameter, "layer", 1),
    (caffe_pb2.V0LayerParameter, "blobs", 50),
    (caffe_pb2.V0LayerParameter, "hdf5_output_param", 1001),
    (caffe_pb2.SolverParameter, "snapshot_format", 37),
    (caffe_pb2.SolverParameter, "iter_size", 36),
    (caffe_pb2.SolverParameter, "clip_gradients", 35),
    (caffe_pb2.SolverParameter, "stepvalue", 34),
    (caffe_pb2.SolverParameter, "average_loss", 33),
    (caffe_pb2.SolverParameter, "solver_type", 30),
    (caffe_pb2.SolverParameter, "random_seed", 20),
    (caffe_pb2.SolverParameter, "type", 40),
    (caffe_pb2.SolverParameter, "layer_wise_reduce", 41),
    (caffe_pb2.SolverParameter, "weights", 42),
    (caffe_pb2.SolverState, "current_step", 4),
    (caffe_pb2.PoolingParameter, "round_mode", 13),
    (caffe_pb2.ConvolutionParameter, "dilation", 18),
])
def test_caffe_field_numbers(message, field, expected):
    assert number(message, field) == expected


def test_caffe_defaults():
    assert caffe_pb2.SolverParameter().type == "SGD"
    assert caffe_pb2.SolverParameter().clip_gradients == -1
    assert caffe_pb2.SolverParameter().random_seed == -1
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST
    assert caffe_pb2.BatchNormParameter().eps == pytest.approx(1e-5)
    assert caffe_pb2.FillerParameter().type == "constant"
    assert caffe_pb2.ConvolutionParameter().bias_term is True
    assert caffe_pb2.ParamSpec().lr_mult == 1 and caffe_pb2.ParamSpec().decay_mult == 1


def test_own_params_use_a_range_free_of_caffe_and_the_fork():
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    own = ["roi_align_param", "psroi_align_param", "anchor_target_param",
           "proposal_param", "proposal_target_param", "roi_data_param", "swish_param",
           "clip_param", "focal_loss_param", "region_param"]
    assert all(8000 <= fields[name].number < 8100 for name in own)
    others = [f.number for f in fields.values() if f.name not in own]
    ssd = range(200, 208)  # Caffe-SSD's annotated_data_param .. video_data_param
    assert max(n for n in others if n not in ssd) == 150  # nothing else beyond 150


def test_caffe_ssd_solver_fields_sit_in_our_range():
    fields = caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name
    ssd = ["eval_type", "ap_version", "show_per_class_result"]
    assert all(8000 <= fields[name].number < 8100 for name in ssd)
    assert max(f.number for f in fields.values() if f.name not in ssd) == 42  # BVLC's weights


def test_own_param_defaults():
    anchor = caffe_pb2.AnchorTargetParameter()
    assert (anchor.feat_stride, anchor.base_size, anchor.allowed_border) == (16, 16, 0)
    assert anchor.positive_overlap == pytest.approx(0.7)
    assert anchor.negative_overlap == pytest.approx(0.3)
    assert (anchor.batch_size, anchor.clobber_positives) == (256, False)
    assert anchor.fg_fraction == 0.5 and anchor.positive_weight == -1
    assert list(anchor.ratios) == [] and list(anchor.scales) == []
    proposal = caffe_pb2.ProposalParameter()
    assert (proposal.train_pre_nms_top_n, proposal.train_post_nms_top_n) == (12000, 2000)
    assert (proposal.test_pre_nms_top_n, proposal.test_post_nms_top_n) == (6000, 300)
    assert proposal.nms_thresh == pytest.approx(0.7) and proposal.min_size == 16
    assert proposal.output_score is False
    target = caffe_pb2.ProposalTargetParameter()
    assert target.batch_size == 128 and target.fg_fraction == 0.25
    assert target.fg_thresh == 0.5 and target.bg_thresh_hi == 0.5
    assert target.bg_thresh_lo == pytest.approx(0.1)
    assert target.bbox_normalize_targets is True and target.class_agnostic is False
    align = caffe_pb2.ROIAlignParameter()
    assert (align.sampling_ratio, align.aligned, align.spatial_scale) == (0, False, 1)
    ps_align = caffe_pb2.PSROIAlignParameter()
    assert (ps_align.sampling_ratio, ps_align.aligned) == (0, False)


# ---------------------------------------------------------------------------
# Reading real-world prototxt

RESNET50_TYPES = (
    ["Input", "Convolution", "BatchNorm", "Scale", "ReLU", "Pooling"]
    + ["Convolution", "BatchNorm", "Scale"]
    + ["Convolution", "BatchNorm", "Scale", "ReLU"] * 2
    + ["Convolution", "BatchNorm", "Scale", "Eltwise", "ReLU"]
    + ["Pooling", "InnerProduct", "Softmax"])


@pytest.mark.parametrize("as_type", [str, pathlib.Path, "text"])
def test_resnet50_deploy_excerpt(as_type):
    source = RESNET50.read_text() if as_type == "text" else as_type(RESNET50)
    net = read_net(source)
    assert net.name == "ResNet-50"
    assert not net.input and not net.input_dim
    assert [layer.type for layer in net.layer] == RESNET50_TYPES
    layers = {layer.name: layer for layer in net.layer}

    data = net.layer[0]
    assert (data.name, list(data.top)) == ("input", ["data"])
    assert [list(s.dim) for s in data.input_param.shape] == [[1, 3, 224, 224]]

    conv1 = layers["conv1"].convolution_param
    assert conv1.num_output == 64
    assert (list(conv1.kernel_size), list(conv1.pad), list(conv1.stride)) == ([7], [3], [2])
    assert conv1.bias_term is True and not conv1.HasField("bias_term")
    assert layers["res2a_branch2b"].convolution_param.bias_term is False
    assert layers["bn_conv1"].batch_norm_param.use_global_stats is True
    assert layers["scale_conv1"].scale_param.bias_term is True
    assert list(layers["conv1_relu"].bottom) == list(layers["conv1_relu"].top) == ["conv1"]
    pool1 = layers["pool1"].pooling_param
    assert (pool1.pool, pool1.kernel_size, pool1.stride) == (
        caffe_pb2.PoolingParameter.MAX, 3, 2)
    pool5 = layers["pool5"].pooling_param
    assert (pool5.pool, pool5.kernel_size, pool5.stride) == (
        caffe_pb2.PoolingParameter.AVE, 7, 1)
    res2a = layers["res2a"]
    assert list(res2a.bottom) == ["res2a_branch1", "res2a_branch2c"]
    assert res2a.eltwise_param.operation == caffe_pb2.EltwiseParameter.SUM
    assert layers["fc1000"].inner_product_param.num_output == 1000
    assert list(layers["prob"].top) == ["prob"]


def test_legacy_input_shape_becomes_input_layer():
    net = read_net("""
        name: "VGG16"
        input: "data"
        input_shape { dim: 1 dim: 3 dim: 224 dim: 224 }
        input: "im_info"
        input_shape { dim: 1 dim: 3 }
        layer { name: "conv1_1" type: "Convolution" bottom: "data" top: "conv1_1"
                convolution_param { num_output: 64 pad: 1 kernel_size: 3 } }
        """)
    first = net.layer[0]
    assert (first.type, list(first.top)) == ("Input", ["data", "im_info"])
    assert [list(s.dim) for s in first.input_param.shape] == [[1, 3, 224, 224], [1, 3]]
    assert [layer.name for layer in net.layer] == ["input", "conv1_1"]


def test_input_layer_name_avoids_existing_names():
    net = read_net('input: "data"\ninput_dim: 1 input_dim: 1 input_dim: 2 input_dim: 2\n'
                   'layer { name: "input" type: "ReLU" bottom: "data" top: "r" }')
    assert [layer.name for layer in net.layer] == ["input_1", "input"]


@pytest.mark.parametrize("header, expected", [
    ('input: "data"\ninput_dim: 1 input_dim: 3 input_dim: 224\n', "3 input_dim values"),
    ('input: "a"\ninput: "b"\ninput_shape { dim: 1 }\n', "1 input_shape entries"),
    ('input: "a"\ninput_shape { dim: 1 }\ninput_dim: 1 input_dim: 1 input_dim: 1 '
     'input_dim: 1\n', "both input_shape and input_dim"),
])
def test_inconsistent_legacy_inputs_are_errors(header, expected):
    with pytest.raises(ParseError, match=expected):
        read_net(header + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')


PY_RFCN_STYLE = """
name: "ResNet-101"
layer {
  name: 'input-data'
  type: 'Python'
  top: 'data'
  top: 'im_info'
  top: 'gt_boxes'
  python_param {
    module: 'roi_data_layer.layer'
    layer: 'RoIDataLayer'
    param_str: "'num_classes': 21"
  }
}
layer {
  bottom: "rfcn_cls"
  bottom: "rois"
  top: "psroipooled_cls_rois"
  name: "psroipooled_cls_rois"
  type: "PSROIPooling"
  psroi_pooling_param {
    spatial_scale: 0.0625
    output_dim: 21
    group_size: 7
  }
}
layer {
  name: "annotator_detector"
  type: "BoxAnnotatorOHEM"
  bottom: "rois"
  bottom: "per_roi_loss"
  bottom: "labels"
  bottom: "bbox_inside_weights"
  top: "labels_ohem"
  top: "bbox_loss_weights_ohem"
  box_annotator_ohem_param {
    roi_per_img: 128
    ignore_label: -1
  }
  propagate_down: false
  propagate_down: false
  propagate_down: false
  propagate_down: false
}
layer {
  name: "loss_bbox"
  type: "SmoothL1LossOHEM"
  bottom: "bbox_pred_ohem"
  bottom: "bbox_targets"
  bottom: "bbox_loss_weights_ohem"
  top: "loss_bbox"
  loss_weight: 1
  loss_param {
    normalization: PRE_FIXED
    pre_fixed_normalizer: -1
  }
}
layer {
  name: "roi_pool5"
  type: "ROIPooling"
  bottom: "conv5_3"
  bottom: "rois"
  top: "pool5"
  roi_pooling_param { pooled_w: 7 pooled_h: 7 spatial_scale: 0.0625 }
}
layer {
  name: "loss_bbox_frcn"
  type: "SmoothL1Loss"
  bottom: "bbox_pred"
  bottom: "bbox_targets"
  top: "loss_bbox_frcn"
  smooth_l1_loss_param { sigma: 3.0 }
}
"""


def test_detection_layers_and_python_layers_pass_through():
    raw = parse_text(PY_RFCN_STYLE, caffe_pb2.NetParameter)
    assert upgrade_net(raw) is raw  # nothing to upgrade: the same message
    net = read_net(PY_RFCN_STYLE)
    layers = {layer.name: layer for layer in net.layer}
    python = layers["input-data"]
    assert python.type == "Python"
    assert python.python_param.module == "roi_data_layer.layer"
    assert python.python_param.param_str == "'num_classes': 21"
    ps = layers["psroipooled_cls_rois"].psroi_pooling_param
    assert (ps.spatial_scale, ps.output_dim, ps.group_size) == (0.0625, 21, 7)
    ohem = layers["annotator_detector"]
    assert ohem.box_annotator_ohem_param.roi_per_img == 128
    assert list(ohem.propagate_down) == [False] * 4
    loss = layers["loss_bbox"].loss_param
    assert loss.normalization == caffe_pb2.LossParameter.PRE_FIXED
    assert loss.pre_fixed_normalizer == -1
    roi = layers["roi_pool5"].roi_pooling_param
    assert (roi.pooled_h, roi.pooled_w, roi.spatial_scale) == (7, 7, 0.0625)
    assert layers["loss_bbox_frcn"].smooth_l1_loss_param.sigma == 3.0


# ---------------------------------------------------------------------------
# V1 upgrade

V1_NET = """
name: "CaffeNet"
layers {
  name: "data"
  type: DATA
  top: "data"
  top: "label"
  data_param {
    source: "train_lmdb"
    backend: LMDB
    batch_size: 256
    scale: 0.00390625
    mean_file: "mean.binaryproto"
    crop_size: 227
    mirror: true
  }
  include: { phase: TRAIN }
}
layers {
  name: "conv1"
  type: CONVOLUTION
  bottom: "data"
  top: "conv1"
  blobs_lr: 1
  blobs_lr: 2
  weight_decay: 1
  weight_decay: 0
  param: "conv1_w"
  param: "conv1_b"
  blob_share_mode: PERMISSIVE
  convolution_param {
    num_output: 96
    kernel_size: 11
    stride: 4
    weight_filler { type: "gaussian" std: 0.01 }
  }
}
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "fc8" type: INNER_PRODUCT bottom: "conv1" top: "fc8"
         inner_product_param { num_output: 1000 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc8" bottom: "label" top: "loss"
         loss_weight: 1 exclude { phase: TEST } }
"""


def test_v1_layers_upgrade():
    net = read_net(V1_NET)
    assert not net.layers
    assert [(l.name, l.type) for l in net.layer] == [
        ("data", "Data"), ("conv1", "Convolution"), ("relu1", "ReLU"),
        ("fc8", "InnerProduct"), ("loss", "SoftmaxWithLoss")]
    data, conv1, _, _, loss = net.layer
    # Preprocessing moved out of data_param, the rest stays.
    assert data.transform_param.scale == 0.00390625
    assert data.transform_param.mean_file == "mean.binaryproto"
    assert (data.transform_param.crop_size, data.transform_param.mirror) == (227, True)
    assert not data.data_param.HasField("scale") and not data.data_param.HasField("mirror")
    assert (data.data_param.source, data.data_param.batch_size) == ("train_lmdb", 256)
    assert data.data_param.backend == caffe_pb2.DataParameter.LMDB
    assert [rule.phase for rule in data.include] == [caffe_pb2.TRAIN]
    assert [(p.name, p.lr_mult, p.decay_mult) for p in conv1.param] == [
        ("conv1_w", 1, 1), ("conv1_b", 2, 0)]
    assert conv1.param[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    assert not conv1.param[1].HasField("share_mode")
    assert conv1.convolution_param.num_output == 96
    assert conv1.convolution_param.weight_filler.std == pytest.approx(0.01)
    assert list(loss.loss_weight) == [1]
    assert [rule.phase for rule in loss.exclude] == [caffe_pb2.TEST]


def test_every_v1_type_has_a_type_string():
    values = {v.number for v in caffe_pb2.V1LayerParameter.LayerType.DESCRIPTOR.values}
    assert set(V1_LAYER_TYPES) == values - {caffe_pb2.V1LayerParameter.NONE}


def test_upgrade_leaves_its_input_alone():
    raw = read_net(V1_NET, upgrade=False)
    before = raw.SerializeToString()
    upgraded = upgrade_net(raw)
    assert upgraded is not raw
    assert raw.SerializeToString() == before
    assert len(raw.layers) == 5 and not raw.layer


def test_mixed_layer_forms_are_an_error():
    text = ('layers { name: "a" type: RELU bottom: "x" top: "x" }\n'
            'layer { name: "b" type: "ReLU" bottom: "x" top: "x" }\n')
    with pytest.raises(ParseError, match="mixes 1 new-style 'layer' entries with 1 V1"):
        read_net(text)


def test_v0_layers_are_refused_with_a_pointer():
    with pytest.raises(ParseError, match="layer 0 \\('old'\\) is in the V0 layer format"):
        read_net('layers { layer { name: "old" type: "conv" } }\n')


def test_v1_layer_without_type_is_an_error():
    with pytest.raises(ParseError, match="V1 layer 0 \\('x'\\) has no type"):
        read_net('layers { name: "x" bottom: "a" top: "b" }\n')


def test_batchnorm_param_specs_are_zeroed_as_caffe_does():
    net = read_net("""
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x"
                param { lr_mult: 0 } param { lr_mult: 1 name: "shared" } param { } }
        layer { name: "conv" type: "Convolution" bottom: "x" top: "y"
                param { lr_mult: 1 } param { lr_mult: 2 } param { lr_mult: 3 } }
        """)
    bn, conv = net.layer
    assert [(p.lr_mult, p.decay_mult) for p in bn.param] == [(0, 0)] * 3
    assert bn.param[1].name == "shared"
    assert [p.lr_mult for p in conv.param] == [1, 2, 3]


# ---------------------------------------------------------------------------
# Errors

def test_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.prototxt"
    path.write_text('name: "net"\n'
                    'layer {\n'
                    '  name: "conv1"\n'
                    '  type: "Convolution" }\n'
                    '  bottom: "data"\n'
                    '}\n')
    with pytest.raises(ParseError) as info:
        read_net(path)
    message = str(info.value)
    # The stray "}" on line 4 closes the layer, so line 5 is at net level.
    assert message.startswith(f"{path}:5:3: "), message
    assert 'no field named "bottom"' in message


def test_syntax_error_in_text_source():
    with pytest.raises(ParseError, match=r'^<string>:2:14: .*Expected ":"'):
        read_net('name: "x"\nlayer { name "a" }\n')


def test_unknown_field_error_suggests_the_right_name(tmp_path):
    path = tmp_path / "typo.prototxt"
    path.write_text('layer {\n  name: "conv1"\n  type: "Convolution"\n'
                    '  convolution_parm { num_output: 8 }\n}\n')
    with pytest.raises(ParseError) as info:
        read_net(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:4:3: ")
    assert 'has no field named "convolution_parm"' in message
    assert 'Did you mean "convolution_param"' in message


def test_unknown_enum_value_error():
    with pytest.raises(ParseError, match=r'^<string>:1:31: .*no value named MAXX\. '
                                         r'Did you mean "MAX"'):
        read_net('layer { pooling_param { pool: MAXX } }\n')


def test_missing_file_error_names_the_path(tmp_path):
    missing = tmp_path / "nowhere.prototxt"
    with pytest.raises(ParseError, match=re.escape(f"{missing}: no such file")):
        read_net(missing)
    with pytest.raises(ParseError, match="is read as a path"):
        read_net(str(missing))


def test_binary_file_is_not_read_as_prototxt(tmp_path):
    path = tmp_path / "weights.caffemodel"
    path.write_bytes(b"\n\x03net\xff\xfe\x00")
    with pytest.raises(ParseError, match="not UTF-8 text.*read_caffemodel"):
        read_net(path)


def test_source_type_is_checked():
    with pytest.raises(TypeError, match="expected a path or prototxt text"):
        read_net(42)


# ---------------------------------------------------------------------------
# Solvers

SOLVER = """
train_net: "train.prototxt"
base_lr: 0.001
lr_policy: "multistep"
gamma: 0.1
stepvalue: 80000
stepvalue: 100000
display: 20
average_loss: 100
momentum: 0.9
weight_decay: 0.0005
iter_size: 2
clip_gradients: 35
snapshot: 10000
snapshot_prefix: "rfcn"
snapshot_format: BINARYPROTO
random_seed: 3
"""


def test_read_solver_fields():
    solver = read_solver(SOLVER)
    assert solver.type == "SGD" and not solver.HasField("solver_type")
    assert list(solver.stepvalue) == [80000, 100000]
    assert (solver.iter_size, solver.average_loss, solver.random_seed) == (2, 100, 3)
    assert solver.clip_gradients == 35
    assert solver.weight_decay == pytest.approx(0.0005)


def test_legacy_solver_type_is_upgraded():
    solver = read_solver(SOLVER + "solver_type: NESTEROV\n")
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")
    raw = read_solver(SOLVER + "solver_type: ADAM\n", upgrade=False)
    assert upgrade_solver(raw).type == "Adam"
    assert raw.HasField("solver_type")


def test_solver_type_given_twice_is_an_error():
    with pytest.raises(ParseError, match="both the legacy solver_type \\(RMSPROP\\)"):
        read_solver(SOLVER + 'solver_type: RMSPROP\ntype: "Adam"\n')


def test_inline_solver_nets_are_upgraded():
    solver = read_solver('train_net_param { layers { name: "r" type: RELU } }\n'
                         'test_net_param { input: "d" input_dim: 1 input_dim: 1 '
                         'input_dim: 1 input_dim: 1 }\n')
    assert solver.train_net_param.layer[0].type == "ReLU"
    assert solver.test_net_param[0].layer[0].type == "Input"


# ---------------------------------------------------------------------------
# Formatting

def test_format_net_round_trips():
    net = read_net(RESNET50)
    net.layer[1].convolution_param.num_output = 32  # an edit
    text = format_net(net)
    again = read_net(text)
    assert again == net
    assert again.layer[1].convolution_param.num_output == 32
    assert format_net(read_net(PY_RFCN_STYLE)).count("psroi_pooling_param {") == 1


def test_parse_text_takes_a_class_or_an_instance():
    state = parse_text("phase: TRAIN stage: 'a'", caffe_pb2.NetState)
    assert state.phase == caffe_pb2.TRAIN
    reused = parse_text("level: 2", state)
    assert reused is state and reused.phase == caffe_pb2.TEST and reused.level == 2


# ---------------------------------------------------------------------------
# The generated module is in sync with the .proto

def test_committed_caffe_pb2_matches_the_proto(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpc_tools (grpcio-tools) is not installed; cannot regenerate")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_proto.py"), "--out", str(tmp_path)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    committed = ROOT / "netdef" / "caffe_pb2.py"
    generated = tmp_path / "caffe_pb2.py"
    if not filecmp.cmp(committed, generated, shallow=False):
        version = re.compile(r"^# Protobuf Python Version: (.*)$", re.M)
        old = version.search(committed.read_text())
        new = version.search(generated.read_text())
        pytest.fail(
            "netdef/caffe_pb2.py does not match netdef/proto/caffe.proto "
            f"(committed gencode {old and old.group(1)}, this protoc gives "
            f"{new and new.group(1)}); run `python tools/gen_proto.py` with the "
            "pinned grpcio-tools and commit the result")
