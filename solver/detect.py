"""Run a trained detector on images: ``python -m solver.detect``.

    python -m solver.detect NET --weights W IMAGE... [--out DIR] [--threshold 0.5]
                            [--json FILE] [--classes FILE] [--gpu N | --cpu]

Prints the detections as JSON (to ``--json FILE`` instead of stdout when
given): a list with one entry per image, ``{"image": path, "width": w,
"height": h, "detections": [{"class": name, "score": s, "box": [x1, y1, x2,
y2]}, ...]}``, boxes in 0-based inclusive pixels, highest score first. Each
image is also drawn with its labelled boxes into ``--out`` (default
``out/detections``) as ``<image stem>.png``.

NET and W as for ``solver.test``: a snapshot (.solverstate.npz) or a
``.caffemodel``. Class names come from ``--classes`` (one per line), else
the snapshot's metadata (for a ``.caffemodel``, that of the
``.solverstate.npz`` beside it), else ``--data`` (a dataset whose names are
used), else class1, class2, ...

A single-stage net (a ``detection_out`` blob: SSD, RetinaNet, YOLO) gets
the whole image warped to its Input size and keeps its own NMS
(``--scale``, ``--max-size`` and ``--nms`` are not used; see
detection.single_stage); its class count is its DetectionOutput's.
"""
import argparse
import json
import os
import sys

from netdef.errors import DataError
from netdef.snapshot_format import atomic_writer
from solver.cli import add_device_arguments, exit_status, select_device
from solver.blas import blas_threads_for
from detection.datasets import load_dataset
from detection.detector import (DEFAULT_NMS_THRESH, Detector, generic_classes, load_test_net,
                                read_class_names)
from detection.single_stage import scored_classes
from detection.draw import draw_detections
from layers.input_pipeline.preprocess import load_image_bgr

__all__ = ["main", "detections_json", "dumps"]


def detections_json(path, image_shape, per_class, classes, threshold):
    """The JSON entry of one image (see the module docstring)."""
    height, width = image_shape[:2]
    found = []
    for c in range(1, len(per_class)):
        for row in per_class[c]:
            if row[4] >= threshold:
                found.append({"class": classes[c], "score": round(float(row[4]), 5),
                              "box": [round(float(v), 2) for v in row[:4]]})
    found.sort(key=lambda d: -d["score"])
    return {"image": os.fspath(path), "width": int(width), "height": int(height),
            "detections": found}


def dumps(results):
    """The JSON text of ``results``, one detection per line."""
    images = []
    for entry in results:
        head = json.dumps({k: v for k, v in entry.items() if k != "detections"})[:-1]
        dets = ",\n".join("  " + json.dumps(d) for d in entry["detections"])
        images.append(f'{head}, "detections": [' + (f"\n{dets}\n" if dets else "") + "]}")
    return "[\n" + ",\n".join(images) + "\n]"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m solver.detect",
        description="Detect objects in images with a trained net: JSON detections and the "
                    "images with labelled boxes.",
        epilog="Example: python -m solver.detect prototxt/rfcn_tiny.prototxt --weights "
               "out/rfcn_tiny/rfcn_tiny_iter_4000.caffemodel photo.jpg --out drawn/")
    parser.add_argument("net", help="the net file (training file with both phases, or a "
                                    "test net)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--weights", required=True,
                        help="a snapshot (.solverstate.npz) or a .caffemodel")
    parser.add_argument("--out", default=os.path.join("out", "detections"),
                        help="folder for the drawn images (default out/detections)")
    parser.add_argument("--no-draw", action="store_true", help="only print the JSON")
    parser.add_argument("--json", metavar="FILE", help="write the JSON there, not to stdout")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="lowest score reported and drawn (default 0.5)")
    parser.add_argument("--classes", metavar="FILE", help="class names, one per line")
    parser.add_argument("--data", help="a dataset whose class names to use")
    parser.add_argument("--test-net", metavar="FILE",
                        help="the test net, when it is not found from NET")
    parser.add_argument("--scale", type=int, help="shorter image side (default: the "
                                                  "training scale)")
    parser.add_argument("--max-size", type=int, help="cap of the longer side")
    parser.add_argument("--nms", type=float, default=DEFAULT_NMS_THRESH,
                        help=f"per-class NMS IoU (default {DEFAULT_NMS_THRESH}); single-stage "
                             "nets keep their own NMS and ignore it")
    parser.add_argument("--max-per-image", type=int, default=100,
                        help="detections kept per image before the threshold (default 100)")
    add_device_arguments(parser)
    return parser


def main(argv=None, stream=None, messages=None):
    """The entry point; JSON goes to ``stream``, other lines to
    ``messages``. Returns the exit status (2 for a user error)."""
    args = build_parser().parse_args(argv)
    stream = sys.stdout if stream is None else stream
    messages = sys.stderr if messages is None else messages
    return exit_status(lambda: _run(args, stream, messages))


def _run(args, stream, messages):
    def say(text):
        print(text, file=messages, flush=True)

    device = select_device(args.gpu)
    classes = read_class_names(args.classes) if args.classes else None
    net, info = load_test_net(args.net, args.weights, device=device, test_net=args.test_net,
                              scale=args.scale, max_size=args.max_size, classes=classes,
                              stream=messages)
    names = info.classes
    if names is None and args.data:
        names = load_dataset(args.data, "test").classes
    count = scored_classes(net)
    if names is None:
        names = generic_classes(count or 2)
        say(f"no class names (no --classes, --data or snapshot metadata): using "
            f"{', '.join(names[1:])}")
    if count is not None and len(names) != count:
        raise DataError(f"{len(names)} class names ({', '.join(names)}) for a net that scores "
                        f"{count} classes (background included)")
    detector = Detector(net, scale=info.scale, max_size=info.max_size,
                        bbox_normalization=info.bbox_normalization,
                        score_thresh=min(args.threshold, 0.05), nms_thresh=args.nms,
                        max_per_image=args.max_per_image, input_transform=info.input_transform)
    # The training session's BLAS rule: a small net's products on one thread.
    with blas_threads_for(net, device, say=say):
        results = _detect_all(args, detector, names, say)
    text = dumps(results)
    if args.json:
        with atomic_writer(args.json) as handle:
            handle.write((text + "\n").encode("utf-8"))
        say(f"wrote {args.json}")
    else:
        print(text, file=stream, flush=True)
    return 0


def _detect_all(args, detector, names, say):
    """The JSON entries of ``args.images``, each drawn into ``args.out``
    unless ``--no-draw``."""
    results = []
    if not args.no_draw:
        os.makedirs(args.out, exist_ok=True)
    for path in args.images:
        image = load_image_bgr(path)
        entry = detections_json(path, image.shape, detector.detect(image), names, args.threshold)
        results.append(entry)
        say(f"{path}: {len(entry['detections'])} detection(s) scoring >= {args.threshold:g}")
        if not args.no_draw:
            target = os.path.join(args.out, os.path.splitext(os.path.basename(path))[0] + ".png")
            draw_detections(path, [(d["class"], d["score"], d["box"])
                                    for d in entry["detections"]], target, classes=names)
            say(f"  drawn: {target}")
    return results


if __name__ == "__main__":
    sys.exit(main())
