"""py-R-FCN's alternating (5-step, OHEM) stage nets, in its Python-layer form.

    from prototxt.rfcn_alt_opt import rfcn_alt_opt_net, ALT_OPT_NETS
    text = rfcn_alt_opt_net(101, 21, "stage1_rfcn_ohem_train")

py-R-FCN trains R-FCN with Faster R-CNN's alternating optimization
stretched to five training stages (tools/train_rfcn_alt_opt_5stage.py,
experiments/cfgs/rfcn_alt_opt_5step_ohem.yml), from the files of
models/{pascal_voc,coco}/ResNet-{50,101}/rfcn_alt_opt_5step_ohem/:

  stage1_rpn_train.pt        RPN from ImageNet weights (res3 and res4 learn)
  rpn_test.pt                proposals (6000 / 300 boxes before / after NMS)
  stage1_rfcn_ohem_train.pt  R-FCN on those proposals, from ImageNet weights
  stage2_rpn_train.pt        RPN on stage 1 R-FCN's trunk, trunk fixed
  stage2_rfcn_ohem_train.pt  R-FCN on stage 2 proposals, from ImageNet again
  stage3_rpn_train.pt        RPN on stage 2 R-FCN's trunk, trunk fixed
  rfcn_test.pt               the detector on precomputed RoIs (TEST)

What the files hold (the facts these nets are written from):
- RPN stages: data layer roi_data_layer.layer.RoIDataLayer (tops data,
  im_info, gt_boxes; 'num_classes'), the ResNet trunk up to res4 (conv1
  and res2 fixed; res3 and res4 fixed too in stages 2 and 3), an RPN of
  256 channels (the end-to-end files have 512) with 9 anchors on res4's
  last block, AnchorTarget and the two RPN losses (sigma 3).
- rpn_test: legacy inputs data 1x3x224x224 and im_info 1x3, the same trunk
  and RPN, Softmax, Proposal with tops rois and scores.
- R-FCN stages: the data layer in its precomputed-RoI form (tops data,
  rois, labels, bbox_targets, bbox_inside_weights, bbox_outside_weights;
  no im_info), the whole trunk with res5 dilated (conv1 and res2 fixed in
  both stages), the R-FCN head as end to end (class-agnostic, k = 7), the
  OHEM losses. No RPN.
- rfcn_test: legacy inputs data 1x3x224x224 and rois 1x5, trunk and head,
  cls_prob (R, classes) and bbox_pred (R, 8).
The files py-R-FCN ships for COCO set 'num_classes': 81; its COCO
rpn_test.pt was left at 12 anchors (24 / 48 outputs) with 'feat_stride': 16
only, which its own stage-1 RPN (18 / 36 outputs) cannot fill; here every
rpn_test has 9 anchors.
"""
from prototxt.resnet import resnet_trunk
from prototxt.rfcn import _outputs, _rfcn_head
from prototxt.rpn_parts import (FEAT_STRIDE, HEAD_CHANNELS, TEST_IMAGE_PY, legacy_inputs,
                                python_layer, rpn_head, rpn_losses, rpn_proposals,
                                rpn_score_reshape, rpn_train_data)

__all__ = ["rfcn_alt_opt_net", "ALT_OPT_NETS", "ALT_OPT_RPN_CHANNELS", "alt_opt_phase"]

#: The stage nets of the 5-step schedule, by py-R-FCN's file stem.
ALT_OPT_NETS = ("stage1_rpn_train", "stage2_rpn_train", "stage3_rpn_train", "rpn_test",
                "stage1_rfcn_ohem_train", "stage2_rfcn_ohem_train", "rfcn_test")
ALT_OPT_RPN_CHANNELS = 256
ROI_TOPS = ("data", "rois", "labels", "bbox_targets", "bbox_inside_weights",
            "bbox_outside_weights")


def alt_opt_phase(net):
    """"TEST" for the rpn_test / rfcn_test nets, "TRAIN" for the others."""
    return "TEST" if net.endswith("_test") else "TRAIN"


def rfcn_alt_opt_net(depth=101, classes=21, net="stage1_rfcn_ohem_train", k=7):
    """Prototxt text of one of py-R-FCN's alternating stage nets
    (``net`` in ``ALT_OPT_NETS``) for a ResNet of ``depth`` (50, 101, 152)
    and ``classes`` classes (background included)."""
    if net not in ALT_OPT_NETS:
        raise ValueError(f"net must be one of {', '.join(ALT_OPT_NETS)}, found {net!r}")
    if classes < 2:
        raise ValueError(f"classes counts the background too and must be >= 2, found {classes}")
    parts = [f'name: "ResNet-{depth}"\n']
    if "rpn" in net:
        parts += _rpn_net(depth, classes, net)
    else:
        parts += _rfcn_net(depth, classes, net, k)
    return "".join(parts)


def _rpn_net(depth, classes, net):
    train = net != "rpn_test"
    frozen = {1, 2, 3, 4} if net in ("stage2_rpn_train", "stage3_rpn_train") else {1, 2}
    trunk, outputs = resnet_trunk(depth, last_stage=4, frozen_stages=frozen,
                                  conv1_bias=depth == 50)
    if train:
        parts = [rpn_train_data(True, classes)]
    else:
        parts = [legacy_inputs([("data", (1, 3) + TEST_IMAGE_PY), ("im_info", (1, 3))])]
    parts += [trunk, rpn_head(outputs[4], channels=ALT_OPT_RPN_CHANNELS), rpn_score_reshape()]
    parts.append(rpn_losses(True) if train else rpn_proposals(True, ["rois", "scores"]))
    return parts


def _rfcn_net(depth, classes, net, k):
    train = net != "rfcn_test"
    trunk, outputs = resnet_trunk(depth, dilate_res5=True, frozen_stages={1, 2},
                                  conv1_bias=depth == 50)
    if train:
        parts = [python_layer("data", [], list(ROI_TOPS), "roi_data_layer.layer",
                              "RoIDataLayer", f"'num_classes': {classes}")]
    else:
        parts = [legacy_inputs([("data", (1, 3) + TEST_IMAGE_PY), ("rois", (1, 5))])]
    parts.append(trunk)
    parts += _rfcn_head(outputs[5], HEAD_CHANNELS, classes, k, False, FEAT_STRIDE, train)
    parts += _outputs(classes, k, False, train, train, True)
    return parts
