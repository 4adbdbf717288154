"""Faster R-CNN (RPN proposals) and Fast R-CNN (external proposals) nets on
any backbone of ``prototxt.faster_rcnn_parts`` (tiny, ZF, VGG_CNN_M_1024,
VGG16, ResNet-50, ResNet-101): ``python -m prototxt.faster_rcnn --backbone
...`` writes them.

Faster R-CNN (Ren et al. 2015), one net trained end to end as
py-faster-rcnn's ``faster_rcnn_end2end`` files:

- TRAIN: the RoIData layer (data, im_info, gt_boxes), the trunk, the RPN
  (rpn_conv/3x3, 2A scores, 4A deltas, AnchorTarget and its two losses:
  SoftmaxWithLoss ignoring -1, SmoothL1Loss sigma 3), Proposal (12000 /
  2000 boxes before / after NMS 0.7), ProposalTarget (128 RoIs, 25%
  foreground at IoU >= 0.5, background IoU in [0, 0.5) as py-faster-rcnn's
  faster_rcnn_end2end.yml sets it, class-aware targets), the backbone's RoI
  head, SoftmaxWithLoss and SmoothL1Loss (sigma 1) on cls_score / bbox_pred.
- TEST: inputs data and im_info, the trunk, the RPN to ``rois`` (6000 / 300
  boxes), the head and ``cls_prob``.

Fast R-CNN (Girshick 2015; ``proposals="external"``): no RPN. TRAIN starts
with the RoIData layer's precomputed-RoI form (tops data, rois, labels,
bbox_targets, bbox_inside_weights, bbox_outside_weights) carrying Fast
R-CNN's hierarchical sampling in its parameters (2 images per minibatch x
64 RoIs, 25% foreground at IoU >= 0.5, background in [0.1, 0.5)); the
proposals come from a file (``python -m solver.train NET --proposals
FILE``). TEST takes ``rois`` (R, 5) as a third input beside data and
im_info.

``phase="BOTH"`` (``detector_net_both``) writes TRAIN and TEST in one file
(the layers both share once, the others with include rules): what
``python -m solver.train`` trains and ``solver.test`` tests.
"""
from prototxt.faster_rcnn_parts import (BACKBONES, HEADS, fast_rcnn_data, fast_rcnn_losses,
                                        faster_rcnn_trunk, roi_head, rpn_test_layers,
                                        rpn_train_layers)
from prototxt.resnet import layer
from prototxt.rfcn import TINY_CLASSES, merge_phases
from prototxt.rpn_parts import (TEST_IMAGE_PY, input_layer, legacy_inputs, proposal_targets,
                                rpn_proposals, rpn_train_data)

__all__ = ["PROPOSALS", "END2END_TARGETS", "default_classes", "detector_net",
           "detector_net_both", "net_label"]

#: Where the RoIs come from: the net's own RPN (Faster R-CNN) or a file
#: (Fast R-CNN).
PROPOSALS = ("rpn", "external")
#: ProposalTarget settings beyond the defaults: py-faster-rcnn's
#: faster_rcnn_end2end.yml (TRAIN.BG_THRESH_LO 0.0).
END2END_TARGETS = dict(bg_thresh_lo=0.0)


def default_classes(backbone):
    """The built-in dataset's 7 for the tiny net, PASCAL VOC's 21 else."""
    return TINY_CLASSES if backbone == "tiny" else 21


def net_label(backbone, proposals):
    """The native net's name: "Faster R-CNN tiny", "Fast R-CNN ZF", ..."""
    kind = "Faster R-CNN" if proposals == "rpn" else "Fast R-CNN"
    return f"{kind} {HEADS[backbone].name.replace('Faster R-CNN ', '')}"


def _check(backbone, classes, phase, proposals, python_layers):
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, found {backbone!r}")
    if phase not in ("TRAIN", "TEST"):
        raise ValueError(f"phase must be TRAIN or TEST, found {phase!r}")
    if proposals not in PROPOSALS:
        raise ValueError(f"proposals must be one of {', '.join(PROPOSALS)}, found {proposals!r}")
    if classes < 2:
        raise ValueError(f"classes counts the background too and must be >= 2, found {classes}")
    if backbone == "tiny" and python_layers:
        raise ValueError("the tiny net is written in the native form only (its anchors and "
                         "scales have no place in py-faster-rcnn's Python-layer files)")


def detector_net(backbone="tiny", classes=None, *, phase="TRAIN", proposals="rpn",
                 python_layers=False, image=None, test_input="legacy"):
    """Prototxt text of one phase of a Faster R-CNN (``proposals="rpn"``) or
    Fast R-CNN (``"external"``) net on ``backbone``.

    ``classes`` includes the background (default ``default_classes``).
    ``image`` (height, width) sizes the data layer's scale and the test
    inputs (default: the backbone's, 600 x 1000 or the tiny net's 192 x 256;
    the Python form's test net declares 224 x 224 as py-faster-rcnn's do).
    ``test_input``: "legacy" (``input:`` fields) or "layer" (an Input
    layer, which an include rule can select; the TEST net then also uses
    the TRAIN net's param specs so the layers both phases share are one
    text)."""
    phase = phase.upper()
    classes = default_classes(backbone) if classes is None else classes
    _check(backbone, classes, phase, proposals, python_layers)
    head, train, rpn = HEADS[backbone], phase == "TRAIN", proposals == "rpn"
    size = tuple(image) if image else (TEST_IMAGE_PY if python_layers else head.image)
    image = tuple(image) if image else head.image
    style = "train" if train or test_input == "layer" else "test"
    trunk = faster_rcnn_trunk(backbone, style=style)
    parts = [f'name: "{head.name if python_layers else net_label(backbone, proposals)}"\n']
    if train and rpn:
        parts.append(rpn_train_data(python_layers, classes, image))
    elif train:
        parts.append(fast_rcnn_data(python_layers, classes, image,
                                    name="data" if python_layers else "input-data"))
    else:
        inputs = [("data", (1, 3) + tuple(size)), ("im_info", (1, 3))]
        inputs += [] if rpn else [("rois", (1, 5))]
        parts.append(input_layer("input-data", inputs) if test_input == "layer"
                     else legacy_inputs(inputs))
    parts.append(trunk.text)
    if rpn and train:
        target = dict(num_classes=classes, **END2END_TARGETS)
        parts += [rpn_train_layers(backbone, trunk, python_layers),
                  rpn_proposals(python_layers, ["rpn_rois"], None, head.anchors),
                  proposal_targets(python_layers, classes, target)]
    elif rpn:
        parts.append(rpn_test_layers(backbone, trunk, python_layers, ["rois"], style=style))
    parts.append(roi_head(backbone, trunk, classes, style))
    if train:
        parts.append(fast_rcnn_losses(propagate_down=True))
    else:
        parts.append(layer("cls_prob", "Softmax", ["cls_score"], ["cls_prob"]))
    return "".join(parts)


def detector_net_both(backbone="tiny", classes=None, *, proposals="rpn", image=None):
    """One native file with the TRAIN and TEST nets of ``detector_net``."""
    options = dict(proposals=proposals, image=image, test_input="layer")
    return merge_phases(detector_net(backbone, classes, phase="TRAIN", **options),
                        detector_net(backbone, classes, phase="TEST", **options))
