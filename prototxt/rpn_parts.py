"""Pieces shared by the R-FCN and Faster R-CNN generators (prototxt.rfcn,
prototxt.faster_rcnn): fillers, the data and input layers, the RPN (head,
losses, proposals) and the proposal targets, in the native form or as
py-faster-rcnn / py-R-FCN ``type: "Python"`` layers, with the reference
detectors' settings."""
from prototxt.resnet import layer, specs

FEAT_STRIDE = 16
SPATIAL_SCALE = 1.0 / FEAT_STRIDE
ANCHOR_RATIOS = (0.5, 1, 2)
ANCHOR_SCALES = (8, 16, 32)
NUM_ANCHORS = len(ANCHOR_RATIOS) * len(ANCHOR_SCALES)
RPN_CHANNELS = 512
HEAD_CHANNELS = 1024
ROIS_PER_IMAGE = 128       # OHEM keeps this many; the box loss divides by it
RPN_PRE_NMS, RPN_POST_NMS = 6000, 300  # py-R-FCN's training values (= test)
TRAIN_IMAGE = (600, 1000)  # shorter side 600, longer at most 1000
TEST_IMAGE_PY = (224, 224)  # the placeholder size py-R-FCN's test files declare


def gaussian(std):
    return dict(type="gaussian", std=std)


CONSTANT_0 = dict(type="constant", value=0.0)


def python_layer(name, bottoms, tops, module, layer_name, param_str):
    """A py-faster-rcnn / py-R-FCN ``type: "Python"`` layer."""
    return layer(name, "Python", bottoms, tops,
                 python_param=dict(module=module, layer=layer_name, param_str=param_str))


def legacy_inputs(inputs):
    """The old-style net header: ``input: "x"`` plus ``input_shape`` per input."""
    lines = []
    for name, shape in inputs:
        lines.append(f'input: "{name}"\ninput_shape {{\n' +
                     "".join(f"  dim: {d}\n" for d in shape) + "}\n")
    return "".join(lines)


def input_layer(name, blobs):
    """An Input layer with one top per (name, shape) of ``blobs``."""
    return layer(name, "Input", [], [b for b, _ in blobs],
                 input_param=dict(shape=[dict(dim=list(s)) for _, s in blobs]))


def rpn_train_data(python_layers, num_classes, image=TRAIN_IMAGE, data="roidata"):
    """The data layer of a net with an RPN: tops data, im_info, gt_boxes.

    Native form: the RoIData layer (layers/roi_data.py) with ``image``
    (shorter side, longer side cap) as its scales / max_size; the trainer
    hands it the dataset. ``data="input"`` writes an Input placeholder of
    those shapes instead (for feeding blobs by hand, e.g. benchmarks)."""
    tops = ["data", "im_info", "gt_boxes"]
    if python_layers:
        return python_layer("input-data", [], tops, "roi_data_layer.layer", "RoIDataLayer",
                            f"'num_classes': {num_classes}")
    if data == "input":
        return input_layer("input-data", [("data", (1, 3) + tuple(image)), ("im_info", (1, 3)),
                                          ("gt_boxes", (1, 5))])
    if data != "roidata":
        raise ValueError(f"data must be 'roidata' or 'input', found {data!r}")
    return layer("input-data", "RoIData", [], tops, roi_data_param=dict(
        num_classes=num_classes, scales=[min(image)], max_size=max(image)))


def anchor_settings(anchors=None):
    """The AnchorTarget / Proposal fields of an anchor set: ``anchors`` is
    None (the reference: feat_stride 16, base size 16, scales 8, 16, 32,
    ratios 0.5, 1, 2) or a dict with feat_stride and optionally base_size,
    scales, ratios."""
    settings = dict(feat_stride=FEAT_STRIDE)
    settings.update(anchors or {})
    return settings


def num_anchors(anchors=None):
    settings = anchor_settings(anchors)
    return len(settings.get("scales", ANCHOR_SCALES)) * len(settings.get("ratios", ANCHOR_RATIOS))


def rpn_head(bottom, *, param_style="train", fillers=True, channels=RPN_CHANNELS, anchors=None):
    """rpn_conv/3x3 + ReLU, rpn_cls_score (2A), rpn_bbox_pred (4A) and the
    (N, 2, A*H, W) reshape of the scores.

    ``param_style``: "train" lr_mult 1 / 2, "test" the same with decay_mult
    1 / 0, "frozen" lr_mult 0 / decay_mult 0 (alternating stages that keep
    the RPN fixed), None no param specs. ``channels``: rpn_conv/3x3's
    outputs; ``anchors``: see ``anchor_settings`` (A anchors per position)."""
    param = {"train": specs((1, None), (2, None)), "test": specs((1, 1), (2, 0)),
             "frozen": specs((0, 0), (0, 0)), None: []}[param_style]
    count = num_anchors(anchors)

    def conv(name, bottom_, top, num_output, kernel, pad):
        return layer(name, "Convolution", [bottom_], [top], param=param, convolution_param=dict(
            num_output=num_output, kernel_size=kernel, pad=pad, stride=1,
            weight_filler=gaussian(0.01) if fillers else None,
            bias_filler=CONSTANT_0 if fillers else None))

    return "".join([
        conv("rpn_conv/3x3", bottom, "rpn/output", channels, 3, 1),
        layer("rpn_relu/3x3", "ReLU", ["rpn/output"], ["rpn/output"]),
        conv("rpn_cls_score", "rpn/output", "rpn_cls_score", 2 * count, 1, 0),
        conv("rpn_bbox_pred", "rpn/output", "rpn_bbox_pred", 4 * count, 1, 0),
    ])


def rpn_score_reshape():
    return layer("rpn_cls_score_reshape", "Reshape", ["rpn_cls_score"], ["rpn_cls_score_reshape"],
                 reshape_param=dict(shape=dict(dim=[0, 2, -1, 0])))


def rpn_losses(python_layers, anchors=None):
    """AnchorTarget and the two RPN losses."""
    bottoms = ["rpn_cls_score", "gt_boxes", "im_info", "data"]
    tops = ["rpn_labels", "rpn_bbox_targets", "rpn_bbox_inside_weights",
            "rpn_bbox_outside_weights"]
    if python_layers:
        target = python_layer("rpn-data", bottoms, tops, "rpn.anchor_target_layer",
                              "AnchorTargetLayer", _python_anchor_str(anchors))
    else:
        target = layer("rpn-data", "AnchorTarget", bottoms, tops,
                       anchor_target_param=anchor_settings(anchors))
    return "".join([
        target,
        layer("rpn_loss_cls", "SoftmaxWithLoss", ["rpn_cls_score_reshape", "rpn_labels"],
              ["rpn_cls_loss"], loss_weight=[1.0], propagate_down=[True, False],
              loss_param=dict(ignore_label=-1, normalize=True)),
        layer("rpn_loss_bbox", "SmoothL1Loss",
              ["rpn_bbox_pred", "rpn_bbox_targets", "rpn_bbox_inside_weights",
               "rpn_bbox_outside_weights"], ["rpn_loss_bbox"], loss_weight=[1.0],
              smooth_l1_loss_param=dict(sigma=3.0)),
    ])


def _python_anchor_str(anchors):
    """param_str of the Python-form anchor layers: feat_stride (and scales
    when not the reference's), as py-faster-rcnn's files write them."""
    settings = anchor_settings(anchors)
    text = f"'feat_stride': {settings['feat_stride']}"
    if "scales" in settings:
        text += f", 'scales': {tuple(settings['scales'])}"
    return text


def rpn_proposals(python_layers, tops, proposal_param=None, anchors=None):
    """Softmax over the RPN scores, reshape back to (N, 2A, H, W), Proposal.

    ``proposal_param``: settings for the native layer beyond the anchors
    (the Python form carries only feat_stride, as the reference files do)."""
    bottoms = ["rpn_cls_prob_reshape", "rpn_bbox_pred", "im_info"]
    if python_layers:
        proposal = python_layer("proposal", bottoms, tops, "rpn.proposal_layer", "ProposalLayer",
                                _python_anchor_str(anchors))
    else:
        settings = anchor_settings(anchors)
        settings.update(proposal_param or {})
        if len(tops) > 1:
            settings["output_score"] = True
        proposal = layer("proposal", "Proposal", bottoms, tops, proposal_param=settings)
    return "".join([
        layer("rpn_cls_prob", "Softmax", ["rpn_cls_score_reshape"], ["rpn_cls_prob"]),
        layer("rpn_cls_prob_reshape", "Reshape", ["rpn_cls_prob"], ["rpn_cls_prob_reshape"],
              reshape_param=dict(shape=dict(dim=[0, 2 * num_anchors(anchors), -1, 0]))),
        proposal,
    ])


def proposal_targets(python_layers, python_num_classes, native_param):
    """ProposalTarget: sample RoIs from rpn_rois and gt_boxes, label them and
    compute their box targets."""
    bottoms = ["rpn_rois", "gt_boxes"]
    tops = ["rois", "labels", "bbox_targets", "bbox_inside_weights", "bbox_outside_weights"]
    if python_layers:
        return python_layer("roi-data", bottoms, tops, "rpn.proposal_target_layer",
                            "ProposalTargetLayer", f"'num_classes': {python_num_classes}")
    return layer("roi-data", "ProposalTarget", bottoms, tops, proposal_target_param=native_param)
