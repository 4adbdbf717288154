"""Generator of a tiny YOLOv2-style detector (Redmon and Farhadi 2017,
"YOLO9000: Better, Faster, Stronger"): a darknet-like convolution stack at
stride 32 and the Region layer (layers/region.py).

    python -m prototxt.yolo --classes 7 --phase BOTH > my_yolo.prototxt
    python -m prototxt.yolo --phase TRAIN --data input     # Input stand-ins
    python -m prototxt.yolo --fit-anchors       # k-means anchors of the built-in dataset
    python -m prototxt.yolo --regenerate        # prototxt/yolo_tiny*.prototxt

The network, scaled down from darknet's tiny-yolo-voc.cfg for the built-in
dataset (192 x 256 images, objects 24-96 pixels) and two CPU cores:

- trunk: 3x3 convolutions with leaky ReLU (slope 0.1, darknet's), each
  followed by a 2x2 max pooling, five times (``TINY_TRUNK``; stride 32, a
  6 x 8 grid for 192 x 256), then one more 3x3 convolution (``HEAD``) and
  the 1x1 prediction convolution with ``num * (5 + classes - 1)`` outputs.
  MSRA init and no BatchNorm (tiny-yolo has BatchNorm; with 8 images a
  batch its statistics are noisy, and the other tiny nets here have none).
- Region (TRAIN): yolo-voc.cfg's loss settings (``REGION``): softmax
  classes, thresh 0.6, object_scale 5, noobject_scale 1, class_scale 1,
  coord_scale 1, rescore, bias_match; darknet's early prior term on (the
  first 12800 images).
- anchors (``TINY_ANCHORS``, 5, in grid cells): YOLOv2's dimension
  clusters, k-means with distance 1 - IoU on the (width, height) of the
  built-in dataset's training boxes divided by the stride
  (``fit_anchors``; ``--fit-anchors`` recomputes them).
- TRAIN input: AnnotatedData (``data``, ``label``; mean and scale of
  ``TRANSFORM``, warped to 192 x 256, horizontal flips, ``BATCH_SIZE``
  images) or, with ``data="input"``, Input stand-ins of the same blobs.
- TEST: Input ``data`` (1, 3, 192, 256) and RegionOutput into
  ``detection_out``: objectness x class probability above 0.005 (darknet's
  threshold when it writes detections for mAP), per-class NMS at 0.45
  (darknet's), at most 100 per image.

``classes`` counts the background (the built-in dataset: 7), as the other
generators; the Region layer's ``classes`` is ``classes - 1``. Every count
is computed here from the options; change them and regenerate, do not edit
a generated file.
"""
import argparse
import sys

import numpy as np

from detection.datasets import load_dataset
from detection.datasets.synthetic import ensure_dataset
from prototxt.generator_cli import (add_phase_argument, add_regenerate_argument, generated_header,
                                    regenerate)
from prototxt.resnet import Word, layer
from prototxt.rfcn import TINY_CLASSES, TINY_IMAGE, phase_text, solver_file
from prototxt.rpn_parts import CONSTANT_0, gaussian, input_layer

# (name, output channels): 3x3 convolution + leaky ReLU + 2x2 max pooling.
TINY_TRUNK = (("conv1", 16), ("conv2", 32), ("conv3", 64), ("conv4", 128), ("conv5", 128))
HEAD = ("conv6", 256)
STRIDE = 32
LEAKY_SLOPE = 0.1
# (width, height) in grid cells of STRIDE pixels, smallest area first:
# fit_anchors(k=5) on the built-in dataset's 1000 training images (mean
# IoU of a box with its best anchor 0.79). Mostly square: the dataset's
# lying and standing ellipses share the clusters with the other shapes.
TINY_ANCHORS = ((0.84, 0.87), (1.31, 1.12), (1.49, 1.71), (2.12, 2.04), (2.66, 2.66))
REGION = dict(softmax=True, thresh=0.6, object_scale=5.0, noobject_scale=1.0,
              class_scale=1.0, coord_scale=1.0, rescore=True, bias_match=True)
BATCH_SIZE = 8
# Caffe's DataTransformer: (pixel - mean) * scale; 0.017 ~ 1 / 58, the
# pixels' spread, so the MSRA-initialized convolutions start at unit scale.
TRANSFORM = dict(mirror=True, mean_value=[104.0, 117.0, 123.0], scale=0.017)
TEST_OUTPUT = dict(confidence_threshold=0.005, nms_threshold=0.45, keep_top_k=100)


# -- anchors: YOLOv2's dimension clusters --------------------------------------------

def shape_iou(sizes, centroids):
    """IoU of boxes sharing a centre: sizes (M, 2) against centroids (K, 2)."""
    inter = (np.minimum(sizes[:, None, 0], centroids[None, :, 0])
             * np.minimum(sizes[:, None, 1], centroids[None, :, 1]))
    areas = sizes[:, 0] * sizes[:, 1]
    return inter / (areas[:, None] + (centroids[:, 0] * centroids[:, 1])[None, :] - inter)


def kmeans_anchors(sizes, k, restarts=10, iterations=300, seed=0):
    """k-means with distance 1 - IoU (YOLOv2's): the k centroids (K, 2) of
    ``sizes`` (M, 2), best mean IoU over ``restarts`` seeded starts (each
    from k distinct boxes), sorted by area."""
    sizes = np.asarray(sizes, dtype=np.float64)
    rng = np.random.default_rng(seed)
    best, best_score = None, -1.0
    for _ in range(restarts):
        centroids = sizes[rng.choice(len(sizes), size=k, replace=False)]
        for _ in range(iterations):
            member = shape_iou(sizes, centroids).argmax(axis=1)
            counts = np.bincount(member, minlength=k)
            sums = np.stack([np.bincount(member, sizes[:, d], minlength=k) for d in (0, 1)], 1)
            moved = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centroids)
            if np.array_equal(moved, centroids):
                break
            centroids = moved
        score = shape_iou(sizes, centroids).max(axis=1).mean()
        if score > best_score:
            best, best_score = centroids, score
    return best[np.argsort(best[:, 0] * best[:, 1], kind="stable")], best_score


def dataset_box_sizes(dataset, image=TINY_IMAGE, stride=STRIDE):
    """(width, height) in grid cells of every box of ``dataset`` (records
    with ``boxes``, ``width``, ``height``) after the warp to ``image``."""
    sizes = []
    for record in dataset:
        boxes = np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4)
        w = (boxes[:, 2] - boxes[:, 0] + 1) * image[1] / record.width
        h = (boxes[:, 3] - boxes[:, 1] + 1) * image[0] / record.height
        sizes.append(np.stack([w, h], axis=1) / stride)
    return np.concatenate(sizes)


def fit_anchors(k=len(TINY_ANCHORS)):
    """k-means anchors of the built-in dataset's training boxes: (anchors
    (k, 2) in grid cells, mean IoU of a box with its best anchor)."""
    return kmeans_anchors(dataset_box_sizes(load_dataset(str(ensure_dataset()), "trainval")), k)


# -- the net ---------------------------------------------------------------------------

def conv(name, bottom, num_output, kernel, weight_filler):
    """A Convolution (pad keeps the size), lr_mult 1 / 2, no decay on the bias."""
    return layer(name, "Convolution", [bottom], [name],
                 param=[dict(lr_mult=1.0), dict(lr_mult=2.0, decay_mult=0.0)],
                 convolution_param=dict(num_output=num_output, kernel_size=kernel,
                                        pad=kernel // 2, weight_filler=weight_filler,
                                        bias_filler=CONSTANT_0))


def trunk(bottom="data"):
    """Convolution + leaky ReLU + max pooling per TINY_TRUNK, then HEAD."""
    parts = []
    for name, channels in TINY_TRUNK + (HEAD,):
        parts.append(conv(name, bottom, channels, 3, dict(type="msra")))
        parts.append(layer(f"{name}_relu", "ReLU", [name], [name],
                           relu_param=dict(negative_slope=LEAKY_SLOPE)))
        bottom = name
        if (name, channels) != HEAD:
            pooled = f"pool{name[4:]}"
            parts.append(layer(pooled, "Pooling", [bottom], [pooled],
                               pooling_param=dict(pool=Word("MAX"), kernel_size=2, stride=2)))
            bottom = pooled
    return "".join(parts), bottom


def region_param(classes, anchors=TINY_ANCHORS):
    """region_param of the Region and RegionOutput layers."""
    return dict(classes=classes - 1, coords=4, num=len(anchors),
                anchors=[float(v) for a in anchors for v in a], **REGION)


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


def yolo_net(classes=TINY_CLASSES, *, phase="TRAIN", data="annotated", image=TINY_IMAGE,
             batch_size=BATCH_SIZE, anchors=TINY_ANCHORS):
    """Prototxt text of the tiny YOLO for one phase (``classes`` counts the
    background; ``data``: "annotated" or "input" for TRAIN)."""
    phase = phase.upper()
    if phase not in ("TRAIN", "TEST"):
        raise ValueError(f"phase must be TRAIN or TEST, found {phase!r}")
    if classes < 2:
        raise ValueError(f"classes counts the background too and must be >= 2, found {classes}")
    if image[0] % STRIDE or image[1] % STRIDE:
        raise ValueError(f"the image size {tuple(image)} must be a multiple of the stride {STRIDE}")
    train = phase == "TRAIN"
    first = train_data(image, data, batch_size) if train else \
        input_layer("input-data", [("data", (1, 3) + tuple(image))])
    body, feature = trunk()
    outputs = len(anchors) * (5 + classes - 1)
    predict = conv("region_pred", feature, outputs, 1, gaussian(0.01))
    params = region_param(classes, anchors)
    if train:
        last = layer("region_loss", "Region", ["region_pred", "label"], ["region_loss"],
                     loss_weight=[1.0], propagate_down=[True, False], region_param=params)
    else:
        o = TEST_OUTPUT
        last = layer("detection_out", "RegionOutput", ["region_pred"], ["detection_out"],
                     region_param=params, detection_output_param=dict(
                         confidence_threshold=o["confidence_threshold"],
                         nms_param=dict(nms_threshold=o["nms_threshold"]),
                         keep_top_k=o["keep_top_k"]))
    return "".join(['name: "YOLOv2 tiny"\n', first, body, predict, last])


def command_line(classes, phase, data):
    return (f"python -m prototxt.yolo --classes {classes} --phase {phase}"
            + (f" --data {data}" if data != "annotated" else ""))


def generated_file(classes=TINY_CLASSES, phase="BOTH", data="annotated"):
    """The net of one phase, or with phase "BOTH" both phases in one file
    (include rules: what solver.train trains and solver.test tests), with a
    header naming the command that wrote it."""
    return generated_header(command_line(classes, phase.upper(), data)) + phase_text(
        lambda one: yolo_net(classes, phase=one, data=data), phase)


# The tiny net's solver: SGD from random initialization, BATCH_SIZE images
# per iteration (the Region loss is a mean over the batch, as darknet's
# update divides by the batch), 8 epochs of the built-in dataset. Trials
# of these 1000 iterations: base_lr 0.005 gave VOC07 mAP 0.870, 0.01 gave
# 0.886 (200 test images); 0.003 diverged on a batch learnt by heart
# without clipping, clip_gradients 20 keeps the first iterations stable.
TINY_SOLVER = dict(
    net="yolo_tiny.prototxt", base_lr=0.01, lr_policy="multistep", gamma=0.1,
    stepvalue=[750], max_iter=1000, momentum=0.9, weight_decay=0.0005, iter_size=1,
    clip_gradients=20.0, display=50, average_loss=50, snapshot=0, random_seed=0)


def committed_files():
    """File name -> text of the files kept in prototxt/: the tiny net for the
    built-in dataset (both phases) and its solver."""
    return {
        "yolo_tiny.prototxt": generated_file(TINY_CLASSES, "BOTH"),
        "yolo_tiny_solver.prototxt": solver_file(
            TINY_SOLVER, "python -m prototxt.yolo --regenerate (prototxt/yolo.py TINY_SOLVER)"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m prototxt.yolo",
        description="Write a tiny YOLOv2-style detector (convolutions at stride 32, the Region "
                    "loss, RegionOutput) for AnnotatedData input.")
    parser.add_argument("--classes", type=int, default=TINY_CLASSES,
                        help=f"number of classes including the background (default "
                             f"{TINY_CLASSES}, the built-in dataset)")
    parser.add_argument("--data", choices=("annotated", "input"), default="annotated",
                        help="the TRAIN net's input: the AnnotatedData layer (what solver.train "
                             "feeds) or Input stand-ins of data and label (default annotated)")
    parser.add_argument("--fit-anchors", action="store_true",
                        help="print k-means anchors of the built-in dataset's training boxes "
                             "(what TINY_ANCHORS holds) and exit")
    add_phase_argument(parser)
    add_regenerate_argument(parser, "prototxt/yolo_tiny.prototxt and its solver")
    args = parser.parse_args(argv)
    if args.regenerate:
        return regenerate(committed_files())
    if args.fit_anchors:
        anchors, score = fit_anchors()
        print(f"anchors (w, h in cells of {STRIDE} px): "
              + ", ".join(f"({w:.2f}, {h:.2f})" for w, h in anchors)
              + f"; mean best IoU {score:.3f}")
        return 0
    try:
        sys.stdout.write(generated_file(args.classes, args.phase, args.data))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
