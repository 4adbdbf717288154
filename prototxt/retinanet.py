"""Generator of a tiny RetinaNet-style detector (Lin et al. 2017, "Focal
Loss for Dense Object Detection"): a feature pyramid, shared classification
and box subnets on every level, sigmoid classification with the focal loss.

    python -m prototxt.retinanet --classes 7 --phase BOTH > my_retinanet.prototxt
    python -m prototxt.retinanet --phase TRAIN --data input     # Input stand-ins
    python -m prototxt.retinanet --regenerate       # prototxt/retinanet_tiny*.prototxt

The network, scaled down for the built-in dataset (192 x 256 images,
objects 24-96 pixels) and two CPU cores:

- backbone: five 3x3 convolutions with ReLU (MSRA init, no BatchNorm),
  the first at stride 2, a 2x2 max pooling before each of the others; C3,
  C4, C5 are the outputs at strides 8, 16, 32 (``TINY_BACKBONE``).
- pyramid (FPN's top-down pathway, from existing layers): a 1x1 lateral
  convolution to ``channels`` on each of C3-C5; P5 is C5's lateral; P4 =
  lateral(C4) + 2x upsampled P5 and P3 = lateral(C3) + 2x upsampled P4
  (Eltwise SUM), each then smoothed by a 3x3 convolution. The upsampling
  is nearest-neighbour, as FPN's: a Deconvolution with kernel 2, stride 2,
  one group per channel and its weights fixed at 1 (lr_mult 0). RetinaNet
  adds P6 and P7 for large objects; the dataset has none, so they are left
  out (``LEVELS``).
- heads: on every level the same classification subnet (``head_convs``
  3x3 convolutions + ReLU, then A * K outputs) and box subnet (the same
  convolutions, then A * 4 outputs); the levels share the weights through
  Caffe's named params (``param { name: ... }``). The classification
  output's bias starts at ``b = -log((1 - pi) / pi)``, pi = 0.01 (every
  anchor scores 0.01 at the start, so the many background anchors do not
  swamp the first iterations); its weights and the box output's are
  Gaussian with std 0.01, as in the paper.
- anchors: PriorBox on each level, A = 9: sizes 24, 48, 96 (levels 3-5)
  times 2^0, 2^(1/3), 2^(2/3), aspect ratios 1, 2 and 1/2 (RetinaNet's
  octave scales and ratios; its sizes are 32-512 for COCO). On the
  dataset's training boxes 99% of the objects have an anchor at IoU >= 0.5.
  Variance 1 (RetinaNet's box weights (1, 1, 1, 1)), CENTER_SIZE codes.
- predictions: each level's (N, A * K, H, W) scores and (N, A * 4, H, W)
  offsets are permuted to (N, H, W, ...) and flattened, then concatenated
  over the levels (SSD's layout), so anchor p's K scores are channels
  p * K .. p * K + K - 1: the anchor-major layout SigmoidFocalLoss reads.
- TRAIN: AnnotatedData (``data``, ``label``; the mean and scale of
  ``TRANSFORM``, warped to 192 x 256, random horizontal flips,
  ``BATCH_SIZE`` = 4 images) or, with
  ``data="input"``, Input stand-ins of the same blobs; RetinaNetTarget
  (layers/retinanet_target.py: IoU >= 0.5 positive, [0.4, 0.5) ignored, the
  foreground count); SigmoidFocalLoss (alpha 0.25, gamma 2, normalized by
  the foreground count); SmoothL1Loss with sigma 3 (beta = 1/9, RetinaNet's
  0.11) normalized by the foreground count through the outside weights.
- TEST: Input ``data`` (1, 3, 192, 256), Sigmoid (``cls_sigmoid``: not
  named cls_prob, which two-stage test nets use for a softmax over the
  classes and solver.train checks as such), DetectionOutput with no
  background column (background_label_id -1: label l is dataset class
  l + 1): scores above 0.05, at most 1000 per class before NMS at 0.5,
  100 per image (RetinaNet's inference settings), into ``detection_out``.

``classes`` counts the background (the built-in dataset: 7); the sigmoid
outputs are the K = classes - 1 object classes. Every count is computed
here from the options; change them and regenerate, do not edit a
generated file.
"""
import argparse
import math
import sys

from prototxt.generator_cli import (add_phase_argument, add_regenerate_argument, generated_header,
                                    regenerate)
from prototxt.resnet import Word, layer
from prototxt.rfcn import TINY_CLASSES, TINY_IMAGE, phase_text, solver_file
from prototxt.rpn_parts import CONSTANT_0, gaussian, input_layer

# (name, output channels, stride, max pooling 2x2/2 before it): conv1 works
# at stride 2 (the full-size image is the costliest map); C3-C5 are the
# outputs of conv3 (stride 8), conv4 (16) and conv5 (32).
TINY_BACKBONE = (("conv1", 16, 2, False), ("conv2", 32, 1, True), ("conv3", 64, 1, True),
                 ("conv4", 96, 1, True), ("conv5", 128, 1, True))
# (level, backbone output, stride, anchor base size in pixels)
LEVELS = ((3, "conv3", 8, 24), (4, "conv4", 16, 48), (5, "conv5", 32, 96))
OCTAVE_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
ASPECT_RATIOS = (2.0,)        # with flip: 1, 2, 1/2
ANCHORS = len(OCTAVE_SCALES) * (1 + 2 * len(ASPECT_RATIOS))
CHANNELS = 64                 # pyramid and subnet width (RetinaNet: 256)
HEAD_CONVS = 2                # 3x3 convolutions per subnet (RetinaNet: 4)
PRIOR_PROBABILITY = 0.01
FOCAL = dict(alpha=0.25, gamma=2.0)
POSITIVE_IOU, NEGATIVE_IOU = 0.5, 0.4
BOX_SIGMA = 3.0               # smooth L1 beta = 1 / sigma^2 = 0.11
BATCH_SIZE = 4
# Caffe's DataTransformer: (pixel - mean) * scale; 0.017 ~ 1 / 58, the
# pixels' spread, so the MSRA-initialized convolutions start at unit scale.
# Horizontal flips (mirror) are the only augmentation: the dataset's shapes
# are left-right symmetric in kind, and 1000 images are few.
TRANSFORM = dict(mean_value=[104.0, 117.0, 123.0], scale=0.017, mirror=True)
TEST_OUTPUT = dict(confidence_threshold=0.05, nms_threshold=0.5, top_k=1000, keep_top_k=100)


def prior_bias(pi=PRIOR_PROBABILITY):
    """The classification output's initial bias, ``-log((1 - pi) / pi)``:
    sigmoid(b) = pi."""
    return -math.log((1 - pi) / pi)


def conv(name, bottom, num_output, kernel, *, weight_filler, bias_value=0.0, shared=None,
         stride=1):
    """A Convolution (pad keeps the size) with lr_mult 1 / 2 and no decay on
    the bias; ``shared`` names its two params so other levels share them."""
    names = (f"{shared}_w", f"{shared}_b") if shared else (None, None)
    param = [dict(name=names[0], lr_mult=1.0),
             dict(name=names[1], lr_mult=2.0, decay_mult=0.0)]
    bias = CONSTANT_0 if bias_value == 0 else dict(type="constant", value=bias_value)
    return layer(name, "Convolution", [bottom], [name], param=param,
                 convolution_param=dict(num_output=num_output, kernel_size=kernel,
                                        pad=kernel // 2, stride=stride if stride != 1 else None,
                                        weight_filler=weight_filler, bias_filler=bias))


def backbone(bottom="data"):
    """The backbone's text and its outputs {name: blob} (conv + ReLU, with
    max pooling before the convolutions that halve the size)."""
    parts = []
    for name, channels, stride, pool in TINY_BACKBONE:
        if pool:
            pooled = f"pool_{bottom}"
            parts.append(layer(pooled, "Pooling", [bottom], [pooled],
                               pooling_param=dict(pool=Word("MAX"), kernel_size=2, stride=2)))
            bottom = pooled
        parts.append(conv(name, bottom, channels, 3, weight_filler=dict(type="msra"),
                          stride=stride))
        parts.append(layer(f"{name}_relu", "ReLU", [name], [name]))
        bottom = name
    return "".join(parts)


def upsample(name, bottom, channels):
    """Nearest-neighbour 2x upsampling: a per-channel Deconvolution with
    kernel 2, stride 2 and fixed weights 1 (each cell copied to 2 x 2)."""
    return layer(name, "Deconvolution", [bottom], [name],
                 param=[dict(lr_mult=0.0, decay_mult=0.0)],
                 convolution_param=dict(num_output=channels, group=channels, kernel_size=2,
                                        stride=2, bias_term=False,
                                        weight_filler=dict(type="constant", value=1.0)))


def pyramid(channels=CHANNELS):
    """FPN's top-down pathway over LEVELS: the text and the level blobs
    (p3, p4, p5). ``topdown_p{l}`` is the map that goes down the pathway
    (lateral + ``up_p{l}``, the level above's topdown map upsampled; the
    top level's is its lateral), ``p{l}`` its 3x3-smoothed form that the
    heads see."""
    msra = dict(type="msra")
    parts, above, outputs = [], None, []
    for level, source, _, _ in reversed(LEVELS):
        lateral, topdown, up = f"lateral_p{level}", f"topdown_p{level}", f"up_p{level}"
        parts.append(conv(lateral, source, channels, 1, weight_filler=msra))
        if above is None:
            topdown = lateral
        else:
            parts.append(upsample(up, above, channels))
            parts.append(layer(topdown, "Eltwise", [lateral, up], [topdown],
                               eltwise_param=dict(operation=Word("SUM"))))
        parts.append(conv(f"p{level}", topdown, channels, 3, weight_filler=msra))
        above = topdown
        outputs.append(f"p{level}")
    return "".join(parts), outputs[::-1]


def subnet(kind, level, feature, outputs, bias_value, channels=CHANNELS, head_convs=HEAD_CONVS):
    """One level's classification ("cls") or box ("bbox") subnet, its
    weights shared with the other levels; returns (text, flattened blob)."""
    parts, bottom = [], feature
    for i in range(1, head_convs + 1):
        name = f"{kind}_conv{i}_p{level}"
        parts.append(conv(name, bottom, channels, 3, weight_filler=gaussian(0.01),
                          shared=f"{kind}_conv{i}"))
        parts.append(layer(f"{name}_relu", "ReLU", [name], [name]))
        bottom = name
    out = f"{kind}_out_p{level}"
    parts.append(conv(out, bottom, outputs, 3, weight_filler=gaussian(0.01),
                      bias_value=bias_value, shared=f"{kind}_out"))
    parts.append(layer(f"{out}_perm", "Permute", [out], [f"{out}_perm"],
                       permute_param=dict(order=[0, 2, 3, 1])))
    parts.append(layer(f"{out}_flat", "Flatten", [f"{out}_perm"], [f"{out}_flat"],
                       flatten_param=dict(axis=1)))
    return "".join(parts), f"{out}_flat"


def priors(level, feature, base):
    """PriorBox of one level: 9 anchors per cell over the octave scales and
    aspect ratios (boxes normalized by the input's size)."""
    return layer(f"priors_p{level}", "PriorBox", [feature, "data"], [f"priors_p{level}"],
                 prior_box_param=dict(min_size=[base * s for s in OCTAVE_SCALES],
                                      aspect_ratio=list(ASPECT_RATIOS), flip=True, clip=False,
                                      variance=[1.0], offset=0.5))


def heads(classes, levels_blobs):
    """The subnets on every level, the per-level priors, and the
    concatenated ``cls_score`` (N, P * K), ``bbox_pred`` (N, P * 4) and
    ``priors`` (1, 2, P * 4)."""
    parts, scores, boxes, anchors = [], [], [], []
    for (level, _, _, base), feature in zip(LEVELS, levels_blobs):
        text, flat = subnet("cls", level, feature, ANCHORS * (classes - 1), prior_bias())
        parts.append(text)
        scores.append(flat)
        text, flat = subnet("bbox", level, feature, ANCHORS * 4, 0.0)
        parts.append(text)
        boxes.append(flat)
        parts.append(priors(level, feature, base))
        anchors.append(f"priors_p{level}")
    parts.append(layer("cls_score", "Concat", scores, ["cls_score"], concat_param=dict(axis=1)))
    parts.append(layer("bbox_pred", "Concat", boxes, ["bbox_pred"], concat_param=dict(axis=1)))
    parts.append(layer("priors", "Concat", anchors, ["priors"], concat_param=dict(axis=2)))
    return "".join(parts)


def train_data(image=TINY_IMAGE, data="annotated", batch_size=BATCH_SIZE, boxes=4):
    """AnnotatedData (tops data, label) as the contract's input, or Input
    stand-ins of those shapes (``boxes`` label rows) for feeding by hand."""
    if data == "input":
        return input_layer("input-data", [("data", (batch_size, 3) + tuple(image)),
                                          ("label", (1, 1, boxes, 8))])
    if data != "annotated":
        raise ValueError(f"data must be 'annotated' or 'input', found {data!r}")
    transform = dict(TRANSFORM, resize_param=dict(
        height=image[0], width=image[1], resize_mode=Word("WARP")))
    return layer("data", "AnnotatedData", [], ["data", "label"], transform_param=transform,
                 data_param=dict(batch_size=batch_size))


def train_losses(classes):
    """RetinaNetTarget and the two losses."""
    match = dict(num_classes=classes, background_label_id=0, overlap_threshold=POSITIVE_IOU,
                 neg_overlap=NEGATIVE_IOU, match_type=Word("PER_PREDICTION"),
                 code_type=Word("CENTER_SIZE"))
    return "".join([
        layer("retinanet_target", "RetinaNetTarget", ["priors", "label", "data"],
              ["labels", "bbox_targets", "bbox_inside_weights", "bbox_outside_weights",
               "fg_num"], multibox_loss_param=match),
        layer("loss_cls", "SigmoidFocalLoss", ["cls_score", "labels", "fg_num"], ["loss_cls"],
              loss_weight=[1.0], propagate_down=[True, False, False],
              loss_param=dict(ignore_label=-1), focal_loss_param=FOCAL),
        layer("loss_bbox", "SmoothL1Loss",
              ["bbox_pred", "bbox_targets", "bbox_inside_weights", "bbox_outside_weights"],
              ["loss_bbox"], loss_weight=[1.0], propagate_down=[True, False, False, False],
              smooth_l1_loss_param=dict(sigma=BOX_SIGMA)),
    ])


def test_outputs(classes):
    """Sigmoid scores and DetectionOutput (no background column)."""
    o = TEST_OUTPUT
    return "".join([
        layer("cls_sigmoid", "Sigmoid", ["cls_score"], ["cls_sigmoid"]),
        layer("detection_out", "DetectionOutput", ["bbox_pred", "cls_sigmoid", "priors"],
              ["detection_out"], detection_output_param=dict(
                  num_classes=classes - 1, share_location=True, background_label_id=-1,
                  code_type=Word("CENTER_SIZE"), confidence_threshold=o["confidence_threshold"],
                  nms_param=dict(nms_threshold=o["nms_threshold"], top_k=o["top_k"]),
                  keep_top_k=o["keep_top_k"])),
    ])


def retinanet_net(classes=TINY_CLASSES, *, phase="TRAIN", data="annotated", image=TINY_IMAGE,
                  batch_size=BATCH_SIZE):
    """Prototxt text of the tiny RetinaNet for one phase (``classes``
    counts the background; ``data``: "annotated" or "input" for TRAIN)."""
    phase = phase.upper()
    if phase not in ("TRAIN", "TEST"):
        raise ValueError(f"phase must be TRAIN or TEST, found {phase!r}")
    if classes < 2:
        raise ValueError(f"classes counts the background too and must be >= 2, found {classes}")
    train = phase == "TRAIN"
    first = train_data(image, data, batch_size) if train else \
        input_layer("input-data", [("data", (1, 3) + tuple(image))])
    features, levels_blobs = pyramid()
    return "".join(['name: "RetinaNet tiny"\n', first, backbone(), features,
                    heads(classes, levels_blobs),
                    train_losses(classes) if train else test_outputs(classes)])


def command_line(classes, phase, data):
    return (f"python -m prototxt.retinanet --classes {classes} --phase {phase}"
            + (f" --data {data}" if data != "annotated" else ""))


def generated_file(classes=TINY_CLASSES, phase="BOTH", data="annotated"):
    """The net of one phase, or with phase "BOTH" both phases in one file
    (include rules: what solver.train trains and solver.test tests), with a
    header naming the command that wrote it."""
    return generated_header(command_line(classes, phase.upper(), data)) + phase_text(
        lambda one: retinanet_net(classes, phase=one, data=data), phase)


# The tiny net's solver: plain SGD from random initialization, BATCH_SIZE
# images per iteration, clipping as the tiny R-FCN's (no BatchNorm). Seed 0
# reached VOC07 mAP 0.931 on the 200 test images in 10 min 44 s of
# training on the shared 2-core machine (load average 3-5).
TINY_SOLVER = dict(
    net="retinanet_tiny.prototxt", base_lr=0.01, lr_policy="multistep", gamma=0.1,
    stepvalue=[1500], max_iter=2000, momentum=0.9, weight_decay=0.0001, iter_size=1,
    clip_gradients=20.0, display=50, average_loss=50, snapshot=0, random_seed=0)


def committed_files():
    """File name -> text of the files kept in prototxt/: the tiny net for the
    built-in dataset (both phases) and its solver."""
    return {
        "retinanet_tiny.prototxt": generated_file(TINY_CLASSES, "BOTH"),
        "retinanet_tiny_solver.prototxt": solver_file(
            TINY_SOLVER, "python -m prototxt.retinanet --regenerate "
                         "(prototxt/retinanet.py TINY_SOLVER)"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m prototxt.retinanet",
        description="Write a tiny RetinaNet-style detector (feature pyramid, shared subnets, "
                    "sigmoid focal loss) for AnnotatedData input.")
    parser.add_argument("--classes", type=int, default=TINY_CLASSES,
                        help=f"number of classes including the background (default "
                             f"{TINY_CLASSES}, the built-in dataset)")
    parser.add_argument("--data", choices=("annotated", "input"), default="annotated",
                        help="the TRAIN net's input: the AnnotatedData layer (what solver.train "
                             "feeds) or Input stand-ins of data and label (default annotated)")
    add_phase_argument(parser)
    add_regenerate_argument(parser, "prototxt/retinanet_tiny.prototxt and its solver")
    args = parser.parse_args(argv)
    if args.regenerate:
        return regenerate(committed_files())
    try:
        sys.stdout.write(generated_file(args.classes, args.phase, args.data))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
