"""Caffe-SSD's schema additions: field numbers and defaults as weiliu89/caffe
(branch ssd) has them, SSD's training and data layers' text parsing
unchanged, a binary round trip, and the named build error of the SSD layers
not implemented yet."""
import numpy as np
import pytest

from netdef import caffe_pb2
from netdef.errors import NetDefinitionError
from netdef.net import Net
from netdef.schema import parse_text, read_net


def number(message, field):
    return message.DESCRIPTOR.fields_by_name[field].number


@pytest.mark.parametrize("field,expected", [
    ("annotated_data_param", 200), ("multibox_loss_param", 201), ("permute_param", 202),
    ("prior_box_param", 203), ("detection_output_param", 204),
    ("detection_evaluate_param", 205), ("norm_param", 206), ("video_data_param", 207),
])
def test_layer_parameter_numbers(field, expected):
    assert number(caffe_pb2.LayerParameter, field) == expected


@pytest.mark.parametrize("message,field,expected", [
    (caffe_pb2.TransformationParameter, "resize_param", 8),
    (caffe_pb2.TransformationParameter, "noise_param", 9),
    (caffe_pb2.TransformationParameter, "emit_constraint", 10),
    (caffe_pb2.TransformationParameter, "crop_h", 11),
    (caffe_pb2.TransformationParameter, "crop_w", 12),
    (caffe_pb2.TransformationParameter, "distort_param", 13),
    (caffe_pb2.TransformationParameter, "expand_param", 14),
    (caffe_pb2.PriorBoxParameter, "offset", 13),
    (caffe_pb2.PriorBoxParameter, "step_w", 12),
    (caffe_pb2.DetectionOutputParameter, "keep_top_k", 7),
    (caffe_pb2.DetectionOutputParameter, "variance_encoded_in_target", 8),
    (caffe_pb2.DetectionOutputParameter, "confidence_threshold", 9),
    (caffe_pb2.MultiBoxLossParameter, "encode_variance_in_target", 16),
    (caffe_pb2.MultiBoxLossParameter, "mining_type", 20),
    (caffe_pb2.MultiBoxLossParameter, "use_prior_for_nms", 23),
    (caffe_pb2.NormalizeParameter, "channel_shared", 3),
    (caffe_pb2.NonMaximumSuppressionParameter, "eta", 3),
    (caffe_pb2.ResizeParameter, "height_scale", 8),
    (caffe_pb2.AnnotatedDatum, "annotation_group", 3),
])
def test_message_field_numbers(message, field, expected):
    assert number(message, field) == expected


def test_defaults():
    norm = caffe_pb2.NormalizeParameter()
    assert norm.across_spatial and norm.channel_shared
    assert norm.eps == pytest.approx(1e-10)
    prior = caffe_pb2.PriorBoxParameter()
    assert prior.flip and not prior.clip and prior.offset == pytest.approx(0.5)
    out = caffe_pb2.DetectionOutputParameter()
    assert out.share_location and out.background_label_id == 0 and out.keep_top_k == -1
    assert out.code_type == caffe_pb2.PriorBoxParameter.CORNER
    assert caffe_pb2.NonMaximumSuppressionParameter().nms_threshold == pytest.approx(0.3)
    loss = caffe_pb2.MultiBoxLossParameter()
    assert loss.loc_loss_type == loss.SMOOTH_L1 and loss.conf_loss_type == loss.SOFTMAX
    assert loss.match_type == loss.PER_PREDICTION and loss.mining_type == loss.MAX_NEGATIVE
    assert loss.neg_pos_ratio == 3 and loss.overlap_threshold == pytest.approx(0.5)
    assert loss.code_type == caffe_pb2.PriorBoxParameter.CORNER
    assert caffe_pb2.BatchSampler().max_trials == 100
    assert caffe_pb2.ExpansionParameter().max_expand_ratio == 1


# SSD's train net layers as ssd_pascal.py writes them (abridged values).
SSD_TRAIN_LAYERS = """
layer { name: "data" type: "AnnotatedData" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param { mirror: true mean_value: 104 mean_value: 117 mean_value: 123
    resize_param { prob: 1 resize_mode: WARP height: 300 width: 300
      interp_mode: LINEAR interp_mode: AREA interp_mode: NEAREST interp_mode: CUBIC
      interp_mode: LANCZOS4 }
    emit_constraint { emit_type: CENTER }
    distort_param { brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5
      contrast_lower: 0.5 contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18
      saturation_prob: 0.5 saturation_lower: 0.5 saturation_upper: 1.5
      random_order_prob: 0.0 }
    expand_param { prob: 0.5 max_expand_ratio: 4.0 } }
  data_param { source: "examples/VOC0712/VOC0712_trainval_lmdb" batch_size: 32 backend: LMDB }
  annotated_data_param {
    batch_sampler { max_sample: 1 max_trials: 1 }
    batch_sampler { sampler { min_scale: 0.3 max_scale: 1.0 min_aspect_ratio: 0.5
        max_aspect_ratio: 2.0 }
      sample_constraint { min_jaccard_overlap: 0.1 } max_sample: 1 max_trials: 50 }
    label_map_file: "data/VOC0712/labelmap_voc.prototxt" } }
layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "mbox_loc" bottom: "mbox_conf"
  bottom: "mbox_priorbox" bottom: "label" top: "mbox_loss"
  include { phase: TRAIN } propagate_down: true propagate_down: true
  propagate_down: false propagate_down: false
  loss_param { normalization: VALID }
  multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1.0
    num_classes: 21 share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5
    use_prior_for_matching: true background_label_id: 0 use_difficult_gt: true
    neg_pos_ratio: 3.0 neg_overlap: 0.5 code_type: CENTER_SIZE ignore_cross_boundary_bbox: false
    mining_type: MAX_NEGATIVE } }
layer { name: "detection_eval" type: "DetectionEvaluate" bottom: "detection_out"
  bottom: "label" top: "detection_eval" include { phase: TEST }
  detection_evaluate_param { num_classes: 21 background_label_id: 0 overlap_threshold: 0.5
    evaluate_difficult_gt: false name_size_file: "data/VOC0712/test_name_size.txt" } }
"""


def test_ssd_train_layers_parse_unchanged():
    net = parse_text(SSD_TRAIN_LAYERS, caffe_pb2.NetParameter(), "ssd_train.prototxt")
    data, loss, evaluate = net.layer
    assert data.annotated_data_param.batch_sampler[1].sampler.min_scale == pytest.approx(0.3)
    assert data.transform_param.expand_param.max_expand_ratio == 4
    assert data.transform_param.resize_param.interp_mode[4] == caffe_pb2.ResizeParameter.LANCZOS4
    assert loss.multibox_loss_param.code_type == caffe_pb2.PriorBoxParameter.CENTER_SIZE
    assert evaluate.detection_evaluate_param.evaluate_difficult_gt is False
    # And back through the binary form (a .caffemodel's layers).
    again = caffe_pb2.NetParameter.FromString(net.SerializeToString())
    assert again == net


def test_labelmap_and_annotated_datum_records():
    labelmap = parse_text('item { name: "none_of_the_above" label: 0 display_name: "background" }'
                          ' item { name: "aeroplane" label: 1 display_name: "aeroplane" }',
                          caffe_pb2.LabelMap(), "labelmap_voc.prototxt")
    assert [i.label for i in labelmap.item] == [0, 1]
    datum = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
    box = datum.annotation_group.add(group_label=12).annotation.add(instance_id=0).bbox
    box.xmin, box.ymax, box.difficult = 0.25, 0.75, True
    again = caffe_pb2.AnnotatedDatum.FromString(datum.SerializeToString())
    assert again.annotation_group[0].annotation[0].bbox.xmin == 0.25


@pytest.mark.parametrize("layer_type", ["DetectionEvaluate",
                                        "VideoData"])
def test_pending_ssd_layers_are_a_named_build_error(layer_type):
    text = ('layer { name: "in" type: "Input" top: "a" input_param { shape { dim: 1 dim: 4 } } }\n'
            f'layer {{ name: "pending" type: "{layer_type}" bottom: "a" top: "b" }}\n')
    with pytest.raises(NetDefinitionError,
                       match=f"layer 'pending'.*Caffe-SSD's {layer_type} layer .*is not "
                             "implemented yet; its parameters parse"):
        Net(text, "TRAIN", dtype=np.float64)


def test_read_net_keeps_ssd_fields(tmp_path):
    path = tmp_path / "train.prototxt"
    path.write_text(SSD_TRAIN_LAYERS)
    net = read_net(str(path))
    assert net.layer[1].multibox_loss_param.num_classes == 21
