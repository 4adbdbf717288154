"""How often Grad-CAM and occlusion maps of correct detections peak inside
the detected box: the measured fraction of issue 12 (not a test).

    python -m bench.visualize_fraction [--weights W] [--net NET] [--data DIR]
        [--split test] [--images N] [--threshold 0.5] [--patch P] [--stride S]
        [--gpu N | --cpu]

Defaults: the tiny R-FCN trained by the README's command
(``prototxt/rfcn_tiny.prototxt``, weights
``/tmp/tiny/run/rfcn_tiny_iter_4000.caffemodel``) on the test split of the
built-in synthetic dataset. For every test image, the detections
``solver.detect`` gives at ``--threshold`` (highest score first); a
detection is *correct* when its box overlaps a ground-truth box of its class
with IoU >= 0.5 (VOC's rule, +1-pixel areas). For each correct detection,
the Grad-CAM map (default blob) and the occlusion map (``--patch`` /
``--stride``, default: the library's) of its class score, its RoI pinned;
a map *peaks inside* when the pixel of its maximum lies in the detected box
(inclusive pixels). Prints, for each method, the fraction of correct
detections whose map peaks inside, and the fraction of images (with at
least one correct detection) where most of them do, with the counts.
"""
import argparse
import sys
import time

import numpy as np
from PIL import Image

from detection.visualize.gradients import grad_cam
from detection.visualize.model import VisualModel
from detection.visualize.occlusion import occlusion
from layers.boxes import bbox_overlaps
from solver.cli import (add_device_arguments, builtin_dataset, exit_status, open_dataset,
                        select_device)

DEFAULT_NET = "prototxt/rfcn_tiny.prototxt"
DEFAULT_WEIGHTS = "/tmp/tiny/run/rfcn_tiny_iter_4000.caffemodel"
METHODS = ("gradcam", "occlusion")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m bench.visualize_fraction",
        description="Fraction of correct detections whose Grad-CAM / occlusion map peaks "
                    "inside the detected box.")
    parser.add_argument("--net", default=DEFAULT_NET, help=f"default {DEFAULT_NET}")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help=f"default {DEFAULT_WEIGHTS}")
    parser.add_argument("--data", help="dataset (default: the built-in synthetic one)")
    parser.add_argument("--split", default="test", help="default test")
    parser.add_argument("--images", type=int, help="only the first N images")
    parser.add_argument("--threshold", type=float, default=0.5, help="default 0.5")
    parser.add_argument("--patch", type=int, help="occlusion patch (default: the library's)")
    parser.add_argument("--stride", type=int, help="occlusion stride (default: the library's)")
    add_device_arguments(parser)
    return parser


def peak_inside(heat, box):
    """True when the (first) maximum of ``heat`` ``(H, W)`` lies in ``box``
    ``[x1, y1, x2, y2]`` (inclusive pixels)."""
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return bool(box[0] <= x <= box[2] and box[1] <= y <= box[3])


def correct_detections(found, record):
    """The detections of ``found`` with IoU >= 0.5 with a ground-truth box
    of their class in ``record`` (difficult boxes count as ground truth)."""
    correct = []
    for det in found:
        same = record.boxes[record.labels == det.class_index].astype(np.float64)
        if len(same) and bbox_overlaps(det.box[None].astype(np.float64), same).max() >= 0.5:
            correct.append(det)
    return correct


def measure_image(model, image, record, args):
    """``{method: [inside?, ...]}`` over the image's correct detections."""
    found = model.detections(image, threshold=args.threshold)
    hits = {method: [] for method in METHODS}
    for det in correct_detections(found, record):
        target = model.target(image, detection=det.index, threshold=args.threshold)
        hits["gradcam"].append(peak_inside(grad_cam(model, image, target), det.box))
        heat = occlusion(model, image, target, patch=args.patch, stride=args.stride)
        hits["occlusion"].append(peak_inside(heat, det.box))
    return hits, len(found)


def report(per_image, detections, seconds, stream):
    """Print both fractions per method with their counts."""
    correct = sum(len(h["gradcam"]) for h in per_image)
    print(f"{len(per_image)} images, {detections} detections, {correct} correct "
          f"(IoU >= 0.5 with a ground-truth box of their class); {seconds:.0f}s", file=stream)
    for method in METHODS:
        inside = sum(sum(h[method]) for h in per_image)
        judged = [h[method] for h in per_image if h[method]]
        most = sum(2 * sum(h) > len(h) for h in judged)
        print(f"  {method:9s}: peak inside the box for {inside}/{correct} correct detections "
              f"({inside / max(correct, 1):.1%}); in {most}/{len(judged)} images for most of "
              f"their correct detections ({most / max(len(judged), 1):.1%})", file=stream)


def run(args, stream=sys.stdout):
    model = VisualModel(args.net, args.weights, device=select_device(args.gpu))
    root = args.data or builtin_dataset(lambda text: print(text, file=stream))
    dataset = open_dataset(root, args.split, for_testing=True)
    records = dataset.records[:args.images] if args.images is not None else dataset.records
    started = time.perf_counter()
    per_image, detections = [], 0
    for done, record in enumerate(records, 1):
        with Image.open(record.path) as opened:
            image = np.asarray(opened.convert("RGB"))
        hits, count = measure_image(model, image, record, args)
        per_image.append(hits)
        detections += count
        if done % 20 == 0 or done == len(records):
            print(f"  {done}/{len(records)} images", file=stream, flush=True)
    report(per_image, detections, time.perf_counter() - started, stream)
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return exit_status(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
