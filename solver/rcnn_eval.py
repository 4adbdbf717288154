"""Evaluate a trained R-CNN (one CNN pass per warped proposal) on a test split.

    python -m solver.rcnn_eval prototxt/rcnn_tiny.prototxt --weights W --proposals FILE
                               [--data DIR] [--split test] [--images N]
                               [--max-proposals 300] [--batch 128] [--gpu N | --cpu]

NET is the R-CNN net file with both phases (prototxt.rcnn --phase BOTH):
its TEST phase scores the crops, its WindowData layer gives the crop
settings. FILE is a proposals file (detection.proposals, e.g. Selective
Search from detection.proposal_sources) holding every test image. Prints
VOC07 mAP (or COCO AP for COCO data), the per-class table, the time per
image and the share of it spent in the net.
"""
import argparse
import json
import os
import sys

from detection.evaluate import evaluate_detector, open_test_set, summary_line
from detection.proposals import Proposals
from detection.region_detector import RegionDetector
from netdef.snapshot_format import atomic_writer
from solver.cli import add_device_arguments, builtin_dataset, exit_status, is_coco_path, \
    select_device

__all__ = ["main"]


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m solver.rcnn_eval",
                                     description="Evaluate an R-CNN on proposals.")
    parser.add_argument("net", help="the R-CNN net file (both phases)")
    parser.add_argument("--weights", required=True, help="a .caffemodel")
    parser.add_argument("--proposals", required=True, metavar="FILE",
                        help="proposals of the test images")
    parser.add_argument("--data", help="dataset (default: the built-in synthetic dataset)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, metavar="N", help="the first N images only")
    parser.add_argument("--max-proposals", type=int, default=300, metavar="N",
                        help="proposals warped per image (default 300)")
    parser.add_argument("--batch", type=int, default=128, help="crops per forward pass")
    parser.add_argument("--score-threshold", type=float, default=0.05)
    parser.add_argument("--nms", type=float, default=0.3)
    parser.add_argument("--max-per-image", type=int, default=100)
    parser.add_argument("--results", metavar="FILE", help="write the metrics as JSON")
    add_device_arguments(parser)
    return parser


def _run(args, stream):
    def say(text):
        print(text, file=stream, flush=True)

    device = select_device(args.gpu)
    root = args.data if args.data else builtin_dataset(say)
    dataset = open_test_set(root, args.split, images=args.images, json_is_test_set=True)
    boxes = Proposals.load(args.proposals).for_dataset(dataset, args.proposals)
    detector = RegionDetector.from_net_file(
        args.net, args.weights, device=device,
        proposals={r.image_id: b for r, b in zip(dataset.records, boxes)},
        max_proposals=args.max_proposals, batch=args.batch, score_thresh=args.score_threshold,
        nms_thresh=args.nms, max_per_image=args.max_per_image)
    say(f"R-CNN: {len(dataset)} images of '{dataset.name}' split '{args.split}', up to "
        f"{args.max_proposals} proposals each, warped to {detector.settings['crop_size']} px, "
        f"on {device}")
    _, _, summary, seconds = evaluate_detector(detector, dataset, is_coco_path(root), stream,
                                               every=50)
    say(summary_line(summary))
    per_image = seconds / max(len(dataset), 1)
    say(f"{len(dataset)} images in {seconds:.1f}s ({per_image:.3f} s per image, "
        f"{detector.net_seconds / max(seconds, 1e-9):.0%} of it in the net)")
    if args.results:
        with atomic_writer(args.results) as handle:
            handle.write(json.dumps(dict(summary, weights=os.fspath(args.weights),
                                         images=len(dataset), seconds_per_image=per_image),
                                    indent=1).encode("utf-8"))
    return 0


def main(argv=None, stream=None):
    args = build_parser().parse_args(argv)
    return exit_status(lambda: _run(args, sys.stdout if stream is None else stream))


if __name__ == "__main__":
    sys.exit(main())
