"""Generator of R-FCN networks (Dai et al. 2016) in py-R-FCN's layout.

    python -m prototxt.rfcn --depth 101 --phase TRAIN --ohem > net.prototxt
    python -m prototxt.rfcn --depth 50 --out-dir my_nets/          # train + test
    python -m prototxt.rfcn --tiny --classes 5 --phase BOTH > my_net.prototxt
    python -m prototxt.rfcn --regenerate                            # prototxt/rfcn_*.prototxt

Every channel count is computed here from the options, never typed in:
rfcn_cls has classes * k * k outputs (21 x 7 x 7 = 1029 for PASCAL VOC),
rfcn_bbox 8 * k * k class-agnostic (one background and one foreground box)
or 4 * classes * k * k class-aware, the RPN 2 * A scores and 4 * A deltas
for A = 9 anchors. Change the options and regenerate; do not edit the
numbers in a generated file.

The network, as py-R-FCN trains it (models/pascal_voc/ResNet-101/
rfcn_end2end/{train_agnostic, train_agnostic_ohem, test_agnostic}.prototxt,
class-aware/{train_ohem, test}.prototxt):

- ResNet trunk with Kaiming He's layer names; BatchNorm frozen
  (use_global_stats, its and Scale's params lr_mult 0); conv1 and res2
  frozen (lr_mult 0); res5 at stride 1 with dilation 2 (pad 2) in its 3x3
  convolutions, so the whole net has stride 16.
- RPN on res4's last block (res4b22 / res4f): rpn_conv/3x3 (512) + ReLU,
  rpn_cls_score (2A), rpn_bbox_pred (4A), Softmax over the reshaped
  (N, 2, A*H, W) scores, Proposal; in TRAIN AnchorTarget and its two losses
  (SoftmaxWithLoss ignoring -1, SmoothL1Loss sigma 3) and ProposalTarget.
  py-R-FCN's class-aware files put the RPN on res5c instead (``rpn_on``).
- Head on res5c: conv_new_1 (1x1, 1024) + ReLU, rfcn_cls / rfcn_bbox (1x1),
  PSROIPooling at 1/16 with group_size k, k x k average pooling to
  cls_score / bbox_pred.
- TRAIN losses: SoftmaxWithLoss on the classes, SmoothL1LossOHEM on the
  boxes normalized by the 128 RoIs of an image (PRE_FIXED), Accuracy. OHEM:
  per-RoI losses (SoftmaxWithLossOHEM, SmoothL1LossOHEM, summed), then
  BoxAnnotatorOHEM keeps the 128 hardest RoIs of each image and the real
  losses see only those (labels_ohem, bbox_loss_weights_ohem).
- TEST: inputs data and im_info, Softmax to cls_prob, both reshaped to
  (R, classes) and (R, 8).

Two forms. ``python_layers=True`` writes py-R-FCN's own form, type "Python"
layers naming its modules (roi_data_layer.layer.RoIDataLayer,
rpn.anchor_target_layer, rpn.proposal_layer, rpn.proposal_target_layer);
this engine maps those onto its native layers, so the files py-R-FCN ships
load unchanged (their training settings live in py-R-FCN's
experiments/cfgs/*.yml, not in the prototxt). The default writes the native
typed layers (AnchorTarget, Proposal, ProposalTarget with their *_param
messages) and carries those settings in the file: RPN 6000 / 300 boxes
before / after NMS in training as in testing, class-agnostic targets, and
for OHEM all RoIs kept (batch_size -1) with background from IoU 0.

The native TRAIN net starts with the RoIData layer (layers/roi_data.py:
scales / max_size from ``image``), which ``python -m solver.train`` gives
the dataset; ``data="input"`` writes an Input placeholder instead.

``--phase BOTH`` (``rfcn_net_both``) writes the TRAIN and TEST nets into
one file: the layers both phases share once, the others with
``include { phase: ... }``; that is the form kept in prototxt/
(rfcn_resnet101.prototxt, rfcn_resnet101_ohem.prototxt, the ResNet-50 pair
and rfcn_tiny.prototxt) and the one ``python -m solver.train`` trains and
``solver.test`` tests.

The tiny net (``depth="tiny"``, ``--tiny``): the same R-FCN head (RPN,
PSROIPooling with k = 3, class-agnostic boxes) on five BatchNorm-free 3x3
convolutions with three max poolings (stride 8, 16-64 channels, the last
one dilated), anchors of 24, 48 and 96 pixels, images at their own 192 x 256,
for the built-in synthetic dataset (7 classes with the background); its
solver is rfcn_tiny_solver.prototxt (``TINY_SOLVER``).
"""
import argparse
import sys
from pathlib import Path

from prototxt.generator_cli import (add_phase_argument, add_regenerate_argument, generated_header,
                                    regenerate)
from prototxt.resnet import STAGES, Word, layer, message_lines, resnet_trunk, specs
from prototxt.rpn_parts import (CONSTANT_0, FEAT_STRIDE, HEAD_CHANNELS, ROIS_PER_IMAGE,
                                RPN_CHANNELS, RPN_POST_NMS, RPN_PRE_NMS, TEST_IMAGE_PY,
                                TRAIN_IMAGE, gaussian, input_layer, legacy_inputs,
                                proposal_targets, rpn_head, rpn_losses, rpn_proposals,
                                rpn_score_reshape, rpn_train_data)



# -- R-FCN ------------------------------------------------------------------------------

def rfcn_channels(classes, k, class_aware):
    """(rfcn_cls outputs, rfcn_bbox outputs, box outputs per RoI)."""
    box = 4 * classes if class_aware else 8
    return classes * k * k, box * k * k, box


# The tiny R-FCN: the same detection head on a small BatchNorm-free trunk,
# sized for the built-in synthetic dataset (192 x 256 images, objects 24-96
# pixels) and for training on two CPU cores in minutes.
TINY_IMAGE = (192, 256)    # shorter side 192, longer at most 256: the images' own size
TINY_CLASSES = 7           # the synthetic dataset's 6 shapes + background
TINY_K = 3
# (name, output channels, dilation, max pooling 2x2/2 after it): stride 8.
TINY_TRUNK = (("conv1", 16, 1, True), ("conv2", 32, 1, True), ("conv3", 64, 1, True),
              ("conv4", 64, 1, False), ("conv5", 64, 2, False))
TINY_STRIDE = 8
# Anchors 24, 48 and 96 pixels on a side (base 8 x scales), ratios 0.5, 1, 2.
TINY_ANCHORS = dict(feat_stride=TINY_STRIDE, base_size=8, scales=[3.0, 6.0, 12.0])
TINY_RPN_CHANNELS = 64
TINY_HEAD_CHANNELS = 128


def tiny_trunk(bottom="data"):
    """The tiny net's trunk: 3x3 convolutions with ReLU (MSRA init, no
    BatchNorm), max pooling after the first three; returns (text, top)."""
    parts = []
    for name, channels, dilation, pool in TINY_TRUNK:
        parts.append(layer(name, "Convolution", [bottom], [name], param=specs((1, None), (2, 0)),
                           convolution_param=dict(
                               num_output=channels, kernel_size=3, pad=dilation,
                               dilation=dilation if dilation != 1 else None,
                               weight_filler=dict(type="msra"), bias_filler=CONSTANT_0)))
        parts.append(layer(f"{name}_relu", "ReLU", [name], [name]))
        bottom = name
        if pool:
            top = "pool" + name[len("conv"):]
            parts.append(layer(top, "Pooling", [bottom], [top],
                               pooling_param=dict(pool=Word("MAX"), kernel_size=2, stride=2)))
            bottom = top
    return "".join(parts), bottom


def _depth_name(depth):
    return "tiny" if depth == "tiny" else f"ResNet-{depth}"


def rfcn_net(depth=101, classes=21, k=7, *, ohem=False, class_aware=False, python_layers=False,
             phase="TRAIN", rpn_on="res4", image=None, data="roidata", test_input="legacy"):
    """Prototxt text of an R-FCN net for one phase.

    ``depth``: 50 or 101 (152 works too) for the ResNet trunk, or "tiny" for
    the small trunk of ``TINY_TRUNK`` (stride 8, native form only);
    ``classes`` includes the background; ``k`` is the score map grid
    (group_size). ``rpn_on`` is "res4" (the class-agnostic reference files)
    or "res5" (py-R-FCN's class-aware files). ``image`` (height, width)
    sizes the native form's inputs and the data layer's scale (default
    600 x 1000, tiny 192 x 256; the Python form's test net declares
    224 x 224 as py-R-FCN's does). ``data``: "roidata" (the RoIData layer)
    or "input" (an Input placeholder) for the native TRAIN net.
    ``test_input``: "legacy" (``input:`` fields, as py-R-FCN's test files)
    or "layer" (an Input layer, which an include rule can select).
    """
    phase = phase.upper()
    _check_options(depth, classes, k, phase, python_layers, rpn_on)
    if ohem and phase == "TEST":
        ohem = False  # OHEM only changes the training losses
    train = phase == "TRAIN"
    tiny = depth == "tiny"
    image = tuple(image) if image else (TINY_IMAGE if tiny else None)
    trunk, rpn_bottom, head_bottom, anchors, stride, rpn_channels, head_channels = \
        _trunk(depth, rpn_on)

    parts = []
    if python_layers:
        parts.append(f'name: "ResNet-{depth}"\n')
    else:
        parts.append(f'name: "R-FCN {_depth_name(depth)}{" class-aware" if class_aware else ""}'
                     f'{" OHEM" if ohem else ""}"\n')
    if train:
        parts.append(rpn_train_data(python_layers, classes, image or TRAIN_IMAGE, data))
    else:
        size = image or (TEST_IMAGE_PY if python_layers else TRAIN_IMAGE)
        inputs = [("data", (1, 3) + tuple(size)), ("im_info", (1, 3))]
        parts.append(input_layer("input-data", inputs) if test_input == "layer"
                     else legacy_inputs(inputs))
    parts.append(trunk)

    # A test net written to share one file with its train net uses the
    # train net's param specs, so that the common layers are one text.
    test_style = "train" if test_input == "layer" else "test"
    parts.append(rpn_head(rpn_bottom, param_style="train" if train else test_style,
                          channels=rpn_channels, anchors=anchors))
    parts.append(rpn_score_reshape())
    native_proposal = dict(train_pre_nms_top_n=RPN_PRE_NMS, train_post_nms_top_n=RPN_POST_NMS)
    if train:
        parts.append(rpn_losses(python_layers, anchors))
        parts.append(rpn_proposals(python_layers, ["rpn_rois"], native_proposal, anchors))
        target = dict(num_classes=classes, batch_size=-1 if ohem else ROIS_PER_IMAGE,
                      bg_thresh_lo=0.0 if ohem else 0.1, class_agnostic=not class_aware)
        parts.append(proposal_targets(python_layers, classes if class_aware else 2, target))
    else:
        parts.append(rpn_proposals(python_layers, ["rois"], native_proposal, anchors))
    parts += _rfcn_head(head_bottom, head_channels, classes, k, class_aware, stride, train)
    parts += _outputs(classes, k, class_aware, train, ohem, python_layers)
    return "".join(parts)


def _check_options(depth, classes, k, phase, python_layers, rpn_on):
    if phase not in ("TRAIN", "TEST"):
        raise ValueError(f"phase must be TRAIN or TEST, found {phase!r}")
    tiny = depth == "tiny"
    if not tiny and depth not in STAGES:
        raise ValueError(f"depth must be one of {sorted(STAGES)} or 'tiny', found {depth}")
    if tiny and python_layers:
        raise ValueError("the tiny net is written in the native form only (its anchors and "
                         "scales have no place in py-R-FCN's Python-layer files)")
    if classes < 2:
        raise ValueError(f"classes counts the background too and must be >= 2, found {classes}")
    if k < 1:
        raise ValueError(f"k must be >= 1, found {k}")
    if rpn_on not in ("res4", "res5"):
        raise ValueError(f"rpn_on must be res4 or res5, found {rpn_on!r}")


def _trunk(depth, rpn_on):
    """The trunk's text, the RPN's and the head's bottoms, and the anchors,
    stride and channels that go with it."""
    if depth == "tiny":
        trunk, head_bottom = tiny_trunk()
        return (trunk, head_bottom, head_bottom, TINY_ANCHORS, TINY_STRIDE,
                TINY_RPN_CHANNELS, TINY_HEAD_CHANNELS)
    trunk, outputs = resnet_trunk(depth, dilate_res5=True, frozen_stages={1, 2},
                                  conv1_bias=depth == 50)
    rpn_bottom = outputs[4] if rpn_on == "res4" else outputs[5]
    return trunk, rpn_bottom, outputs[5], None, FEAT_STRIDE, RPN_CHANNELS, HEAD_CHANNELS


def _rfcn_head(head_bottom, head_channels, classes, k, class_aware, stride, train):
    """conv_new_1, the position-sensitive score maps, PSROIPooling and the
    voting (cls_score, and bbox_pred or, for TEST, bbox_pred_pre)."""
    cls_channels, bbox_channels, box = rfcn_channels(classes, k, class_aware)

    def head_conv(name, bottom, num_output):
        return layer(name, "Convolution", [bottom], [name], param=specs((1, None), (2, None)),
                     convolution_param=dict(num_output=num_output, kernel_size=1, pad=0,
                                            weight_filler=gaussian(0.01),
                                            bias_filler=CONSTANT_0))

    def psroi(name, bottom, output_dim):
        return layer(name, "PSROIPooling", [bottom, "rois"], [name], psroi_pooling_param=dict(
            spatial_scale=1.0 / stride, output_dim=output_dim, group_size=k))

    def vote(name, bottom, top):
        return layer(name, "Pooling", [bottom], [top],
                     pooling_param=dict(pool=Word("AVE"), kernel_size=k, stride=k))

    bbox_top = "bbox_pred" if train else "bbox_pred_pre"
    return [
        head_conv("conv_new_1", head_bottom, head_channels),
        layer("conv_new_1_relu", "ReLU", ["conv_new_1"], ["conv_new_1"]),
        head_conv("rfcn_cls", "conv_new_1", cls_channels),
        head_conv("rfcn_bbox", "conv_new_1", bbox_channels),
        psroi("psroipooled_cls_rois", "rfcn_cls", classes),
        vote("ave_cls_score_rois", "psroipooled_cls_rois", "cls_score"),
        psroi("psroipooled_loc_rois", "rfcn_bbox", box),
        vote("ave_bbox_pred_rois", "psroipooled_loc_rois", bbox_top),
    ]


def _outputs(classes, k, class_aware, train, ohem, python_layers):
    """The losses (TRAIN, with or without OHEM) or the outputs (TEST)."""
    accuracy = "accuarcy" if python_layers else "accuracy"  # py-R-FCN's spelling
    if train and ohem:
        return [_ohem_losses(accuracy)]
    if train:
        return [
            layer("loss", "SoftmaxWithLoss", ["cls_score", "labels"], ["loss_cls"],
                  loss_weight=[1.0], propagate_down=[True, False]),
            layer(accuracy, "Accuracy", ["cls_score", "labels"], [accuracy],
                  propagate_down=[False, False]),
            _box_loss(["bbox_pred", "bbox_targets", "bbox_inside_weights"]),
            layer("silence", "Silence", ["bbox_outside_weights"], []),
        ]
    box = rfcn_channels(classes, k, class_aware)[2]
    return [
        layer("cls_prob", "Softmax", ["cls_score"], ["cls_prob_pre"]),
        layer("cls_prob_reshape", "Reshape", ["cls_prob_pre"], ["cls_prob"],
              reshape_param=dict(shape=dict(dim=[-1, classes]))),
        layer("bbox_pred_reshape", "Reshape", ["bbox_pred_pre"], ["bbox_pred"],
              reshape_param=dict(shape=dict(dim=[-1, box]))),
    ]


def rfcn_net_both(depth=101, classes=21, k=7, *, ohem=False, class_aware=False, image=None):
    """One native file with the TRAIN net and the TEST net: the layers both
    phases share are written once, the others carry ``include { phase: ... }``
    (what ``python -m solver.train`` trains and ``solver.test`` tests)."""
    options = dict(class_aware=class_aware, image=image, test_input="layer")
    return merge_phases(rfcn_net(depth, classes, k, ohem=ohem, phase="TRAIN", **options),
                        rfcn_net(depth, classes, k, phase="TEST", **options))


def _layer_blocks(text):
    """(header, [layer block text, ...]) of text written by ``layer``."""
    start = text.index("layer {\n")
    blocks = ["layer {\n" + b for b in text[start + len("layer {\n"):].split("\nlayer {\n")]
    blocks = [b if b.endswith("\n") else b + "\n" for b in blocks]
    return text[:start], blocks


def _with_phase(block, phase):
    """``block`` with ``include { phase: ... }`` after its name, type,
    bottoms and tops."""
    lines = block.split("\n")
    at = 1
    while at < len(lines) and lines[at].startswith(("  name:", "  type:", "  bottom:", "  top:")):
        at += 1
    return "\n".join(lines[:at] + ["  include {", f"    phase: {phase}", "  }"] + lines[at:])


def phase_text(build, phase):
    """``build(phase)``, the net text of one phase, or for "BOTH" the two
    phases in one file (``merge_phases``): what the generators write."""
    phase = phase.upper()
    if phase == "BOTH":
        return merge_phases(build("TRAIN"), build("TEST"))
    return build(phase)


def merge_phases(train_text, test_text):
    """A net text whose TRAIN-phase layers are exactly ``train_text``'s and
    TEST-phase layers ``test_text``'s, in order: common runs of identical
    layers once, the rest with include rules (the header is the train net's)."""
    import difflib
    header, train = _layer_blocks(train_text)
    _, test = _layer_blocks(test_text)
    out = [header]
    matcher = difflib.SequenceMatcher(None, train, test, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            out += train[i1:i2]
            continue
        out += [_with_phase(b, "TRAIN") for b in train[i1:i2]]
        out += [_with_phase(b, "TEST") for b in test[j1:j2]]
    return "".join(out)


def _box_loss(bottoms):
    return layer("loss_bbox", "SmoothL1LossOHEM", bottoms, ["loss_bbox"], loss_weight=[1.0],
                 propagate_down=[True, False, False],
                 loss_param=dict(normalization=Word("PRE_FIXED"),
                                 pre_fixed_normalizer=float(ROIS_PER_IMAGE)))


def _ohem_losses(accuracy):
    """Per-RoI losses (weights 0: they only rank), hard example selection,
    then the losses on the selected RoIs."""
    return "".join([
        layer("per_roi_loss_cls", "SoftmaxWithLossOHEM", ["cls_score", "labels"],
              ["temp_loss_cls", "temp_prob_cls", "per_roi_loss_cls"],
              loss_weight=[0.0, 0.0, 0.0], propagate_down=[False, False]),
        layer("per_roi_loss_bbox", "SmoothL1LossOHEM",
              ["bbox_pred", "bbox_targets", "bbox_inside_weights"],
              ["temp_loss_bbox", "per_roi_loss_bbox"], loss_weight=[0.0, 0.0],
              propagate_down=[False, False, False]),
        layer("per_roi_loss", "Eltwise", ["per_roi_loss_cls", "per_roi_loss_bbox"],
              ["per_roi_loss"], propagate_down=[False, False]),
        layer("annotator_detector", "BoxAnnotatorOHEM",
              ["rois", "per_roi_loss", "labels", "bbox_inside_weights"],
              ["labels_ohem", "bbox_loss_weights_ohem"], propagate_down=[False] * 4,
              box_annotator_ohem_param=dict(roi_per_img=ROIS_PER_IMAGE, ignore_label=-1)),
        layer("silence", "Silence",
              ["bbox_outside_weights", "temp_loss_cls", "temp_prob_cls", "temp_loss_bbox"], []),
        layer("loss", "SoftmaxWithLoss", ["cls_score", "labels_ohem"], ["loss_cls"],
              loss_weight=[1.0], propagate_down=[True, False],
              loss_param=dict(ignore_label=-1)),
        layer(accuracy, "Accuracy", ["cls_score", "labels_ohem"], [accuracy],
              propagate_down=[False, False], accuracy_param=dict(ignore_label=-1)),
        _box_loss(["bbox_pred", "bbox_targets", "bbox_loss_weights_ohem"]),
    ])


# -- files ----------------------------------------------------------------------------

# The tiny net's solver: plain SGD from random initialization, one image per
# iteration; written beside rfcn_tiny.prototxt, where solver.train finds it.
# Without BatchNorm, an unlucky start can make the gradients grow until the
# losses explode (one seed in three did, at iteration 100); clipping their
# global norm at 20 (typical norms are 5-50 early on) keeps every seed tried
# stable.
TINY_SOLVER = dict(
    net="rfcn_tiny.prototxt", base_lr=0.01, lr_policy="multistep", gamma=0.1,
    stepvalue=[3000], max_iter=4000, momentum=0.9, weight_decay=0.0005, iter_size=1,
    clip_gradients=20.0, display=50, average_loss=50, snapshot=0, random_seed=0)


def command_line(depth, classes, k, ohem, class_aware, python_layers, phase, rpn_on):
    words = ["python -m prototxt.rfcn", f"--depth {depth}", f"--classes {classes}", f"--k {k}"]
    words += ["--ohem"] * ohem + ["--class-aware"] * class_aware
    words += ["--python-layers"] * python_layers
    words += [f"--rpn-on {rpn_on}"] * (rpn_on != "res4") + [f"--phase {phase}"]
    return " ".join(words)



def generated_file(depth=101, classes=21, k=7, *, ohem=False, class_aware=False,
                   python_layers=False, phase="TRAIN", rpn_on="res4"):
    """``rfcn_net`` text (``rfcn_net_both`` for phase "BOTH") with a header
    naming the command that wrote it."""
    phase = phase.upper()
    command = command_line(depth, classes, k, ohem, class_aware, python_layers, phase, rpn_on)
    if phase == "BOTH":
        if python_layers:
            raise ValueError("--phase BOTH writes the native form only (py-R-FCN keeps "
                             "separate train and test files)")
        if rpn_on != "res4":
            raise ValueError("--phase BOTH puts the RPN on res4")
        return generated_header(command) + rfcn_net_both(depth, classes, k, ohem=ohem,
                                                class_aware=class_aware)
    return generated_header(command) + rfcn_net(depth, classes, k, ohem=ohem, class_aware=class_aware,
                                       python_layers=python_layers, phase=phase, rpn_on=rpn_on)


def solver_file(fields, command):
    """A solver prototxt of ``fields`` with a header naming ``command``."""
    return generated_header(command) + "\n".join(message_lines(fields, indent=0)) + "\n"


def file_names(depth, class_aware=False, python_layers=False):
    """(train, train_ohem, test) file names of one configuration."""
    stem = _stem(depth, class_aware, python_layers)
    return f"{stem}_train.prototxt", f"{stem}_train_ohem.prototxt", f"{stem}_test.prototxt"


def _stem(depth, class_aware=False, python_layers=False):
    return ("rfcn_tiny" if depth == "tiny" else f"rfcn_resnet{depth}") + \
        ("_class_aware" if class_aware else "") + ("_python_layers" if python_layers else "")


def both_file_name(depth, class_aware=False, ohem=False):
    """The file name of a TRAIN + TEST net: rfcn_resnet101.prototxt ..."""
    return _stem(depth, class_aware) + ("_ohem" if ohem else "") + ".prototxt"


def committed_files():
    """File name -> text of the files kept in prototxt/: native-form nets
    holding both phases (21 classes, k = 7, ResNet-101 and ResNet-50, with
    and without OHEM), the tiny net for the built-in dataset (7 classes,
    k = 3) and its solver."""
    files = {}
    for depth in (101, 50):
        for ohem in (False, True):
            files[both_file_name(depth, ohem=ohem)] = generated_file(depth, ohem=ohem,
                                                                     phase="BOTH")
    files[both_file_name("tiny")] = generated_file("tiny", TINY_CLASSES, TINY_K, phase="BOTH")
    files["rfcn_tiny_solver.prototxt"] = solver_file(
        TINY_SOLVER, "python -m prototxt.rfcn --regenerate (prototxt/rfcn.py TINY_SOLVER)")
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m prototxt.rfcn",
        description="Write an R-FCN network in py-R-FCN's layout (see the module docstring for "
                    "what each option changes).")
    parser.add_argument("--depth", choices=[str(d) for d in sorted(STAGES)] + ["tiny"],
                        default="101", help="ResNet depth, or 'tiny' for the small net of the "
                                            "built-in dataset (default 101)")
    parser.add_argument("--tiny", action="store_true", help="the same as --depth tiny")
    parser.add_argument("--classes", type=int,
                        help="number of classes including the background (default 21, PASCAL "
                             f"VOC; tiny: {TINY_CLASSES}, the built-in dataset)")
    parser.add_argument("--k", type=int,
                        help=f"position-sensitive grid size (default 7; tiny: {TINY_K})")
    parser.add_argument("--ohem", action="store_true", help="online hard example mining losses")
    parser.add_argument("--class-aware", action="store_true",
                        help="one box regressor per class (default: class-agnostic, 8 outputs)")
    parser.add_argument("--python-layers", action="store_true",
                        help="py-R-FCN's type: \"Python\" layers instead of the native typed ones")
    parser.add_argument("--rpn-on", choices=("res4", "res5"), default="res4",
                        help="stage whose output feeds the RPN (py-R-FCN's class-aware files "
                             "use res5)")
    add_phase_argument(parser)
    parser.add_argument("--out-dir", type=Path,
                        help="write the train (or train_ohem with --ohem) and test nets there "
                             "(with --phase BOTH one file) instead of printing one")
    add_regenerate_argument(parser)
    args = parser.parse_args(argv)
    if args.regenerate:
        return regenerate(committed_files())
    depth = "tiny" if args.tiny or args.depth == "tiny" else int(args.depth)
    tiny = depth == "tiny"
    classes = args.classes if args.classes is not None else (TINY_CLASSES if tiny else 21)
    k = args.k if args.k is not None else (TINY_K if tiny else 7)
    options = dict(depth=depth, classes=classes, k=k, class_aware=args.class_aware,
                   python_layers=args.python_layers, rpn_on=args.rpn_on)
    try:
        if args.out_dir and args.phase == "BOTH":
            args.out_dir.mkdir(parents=True, exist_ok=True)
            path = args.out_dir / both_file_name(depth, args.class_aware, args.ohem)
            path.write_text(generated_file(phase="BOTH", ohem=args.ohem, **options))
            print(f"wrote {path}")
        elif args.out_dir:
            train, train_ohem, test = file_names(depth, args.class_aware, args.python_layers)
            args.out_dir.mkdir(parents=True, exist_ok=True)
            for name, phase, ohem in ((train_ohem if args.ohem else train, "TRAIN", args.ohem),
                                      (test, "TEST", False)):
                (args.out_dir / name).write_text(generated_file(phase=phase, ohem=ohem, **options))
                print(f"wrote {args.out_dir / name}")
        else:
            sys.stdout.write(generated_file(phase=args.phase, ohem=args.ohem, **options))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
