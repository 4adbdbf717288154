"""Generator of Faster R-CNN and Fast R-CNN networks on any backbone, and of
py-faster-rcnn's own nets (ZF, VGG_CNN_M_1024, VGG16).

    python -m prototxt.faster_rcnn --backbone tiny --phase BOTH > my_net.prototxt
    python -m prototxt.faster_rcnn --backbone resnet101 --classes 81 --phase BOTH
    python -m prototxt.faster_rcnn --backbone zf --phase TEST --python-layers
    python -m prototxt.faster_rcnn --backbone tiny --proposals external --phase BOTH
    python -m prototxt.faster_rcnn --regenerate      # prototxt/faster_rcnn_tiny*, fast_rcnn_tiny*
    python -m prototxt.faster_rcnn --net end2end_train > train.prototxt     # py-faster-rcnn's
    python -m prototxt.faster_rcnn --net stage1_rpn_train --backbone zf --python-layers
    python -m prototxt.faster_rcnn --out-dir my_nets/ [--backbone zf] [--python-layers]

``--backbone`` (tiny, zf, vgg_cnn_m_1024, vgg16, resnet50, resnet101)
writes one Faster R-CNN net (``prototxt.faster_rcnn_backbone``: trunk,
RPN, RoI head; the trunks and heads are in ``prototxt.faster_rcnn_parts``),
or with ``--proposals external`` a Fast R-CNN net trained on proposals from
a file; ``--phase BOTH`` puts TRAIN and TEST in one file, the form
``python -m solver.train`` trains. The committed files (``--regenerate``)
are listed in ``prototxt.faster_rcnn_files``.

``--net`` writes one of py-faster-rcnn's eight nets for ``--backbone`` zf,
vgg_cnn_m_1024 or vgg16 (default), as it ships them
(models/pascal_voc/<NET>/faster_rcnn_end2end/{train,test}.prototxt and
faster_rcnn_alt_opt/*.pt):

- ``end2end_train`` / ``end2end_test``: the trunk (VGG16 with conv1 and
  conv2 frozen, VGG_CNN_M_1024 with conv1 frozen, ZF all trained), the RPN
  on its last convolution (rpn_conv/3x3 512, ZF and VGG-M 256; 2A scores,
  4A deltas), Proposal, in training AnchorTarget + RPN losses and
  ProposalTarget; RoI max pooling at 1/16 (VGG16 7 x 7 roi_pool5, ZF 6 x 6
  roi_pool_conv5, VGG-M 6 x 6 roi_pool5), fc6 / fc7 (4096 / 4096, VGG-M
  4096 / 1024) with ReLU and dropout 0.5, cls_score (classes) and bbox_pred
  (4 x classes), SoftmaxWithLoss and SmoothL1Loss (sigma 1), cls_prob in
  test.
- The alternating optimization's four training stages:
  ``stage1_rpn_train`` (the reference's frozen convolutions) and
  ``stage2_rpn_train`` (every convolution frozen) train the RPN from data /
  im_info / gt_boxes and carry fc6 / fc7 as frozen dummies fed by a zero
  DummyData (1, channels x pooled^2: 25088 for VGG16) so their initial
  weights are saved; ``stage1_fast_rcnn_train`` and
  ``stage2_fast_rcnn_train`` (every convolution frozen) train the detector
  on precomputed proposals (data layer tops data, rois, labels,
  bbox_targets, bbox_inside_weights, bbox_outside_weights: natively the
  RoIData layer's precomputed-RoI form with Fast R-CNN's sampling) and
  carry the RPN convolutions as frozen dummies ending in Silence layers.
- ``rpn_test`` (proposals and their scores) and ``faster_rcnn_test`` (the
  whole detector), with no param specs and no dropout.

``python_layers=True`` writes py-faster-rcnn's own form (type "Python"
layers for roi_data_layer.layer.RoIDataLayer, rpn.anchor_target_layer,
rpn.proposal_layer, rpn.proposal_target_layer), which this engine maps onto
its native layers; the default writes the native typed layers, with the
RoIData layer reading the dataset ``python -m solver.train`` gives it.
"""
import argparse
import sys
from pathlib import Path

from prototxt.generator_cli import (PHASE_HELP, add_phase_argument, add_regenerate_argument,
                                     generated_header, regenerate)
from prototxt.faster_rcnn_backbone import PROPOSALS
from prototxt.faster_rcnn_files import committed_files
from prototxt.faster_rcnn_files import generated_file as generated_file_for
from prototxt.faster_rcnn_parts import (BACKBONES, ALL_FROZEN, FROZEN, HEADS, fast_rcnn_data,
                                        fast_rcnn_losses, faster_rcnn_trunk, param_specs,
                                        roi_head, rpn_test_layers, rpn_train_layers, vgg16)
from prototxt.resnet import layer
from prototxt.rpn_parts import (CONSTANT_0, TEST_IMAGE_PY, TRAIN_IMAGE, legacy_inputs, rpn_head,
                                rpn_proposals, rpn_train_data, proposal_targets)


__all__ = ["NETS", "REFERENCE_FILES", "PY_FASTER_RCNN_BACKBONES", "faster_rcnn_net",
           "generated_file", "file_name", "vgg16", "fast_rcnn_data", "main"]

ROIS_PER_IMAGE = 128
NETS = ("end2end_train", "end2end_test", "stage1_rpn_train", "stage1_fast_rcnn_train",
        "stage2_rpn_train", "stage2_fast_rcnn_train", "rpn_test", "faster_rcnn_test")
# py-faster-rcnn's file of each net (under models/pascal_voc/<backbone>/).
REFERENCE_FILES = {
    "end2end_train": "faster_rcnn_end2end/train.prototxt",
    "end2end_test": "faster_rcnn_end2end/test.prototxt",
    "stage1_rpn_train": "faster_rcnn_alt_opt/stage1_rpn_train.pt",
    "stage1_fast_rcnn_train": "faster_rcnn_alt_opt/stage1_fast_rcnn_train.pt",
    "stage2_rpn_train": "faster_rcnn_alt_opt/stage2_rpn_train.pt",
    "stage2_fast_rcnn_train": "faster_rcnn_alt_opt/stage2_fast_rcnn_train.pt",
    "rpn_test": "faster_rcnn_alt_opt/rpn_test.pt",
    "faster_rcnn_test": "faster_rcnn_alt_opt/faster_rcnn_test.pt",
}
#: The backbones py-faster-rcnn ships nets for (``--net`` takes these).
PY_FASTER_RCNN_BACKBONES = ("zf", "vgg_cnn_m_1024", "vgg16")

def _dummy_fast_rcnn(backbone, trunk):
    """Frozen fc6 / fc7 fed by zeros, so an RPN stage saves their weights."""
    head = HEADS[backbone]
    six, seven = head.fc
    frozen = param_specs("frozen")
    return "".join([
        layer("dummy_roi_pool_conv5", "DummyData", [], ["dummy_roi_pool_conv5"],
              dummy_data_param=dict(shape=dict(dim=[1, trunk.channels * head.pooled ** 2]),
                                    data_filler=CONSTANT_0)),
        layer("fc6", "InnerProduct", ["dummy_roi_pool_conv5"], ["fc6"], param=frozen,
              inner_product_param=dict(num_output=six)),
        layer("relu6", "ReLU", ["fc6"], ["fc6"]),
        layer("drop6", "Dropout", ["fc6"], ["fc6"], dropout_param=dict(dropout_ratio=0.5)),
        layer("fc7", "InnerProduct", ["fc6"], ["fc7"], param=frozen,
              inner_product_param=dict(num_output=seven)),
        layer("silence_fc7", "Silence", ["fc7"], []),
    ])


def _dummy_rpn(backbone, trunk):
    """Frozen RPN convolutions, so a Fast R-CNN stage saves their weights."""
    return rpn_head(trunk.top, param_style="frozen", channels=HEADS[backbone].rpn_channels) + \
        "".join([layer("silence_rpn_cls_score", "Silence", ["rpn_cls_score"], []),
                 layer("silence_rpn_bbox_pred", "Silence", ["rpn_bbox_pred"], [])])


def faster_rcnn_net(net="end2end_train", classes=21, *, python_layers=False, image=None,
                    backbone="vgg16"):
    """Prototxt text of one of py-faster-rcnn's ``NETS`` for ``backbone``
    (one of ``PY_FASTER_RCNN_BACKBONES``) and ``classes`` classes
    (background included). ``image`` (height, width) sizes the test nets'
    inputs (default 224 x 224 as py-faster-rcnn declares them; the native
    form 600 x 1000)."""
    if net not in NETS:
        raise ValueError(f"net must be one of {', '.join(NETS)}, found {net!r}")
    if backbone not in PY_FASTER_RCNN_BACKBONES:
        raise ValueError(f"py-faster-rcnn's nets (--net) exist for "
                         f"{', '.join(PY_FASTER_RCNN_BACKBONES)}, found {backbone!r}")
    if classes < 2:
        raise ValueError(f"classes counts the background too and must be >= 2, found {classes}")
    parts = [f'name: "{HEADS[backbone].name}"\n']
    test_size = tuple(image) if image else (TEST_IMAGE_PY if python_layers else TRAIN_IMAGE)
    test_inputs = legacy_inputs([("data", (1, 3) + test_size), ("im_info", (1, 3))])
    frozen = ALL_FROZEN if net.startswith("stage2") else FROZEN[backbone]
    trunk = faster_rcnn_trunk(backbone, style="train", frozen=frozen)
    if net == "end2end_train":
        parts += [rpn_train_data(python_layers, classes), trunk.text,
                  rpn_train_layers(backbone, trunk, python_layers),
                  rpn_proposals(python_layers, ["rpn_rois"]),
                  proposal_targets(python_layers, classes, dict(num_classes=classes)),
                  roi_head(backbone, trunk, classes, "train"),
                  fast_rcnn_losses(propagate_down=True)]
    elif net == "end2end_test":
        trunk = faster_rcnn_trunk(backbone, style="test")
        parts += [test_inputs, trunk.text, rpn_test_layers(backbone, trunk, python_layers, ["rois"]),
                  roi_head(backbone, trunk, classes, "test"),
                  layer("cls_prob", "Softmax", ["cls_score"], ["cls_prob"])]
    elif net.endswith("rpn_train"):
        parts += [rpn_train_data(python_layers, classes), trunk.text,
                  rpn_train_layers(backbone, trunk, python_layers), _dummy_fast_rcnn(backbone, trunk)]
    elif net.endswith("fast_rcnn_train"):
        parts += [fast_rcnn_data(python_layers, classes), trunk.text,
                  roi_head(backbone, trunk, classes, "train"),
                  fast_rcnn_losses(propagate_down=False), _dummy_rpn(backbone, trunk)]
    else:  # rpn_test, faster_rcnn_test: no param specs, no dropout
        trunk = faster_rcnn_trunk(backbone, style=None)
        tops = ["rois", "scores"] if net == "rpn_test" else ["rois"]
        parts += [test_inputs, trunk.text,
                  rpn_test_layers(backbone, trunk, python_layers, tops, style=None, fillers=False)]
        if net == "faster_rcnn_test":
            parts += [roi_head(backbone, trunk, classes, None, dropout=False, fillers=False),
                      layer("cls_prob", "Softmax", ["cls_score"], ["cls_prob"])]
    return "".join(parts)


def generated_file(net="end2end_train", classes=21, *, python_layers=False, backbone="vgg16"):
    """``faster_rcnn_net`` text with a header naming the command that wrote it."""
    command = (f"python -m prototxt.faster_rcnn --net {net} --classes {classes}" +
               (f" --backbone {backbone}" if backbone != "vgg16" else "") +
               (" --python-layers" if python_layers else ""))
    return (generated_header(command) +
            faster_rcnn_net(net, classes, python_layers=python_layers, backbone=backbone))


def file_name(net, python_layers=False, backbone="vgg16"):
    return f"faster_rcnn_{backbone}_{net}{'_python_layers' if python_layers else ''}.prototxt"


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m prototxt.faster_rcnn",
        description="Write a Faster R-CNN (or, with --proposals external, Fast R-CNN) network "
                    "on a backbone (--backbone), or one of py-faster-rcnn's end-to-end and "
                    "alternating-optimization nets (--net) for ZF, VGG_CNN_M_1024 or VGG16.")
    parser.add_argument("--backbone", choices=BACKBONES,
                        help="trunk and head (default: vgg16 with --net or --out-dir)")
    parser.add_argument("--net", choices=NETS,
                        help="one of py-faster-rcnn's nets (default end2end_train when no "
                             "--backbone is given)")
    parser.add_argument("--classes", type=int,
                        help="number of classes including the background (default 21, PASCAL "
                             "VOC; tiny: 7, the built-in dataset)")
    add_phase_argument(parser, help_text="with --backbone: " + PHASE_HELP)
    parser.add_argument("--proposals", choices=PROPOSALS, default="rpn",
                        help="rpn: Faster R-CNN (the net's own RPN); external: Fast R-CNN on "
                             "proposals from a file (solver.train NET --proposals FILE)")
    parser.add_argument("--python-layers", action="store_true",
                        help="py-faster-rcnn's type: \"Python\" layers instead of native ones")
    parser.add_argument("--out-dir", type=Path,
                        help="write py-faster-rcnn's eight nets of the backbone there")
    add_regenerate_argument(parser)
    return parser


def _write_legacy(args, backbone, classes):
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for net in NETS:
            path = args.out_dir / file_name(net, args.python_layers, backbone)
            path.write_text(generated_file(net, classes, python_layers=args.python_layers,
                                           backbone=backbone))
            print(f"wrote {path}")
    else:
        sys.stdout.write(generated_file(args.net or "end2end_train", classes,
                                        python_layers=args.python_layers, backbone=backbone))


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.regenerate:
        return regenerate(committed_files())
    try:
        if args.net or args.out_dir or not args.backbone:
            backbone = args.backbone or "vgg16"
            if args.phase != "TRAIN" or args.proposals != "rpn":
                raise ValueError("--phase and --proposals go with --backbone alone; --net "
                                 "names a phase and a proposal source itself")
            _write_legacy(args, backbone, 21 if args.classes is None else args.classes)
        else:
            sys.stdout.write(generated_file_for(args.backbone, args.classes, phase=args.phase,
                                                proposals=args.proposals,
                                                python_layers=args.python_layers))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
