"""Write R-CNN's window file (Caffe's WindowData input) from a dataset and
its proposals, as R-CNN's ``rcnn_make_window_file`` did.

    python -m detection.window_file --proposals FILE --out train_windows.txt
                                    [--data DIR] [--split trainval] [--images N]
                                    [--max-proposals 300]
    python -m detection.window_file --jitter 40 --out train_windows.txt   # no proposals file

``--proposals`` reads a proposals file (detection.proposals: RPN or
Selective Search boxes, matched to the images by id); ``--jitter N`` makes
N boxes per image by jittering the ground truth instead (a stand-in for
development and tests: not a proposal method). Per image the file lists
the ground-truth boxes (overlap 1) then the first ``--max-proposals``
proposals with the class and IoU of the ground truth each overlaps most.
Without ``--data`` the built-in synthetic dataset is used.
"""
import argparse
import sys

import numpy as np

from detection.datasets import DetectionDataset, load_dataset
from detection.datasets.synthetic import ensure_dataset
from detection.proposals import Proposals
from layers.window_data import write_window_file
from netdef.errors import DataError

__all__ = ["jittered_boxes", "dataset_windows", "main"]


def jittered_boxes(records, count, seed=0):
    """``count`` boxes per record: ground-truth boxes shifted and scaled at
    random (centre moves up to half the size, sides scale by 0.5-2x), clipped
    to the image. One vectorized draw per image."""
    rng = np.random.default_rng(seed)
    out = []
    for record in records:  # one vectorized draw per image
        gt = np.asarray(record.boxes, np.float64).reshape(-1, 4)
        if not len(gt):
            gt = np.array([[0, 0, record.width - 1, record.height - 1]], np.float64)
        base = gt[rng.integers(len(gt), size=count)]
        w, h = base[:, 2] - base[:, 0] + 1, base[:, 3] - base[:, 1] + 1
        cx = base[:, 0] + w / 2 + rng.uniform(-0.5, 0.5, count) * w
        cy = base[:, 1] + h / 2 + rng.uniform(-0.5, 0.5, count) * h
        w, h = w * np.exp(rng.uniform(-0.7, 0.7, count)), h * np.exp(rng.uniform(-0.7, 0.7, count))
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        boxes = np.clip(np.round(boxes), 0, [record.width - 1, record.height - 1] * 2)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out.append(boxes[keep].astype(np.float32))
    return out


def dataset_windows(dataset, proposals=None, *, jitter=0, max_proposals=300, source="proposals"):
    """One ``(R, 4)`` proposal array per record of ``dataset``: from a
    ``Proposals`` (capped at ``max_proposals`` each) or ``jitter`` boxes."""
    if proposals is not None:
        boxes = proposals.for_dataset(dataset, source)
        return [b[:max_proposals] if max_proposals else b for b in boxes]
    if jitter > 0:
        return jittered_boxes(dataset.records, jitter)
    raise DataError("give proposals (--proposals FILE) or --jitter N")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m detection.window_file",
                                     description="Write R-CNN's window file for WindowData.")
    parser.add_argument("--data", help="dataset folder (default: the built-in dataset)")
    parser.add_argument("--split", default="trainval")
    parser.add_argument("--proposals", metavar="FILE", help="a proposals file")
    parser.add_argument("--jitter", type=int, default=0, metavar="N",
                        help="N jittered ground-truth boxes per image instead of proposals")
    parser.add_argument("--max-proposals", type=int, default=300, metavar="N",
                        help="proposals kept per image (default 300; 0: all)")
    parser.add_argument("--images", type=int, metavar="N", help="the first N images only")
    parser.add_argument("--out", required=True, help="the window file to write")
    args = parser.parse_args(argv)
    try:
        dataset = load_dataset(args.data or ensure_dataset(), args.split).without_difficult()
        if args.images is not None:
            dataset = DetectionDataset(dataset.name, dataset.classes,
                                       dataset.records[:args.images])
        proposals = Proposals.load(args.proposals) if args.proposals else None
        boxes = dataset_windows(dataset, proposals, jitter=args.jitter,
                                max_proposals=args.max_proposals, source=args.proposals)
        count = write_window_file(args.out, dataset.records, boxes)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {count} windows of {len(dataset.records)} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
