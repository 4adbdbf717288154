"""Generator of py-faster-rcnn's VGG16 Faster R-CNN networks.

    python -m prototxt.faster_rcnn --net end2end_train > train.prototxt
    python -m prototxt.faster_rcnn --net stage1_rpn_train --python-layers
    python -m prototxt.faster_rcnn --out-dir my_nets/ [--python-layers]   # all eight

The nets, as py-faster-rcnn ships them (models/pascal_voc/VGG16/
faster_rcnn_end2end/{train,test}.prototxt and faster_rcnn_alt_opt/*.pt):

- ``end2end_train`` / ``end2end_test``: VGG16 conv1_1 .. conv5_3 (conv1 and
  conv2 frozen, lr_mult 0), RPN on conv5_3 (rpn_conv/3x3 512, 2A scores, 4A
  deltas), Proposal, in training AnchorTarget + RPN losses and
  ProposalTarget; RoI max pooling 7 x 7 at 1/16 (roi_pool5), fc6 / fc7 4096
  with ReLU and dropout 0.5, cls_score (classes) and bbox_pred
  (4 x classes), SoftmaxWithLoss and SmoothL1Loss (sigma 1), cls_prob in
  test.
- The alternating optimization's four training stages:
  ``stage1_rpn_train`` (conv1-2 frozen) and ``stage2_rpn_train`` (every
  convolution frozen) train the RPN from data / im_info / gt_boxes and carry
  fc6 / fc7 as frozen dummies fed by a zero DummyData (1, 25088) so their
  initial weights are saved; ``stage1_fast_rcnn_train`` (conv1-2 frozen)
  and ``stage2_fast_rcnn_train`` (every convolution frozen) train the
  detector on precomputed proposals (data layer tops data, rois, labels,
  bbox_targets, bbox_inside_weights, bbox_outside_weights) and carry the
  RPN convolutions as frozen dummies ending in Silence layers.
- ``rpn_test`` (proposals and their scores) and ``faster_rcnn_test`` (the
  whole detector), with no param specs and no dropout.

``python_layers=True`` writes py-faster-rcnn's own form (type "Python"
layers for roi_data_layer.layer.RoIDataLayer, rpn.anchor_target_layer,
rpn.proposal_layer, rpn.proposal_target_layer), which this engine maps onto
its native layers; the default writes the native typed layers, and Input
layers for the training data (data (1, 3, 600, 1000), im_info (1, 3),
gt_boxes (1, 5); for the Fast R-CNN stages 128 RoIs) until the
dataset-reading data layer exists.
"""
import argparse
import sys
from pathlib import Path

from prototxt.resnet import Word, layer, specs
from prototxt.rpn_parts import (CONSTANT_0, SPATIAL_SCALE, TEST_IMAGE_PY, TRAIN_IMAGE,
                                gaussian, input_layer, legacy_inputs, python_layer, rpn_head,
                                rpn_losses, rpn_proposals, rpn_score_reshape, rpn_train_data,
                                proposal_targets)

# (name, output channels) per block; max pooling between blocks.
VGG16_BLOCKS = ((("conv1_1", 64), ("conv1_2", 64)),
                (("conv2_1", 128), ("conv2_2", 128)),
                (("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256)),
                (("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512)),
                (("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512)))
POOLED = 7               # roi_pool5 grid
FC_CHANNELS = 4096
ROIS_PER_IMAGE = 128
NETS = ("end2end_train", "end2end_test", "stage1_rpn_train", "stage1_fast_rcnn_train",
        "stage2_rpn_train", "stage2_fast_rcnn_train", "rpn_test", "faster_rcnn_test")
# py-faster-rcnn's file of each net.
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

# Param spec styles: trainable weight / bias lr_mult 1 / 2 (the test files
# also spell out decay_mult 1 / 0), frozen lr_mult 0 / decay_mult 0, none.
_PARAMS = {"train": specs((1, None), (2, None)), "test": specs((1, 1), (2, 0)),
           "frozen": specs((0, 0), (0, 0)), None: []}


def vgg16(frozen_blocks, style):
    """conv1_1 .. relu5_3 from data; ``frozen_blocks`` block numbers (1..5)
    get frozen specs, the others ``style`` ("train", "test" or None)."""
    parts, bottom = [], "data"
    for number, block in enumerate(VGG16_BLOCKS, start=1):
        param = _PARAMS["frozen" if number in frozen_blocks and style else style]
        for name, channels in block:
            parts.append(layer(name, "Convolution", [bottom], [name], param=param,
                               convolution_param=dict(num_output=channels, pad=1, kernel_size=3)))
            parts.append(layer(f"relu{name[4:]}", "ReLU", [name], [name]))
            bottom = name
        if number < len(VGG16_BLOCKS):
            parts.append(layer(f"pool{number}", "Pooling", [bottom], [f"pool{number}"],
                               pooling_param=dict(pool=Word("MAX"), kernel_size=2, stride=2)))
            bottom = f"pool{number}"
    return "".join(parts)


def _fc(name, bottom, num_output, style, std=None):
    fillers = dict(weight_filler=gaussian(std), bias_filler=CONSTANT_0) if std else {}
    return layer(name, "InnerProduct", [bottom], [name], param=_PARAMS[style],
                 inner_product_param=dict(num_output=num_output, **fillers))


def _relu_dropout(index, dropout):
    blob = f"fc{index}"
    text = layer(f"relu{index}", "ReLU", [blob], [blob])
    if dropout:
        text += layer(f"drop{index}", "Dropout", [blob], [blob],
                      dropout_param=dict(dropout_ratio=0.5))
    return text


def fast_rcnn_head(classes, style, *, dropout=True, fillers=True):
    """roi_pool5 on conv5_3 and rois, fc6, fc7, cls_score, bbox_pred."""
    return "".join([
        layer("roi_pool5", "ROIPooling", ["conv5_3", "rois"], ["pool5"], roi_pooling_param=dict(
            pooled_w=POOLED, pooled_h=POOLED, spatial_scale=SPATIAL_SCALE)),
        _fc("fc6", "pool5", FC_CHANNELS, style), _relu_dropout(6, dropout),
        _fc("fc7", "fc6", FC_CHANNELS, style), _relu_dropout(7, dropout),
        _fc("cls_score", "fc7", classes, style, 0.01 if fillers else None),
        _fc("bbox_pred", "fc7", 4 * classes, style, 0.001 if fillers else None),
    ])


def fast_rcnn_losses(propagate_down):
    extra = dict(propagate_down=[True, False]) if propagate_down else {}
    return "".join([
        layer("loss_cls", "SoftmaxWithLoss", ["cls_score", "labels"], ["loss_cls"],
              loss_weight=[1.0], **extra),
        layer("loss_bbox", "SmoothL1Loss",
              ["bbox_pred", "bbox_targets", "bbox_inside_weights", "bbox_outside_weights"],
              ["loss_bbox"], loss_weight=[1.0]),
    ])


def fast_rcnn_data(python_layers, classes):
    """The data layer of the Fast R-CNN stages: precomputed RoIs and targets."""
    tops = ["data", "rois", "labels", "bbox_targets", "bbox_inside_weights",
            "bbox_outside_weights"]
    if python_layers:
        return python_layer("data", [], tops, "roi_data_layer.layer", "RoIDataLayer",
                            f"'num_classes': {classes}")
    box = (ROIS_PER_IMAGE, 4 * classes)
    return input_layer("data", list(zip(tops, [(1, 3) + TRAIN_IMAGE, (ROIS_PER_IMAGE, 5),
                                               (ROIS_PER_IMAGE,), box, box, box])))


def _dummy_fast_rcnn():
    """Frozen fc6 / fc7 fed by zeros, so an RPN stage saves their weights."""
    return "".join([
        layer("dummy_roi_pool_conv5", "DummyData", [], ["dummy_roi_pool_conv5"],
              dummy_data_param=dict(shape=dict(dim=[1, 512 * POOLED * POOLED]),
                                    data_filler=CONSTANT_0)),
        _fc("fc6", "dummy_roi_pool_conv5", FC_CHANNELS, "frozen"), _relu_dropout(6, True),
        _fc("fc7", "fc6", FC_CHANNELS, "frozen"),
        layer("silence_fc7", "Silence", ["fc7"], []),
    ])


def _dummy_rpn():
    """Frozen RPN convolutions, so a Fast R-CNN stage saves their weights."""
    return rpn_head("conv5_3", param_style="frozen") + "".join([
        layer("silence_rpn_cls_score", "Silence", ["rpn_cls_score"], []),
        layer("silence_rpn_bbox_pred", "Silence", ["rpn_bbox_pred"], []),
    ])


def faster_rcnn_net(net="end2end_train", classes=21, *, python_layers=False, image=None):
    """Prototxt text of one of ``NETS`` for ``classes`` classes (background
    included). ``image`` (height, width) sizes the test nets' inputs (default
    224 x 224 as py-faster-rcnn declares them; the native form 600 x 1000)."""
    if net not in NETS:
        raise ValueError(f"net must be one of {', '.join(NETS)}, found {net!r}")
    if classes < 2:
        raise ValueError(f"classes counts the background too and must be >= 2, found {classes}")
    parts = ['name: "VGG_ILSVRC_16_layers"\n']
    test_size = tuple(image) if image else (TEST_IMAGE_PY if python_layers else TRAIN_IMAGE)
    test_inputs = legacy_inputs([("data", (1, 3) + test_size), ("im_info", (1, 3))])
    frozen_stage = {"stage2_rpn_train": {1, 2, 3, 4, 5}, "stage2_fast_rcnn_train": {1, 2, 3, 4, 5}}
    if net == "end2end_train":
        parts += [rpn_train_data(python_layers, classes), vgg16({1, 2}, "train"),
                  rpn_head("conv5_3"), rpn_score_reshape(), rpn_losses(python_layers),
                  rpn_proposals(python_layers, ["rpn_rois"]),
                  proposal_targets(python_layers, classes, dict(num_classes=classes)),
                  fast_rcnn_head(classes, "train"), fast_rcnn_losses(propagate_down=True)]
    elif net == "end2end_test":
        parts += [test_inputs, vgg16({1, 2}, "test"), rpn_head("conv5_3", param_style="test"),
                  rpn_score_reshape(), rpn_proposals(python_layers, ["rois"]),
                  fast_rcnn_head(classes, "test"),
                  layer("cls_prob", "Softmax", ["cls_score"], ["cls_prob"])]
    elif net.endswith("rpn_train"):
        parts += [rpn_train_data(python_layers, classes),
                  vgg16(frozen_stage.get(net, {1, 2}), "train"),
                  rpn_head("conv5_3"), rpn_score_reshape(), rpn_losses(python_layers),
                  _dummy_fast_rcnn()]
    elif net.endswith("fast_rcnn_train"):
        parts += [fast_rcnn_data(python_layers, classes),
                  vgg16(frozen_stage.get(net, {1, 2}), "train"),
                  fast_rcnn_head(classes, "train"), fast_rcnn_losses(propagate_down=False),
                  _dummy_rpn()]
    elif net == "rpn_test":
        parts += [test_inputs, vgg16(set(), None), rpn_head("conv5_3", param_style=None,
                                                            fillers=False),
                  rpn_score_reshape(), rpn_proposals(python_layers, ["rois", "scores"])]
    else:  # faster_rcnn_test
        parts += [test_inputs, vgg16(set(), None), rpn_head("conv5_3", param_style=None,
                                                            fillers=False),
                  rpn_score_reshape(), rpn_proposals(python_layers, ["rois"]),
                  fast_rcnn_head(classes, None, dropout=False, fillers=False),
                  layer("cls_prob", "Softmax", ["cls_score"], ["cls_prob"])]
    return "".join(parts)


def generated_file(net="end2end_train", classes=21, *, python_layers=False):
    command = (f"python -m prototxt.faster_rcnn --net {net} --classes {classes}" +
               (" --python-layers" if python_layers else ""))
    return (f"# Generated by: {command}\n# Do not edit: change the options and regenerate.\n" +
            faster_rcnn_net(net, classes, python_layers=python_layers))


def file_name(net, python_layers=False):
    return f"faster_rcnn_vgg16_{net}{'_python_layers' if python_layers else ''}.prototxt"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m prototxt.faster_rcnn",
        description="Write py-faster-rcnn's VGG16 Faster R-CNN networks (end-to-end and "
                    "alternating optimization stages).")
    parser.add_argument("--net", choices=NETS, default="end2end_train")
    parser.add_argument("--classes", type=int, default=21,
                        help="number of classes including the background (default 21)")
    parser.add_argument("--python-layers", action="store_true",
                        help="py-faster-rcnn's type: \"Python\" layers instead of native ones")
    parser.add_argument("--out-dir", type=Path, help="write all eight nets there")
    args = parser.parse_args(argv)
    try:
        if args.out_dir:
            args.out_dir.mkdir(parents=True, exist_ok=True)
            for net in NETS:
                path = args.out_dir / file_name(net, args.python_layers)
                path.write_text(generated_file(net, args.classes, python_layers=args.python_layers))
                print(f"wrote {path}")
        else:
            sys.stdout.write(generated_file(args.net, args.classes,
                                            python_layers=args.python_layers))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
