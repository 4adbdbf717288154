"""Generator of an SPPNet-style detector (He et al. 2014, "Spatial Pyramid
Pooling in Deep Convolutional Networks for Visual Recognition", section 4).

    python -m prototxt.sppnet --classes 7 --phase BOTH > my_sppnet.prototxt
    python -m prototxt.sppnet --levels 6 3 2 1 --phase TRAIN      # the paper's pyramid
    python -m prototxt.sppnet --regenerate          # prototxt/sppnet_tiny*.prototxt

SPPNet runs the convolutions once over the whole image and pools a spatial
pyramid inside each proposal's window of the last feature map; the levels'
bins, concatenated, are a fixed-length vector that fully connected layers
classify. This generator writes that detector on the tiny R-FCN's trunk
(``prototxt.rfcn.tiny_trunk``: five 3x3 convolutions, stride 8, 64
channels), for proposals from a file (Selective Search in the paper):

- TRAIN: the RoIData layer in its precomputed-RoI form (tops data, rois,
  labels, bbox_targets, bbox_inside_weights, bbox_outside_weights) with
  Fast R-CNN's sampling, which is what the issue compares against: 2 images
  per minibatch, 64 RoIs per image, 25% foreground at IoU >= 0.5,
  background IoU in [0, 0.5) (Fast R-CNN: [0.1, 0.5); see BG_THRESH_LO);
  ``python -m solver.train NET --proposals FILE`` hands it the dataset and
  the proposals.
- TEST: Input layers ``data`` (1, 3, H, W) and ``rois`` (R, 5), as Fast
  R-CNN's test nets take them; outputs ``cls_prob`` and ``bbox_pred``.
- the SPP-on-RoIs head (``spp_roi_head``), fc6 and fc7 (256 each, ReLU, no
  dropout: the tiny net trains for minutes, not days), ``cls_score``
  (softmax over the classes) and ``bbox_pred`` (4 per class). The paper
  trained linear SVMs on fc7 and fine-tuned only the fully connected
  layers (its pooling had no backward through the convolutions); here the
  classifier is a softmax with per-class box regression trained with the
  multi-task loss of Fast R-CNN (SoftmaxWithLoss + SmoothL1Loss, sigma 1),
  end to end from random initialization (there is no ImageNet model of the
  tiny trunk), so the comparison with Fast R-CNN isolates the pooling.

The pyramid: the paper used 6x6, 3x3, 2x2 and 1x1 bins (50 bins) on conv5
of ZF-5 (stride 16). The tiny trunk has stride 8 and the built-in dataset's
objects are 24-96 pixels, 3-12 cells on the map, so the tiny net uses 4x4,
2x2 and 1x1 (21 bins, ``TINY_LEVELS``): a 6x6 grid on a 3-cell object
would repeat each cell four times. ``--levels`` picks any others.

Every count here is computed from the options (fc6's input is
channels x sum of bins^2, found by the Net's shape inference); change the
options and regenerate, do not edit a generated file.
"""
import argparse
import sys

from prototxt.generator_cli import (add_phase_argument, add_regenerate_argument, generated_header,
                                    regenerate)
from prototxt.resnet import layer, specs
from prototxt.rfcn import TINY_CLASSES, TINY_IMAGE, TINY_STRIDE, phase_text, solver_file, \
    tiny_trunk
from prototxt.rpn_parts import CONSTANT_0, gaussian, input_layer


TINY_LEVELS = (4, 2, 1)   # bins per side of each pyramid level (the paper: 6, 3, 2, 1)
FC_CHANNELS = 256
IMS_PER_BATCH = 2         # Fast R-CNN's hierarchical sampling: 2 images x 64 RoIs
ROIS_PER_IMAGE = 64
TEST_ROIS = 300           # the placeholder RoI count of the TEST net's rois input
# Background RoIs from IoU 0 (Fast R-CNN: 0.1). Trained from scratch, the
# tiny net with 0.1 never saw bare background as such and scored it as a
# class at test time (triangle AP 0.01, mAP 0.76); from 0 it learns it
# (mAP 0.92-0.93, README). py-faster-rcnn's end-to-end config uses 0 as well.
BG_THRESH_LO = 0.0

# The tiny net's solver (beside sppnet_tiny.prototxt, where solver.train finds
# it): SGD from random initialization, as the tiny R-FCN's; gradients clipped
# at a global norm of 20 for the same reason (no BatchNorm in the trunk).
# base_lr 0.01 left the loss near 1.3 (a dead net) with background from IoU 0;
# 0.005 trains (loss 0.25 at the end).
TINY_SOLVER = dict(
    net="sppnet_tiny.prototxt", base_lr=0.005, lr_policy="multistep", gamma=0.1,
    stepvalue=[1500], max_iter=2000, momentum=0.9, weight_decay=0.0005, iter_size=1,
    clip_gradients=20.0, display=50, average_loss=50, snapshot=0, random_seed=0)


def spp_roi_head(bottom, rois="rois", levels=TINY_LEVELS, spatial_scale=1.0 / TINY_STRIDE,
                 top="spp"):
    """The spatial pyramid pooled inside each RoI: one ``ROIPooling`` layer
    per level (``n`` x ``n`` max bins, all on the same ``bottom`` map and
    ``rois``), each flattened, then concatenated in the order of ``levels``.

    bottom ``(N, C, H, W)``, rois ``(R, 5)`` ``[image, x1, y1, x2, y2]`` in
    input pixels; top ``(R, C * sum(n * n))``, channel-major within a level
    (``c * n * n + i * n + j``), as SPP's flattening.

    Why ROIPooling: Fast R-CNN's RoI pooling is SPPNet's per-window pooling
    with one level (Girshick 2015, section 2.1), so composing existing,
    gradient-checked layers (ROIPooling, Flatten, Concat, each with its
    CPU path and CUDA kernels) gives the head on both devices with no new
    kernel. How its geometry differs from the SPPNet paper's:
    - window on the map: ROIPooling takes ``round(x * scale)`` for both
      corners; SPPNet's appendix maps the left/top corner to
      ``floor(x / S) + 1`` and the right/bottom to ``ceil(x / S) - 1``
      (a window about one cell smaller on each side);
    - bins: ROIPooling's bin ``p`` of ``n`` over ``a`` cells is
      ``[floor(p * a / n), ceil((p + 1) * a / n))``, which always covers
      the whole window (neighbours share at most one cell); SPPNet's
      sliding-window rule (window ``ceil(a / n)``, stride ``floor(a / n)``)
      can leave the last cells out (a = 8, n = 3 never reads cell 7) and,
      when a < n, pools the same window for every bin.
    Both are max pooling and give the same fixed length; on the tiny net's
    3-12 cell windows they pick nearly the same cells.
    """
    if not levels or any(int(n) < 1 for n in levels):
        raise ValueError(f"levels must be bin counts >= 1, found {list(levels)}")
    parts, flat = [], []
    for n in levels:
        pooled, flattened = f"{top}_{n}x{n}", f"{top}_{n}x{n}_flat"
        parts.append(layer(pooled, "ROIPooling", [bottom, rois], [pooled], roi_pooling_param=dict(
            pooled_h=int(n), pooled_w=int(n), spatial_scale=float(spatial_scale))))
        parts.append(layer(flattened, "Flatten", [pooled], [flattened]))
        flat.append(flattened)
    parts.append(layer(top, "Concat", flat, [top], concat_param=dict(axis=1)))
    return "".join(parts)


def _train_data(classes, image):
    tops = ["data", "rois", "labels", "bbox_targets", "bbox_inside_weights",
            "bbox_outside_weights"]
    return layer("input-data", "RoIData", [], tops, roi_data_param=dict(
        num_classes=classes, scales=[min(image)], max_size=max(image), ims_per_batch=IMS_PER_BATCH,
        has_rpn=False, batch_size=IMS_PER_BATCH * ROIS_PER_IMAGE, fg_fraction=0.25,
        fg_thresh=0.5, bg_thresh_hi=0.5, bg_thresh_lo=BG_THRESH_LO, class_agnostic=False))


def _classifier(classes):
    """fc6, fc7 (ReLU), cls_score and bbox_pred (4 per class)."""
    def fc(name, bottom, outputs, filler):
        return layer(name, "InnerProduct", [bottom], [name], param=specs((1, None), (2, 0)),
                     inner_product_param=dict(num_output=outputs, weight_filler=filler,
                                              bias_filler=CONSTANT_0))

    return "".join([
        fc("fc6", "spp", FC_CHANNELS, dict(type="msra")),
        layer("relu6", "ReLU", ["fc6"], ["fc6"]),
        fc("fc7", "fc6", FC_CHANNELS, dict(type="msra")),
        layer("relu7", "ReLU", ["fc7"], ["fc7"]),
        fc("cls_score", "fc7", classes, gaussian(0.01)),
        fc("bbox_pred", "fc7", 4 * classes, gaussian(0.001)),
    ])


def _outputs(train):
    if not train:
        return layer("cls_prob", "Softmax", ["cls_score"], ["cls_prob"])
    return "".join([
        layer("loss_cls", "SoftmaxWithLoss", ["cls_score", "labels"], ["loss_cls"],
              loss_weight=[1.0], propagate_down=[True, False]),
        layer("accuracy", "Accuracy", ["cls_score", "labels"], ["accuracy"],
              propagate_down=[False, False]),
        layer("loss_bbox", "SmoothL1Loss",
              ["bbox_pred", "bbox_targets", "bbox_inside_weights", "bbox_outside_weights"],
              ["loss_bbox"], loss_weight=[1.0], propagate_down=[True, False, False, False],
              smooth_l1_loss_param=dict(sigma=1.0)),
    ])


def sppnet_net(classes=TINY_CLASSES, levels=TINY_LEVELS, *, phase="TRAIN", image=TINY_IMAGE):
    """Prototxt text of the tiny SPPNet-style detector for one phase
    (``classes`` counts the background; ``levels``: bins per side of each
    pyramid level; ``image``: (shorter side, longer side cap) of the data
    layer, and the TEST input's size)."""
    phase = phase.upper()
    if phase not in ("TRAIN", "TEST"):
        raise ValueError(f"phase must be TRAIN or TEST, found {phase!r}")
    if classes < 2:
        raise ValueError(f"classes counts the background too and must be >= 2, found {classes}")
    train = phase == "TRAIN"
    trunk, feature = tiny_trunk()
    if train:
        data = _train_data(classes, image)
    else:
        data = input_layer("input-data", [("data", (1, 3) + tuple(image)),
                                          ("rois", (TEST_ROIS, 5))])
    return "".join([
        f'name: "SPPNet tiny, pyramid {" ".join(f"{n}x{n}" for n in levels)}"\n',
        data, trunk, spp_roi_head(feature, "rois", levels, 1.0 / TINY_STRIDE),
        _classifier(classes), _outputs(train)])


def command_line(classes, levels, phase):
    return (f"python -m prototxt.sppnet --classes {classes} --levels "
            f"{' '.join(str(n) for n in levels)} --phase {phase}")


def generated_file(classes=TINY_CLASSES, levels=TINY_LEVELS, phase="BOTH"):
    """The net of one phase, or with phase "BOTH" both phases in one file
    (include rules: what solver.train trains and solver.test tests), with a
    header naming the command that wrote it."""
    return generated_header(command_line(classes, levels, phase.upper())) + phase_text(
        lambda one: sppnet_net(classes, levels, phase=one), phase)


def committed_files():
    """File name -> text of the files kept in prototxt/: the tiny net for the
    built-in dataset (both phases) and its solver."""
    return {
        "sppnet_tiny.prototxt": generated_file(TINY_CLASSES, TINY_LEVELS, "BOTH"),
        "sppnet_tiny_solver.prototxt": solver_file(
            TINY_SOLVER, "python -m prototxt.sppnet --regenerate (prototxt/sppnet.py TINY_SOLVER)"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m prototxt.sppnet",
        description="Write a tiny SPPNet-style detector (spatial pyramid pooling inside each "
                    "proposal, fc layers, softmax and per-class boxes) for proposals from a file.")
    parser.add_argument("--classes", type=int, default=TINY_CLASSES,
                        help=f"number of classes including the background (default "
                             f"{TINY_CLASSES}, the built-in dataset)")
    parser.add_argument("--levels", type=int, nargs="+", default=list(TINY_LEVELS),
                        help="bins per side of each pyramid level (default "
                             f"{' '.join(map(str, TINY_LEVELS))}; the paper: 6 3 2 1)")
    add_phase_argument(parser)
    add_regenerate_argument(parser, "prototxt/sppnet_tiny.prototxt and its solver")
    args = parser.parse_args(argv)
    if args.regenerate:
        return regenerate(committed_files())
    try:
        sys.stdout.write(generated_file(args.classes, tuple(args.levels), args.phase))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
