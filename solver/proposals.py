"""Proposals files from external sources: ``python -m solver.proposals``.

    python -m solver.proposals selective-search --out FILE [--data DIR] [--split trainval]
                               [--mode fast|quality] [--max-per-image 2000] [--images N]
                               [--threads N]
    python -m solver.proposals import-mat --mat-dir DIR --out FILE [--data DIR] [--split S]
    python -m solver.proposals recall FILE [--data DIR] [--split S] [--max-proposals K]

``selective-search``: Selective Search (OpenCV contrib, the ``proposals``
extra) over every image of the split, images without objects included;
"fast" mode by default (the setting of R-CNN, SPPNet and Fast R-CNN), at
most 2000 boxes per image (Fast R-CNN's number), duplicates and boxes under
3 x 3 pixels dropped (detection.proposal_sources). ``import-mat``: R-CNN's /
py-faster-rcnn's ``selective_search_data`` file of the split (``<split>.mat``
in ``--mat-dir``, else the one ``*_<split>.mat`` there, as
``voc_2007_trainval.mat``; or ``--mat FILE``), its 1-based ``[y1 x1 y2 x2]``
boxes converted to ours and checked against the dataset. ``recall``: the
share of the split's objects that some proposal of the file overlaps at IoU
0.5 and 0.7 (detection.proposal_recall), with the boxes per image.

Both write the pickle-free proposals file of detection.proposals (the one
the staged schedule writes), which ``python -m solver.train NET --proposals
FILE`` and ``python -m solver.test NET --weights W --proposals FILE`` read.
Without ``--data`` the built-in synthetic dataset is used.
"""
import argparse
import glob
import os
import sys
import time

from netdef.errors import DataError
from detection.proposal_checks import DEFAULT_MAX_PROPOSALS, check_proposals
from detection.proposals import Proposals
from detection.proposal_recall import proposal_recall
from detection.proposal_sources import (DEFAULT_MAX_PER_IMAGE, DEFAULT_MODE, MODES, import_mat,
                                        selective_search)
from solver.cli import builtin_dataset, exit_status, open_dataset
from solver.progress import format_duration

__all__ = ["main", "build_parser", "find_mat_file", "progress_bar"]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m solver.proposals",
        description="Write a proposals file (for solver.train / solver.test --proposals) from "
                    "Selective Search or from R-CNN's selective_search_data .mat files.",
        epilog="Example: python -m solver.proposals selective-search --split trainval "
               "--out out/ss_trainval.npz")
    commands = parser.add_subparsers(dest="command", required=True)
    ss = commands.add_parser("selective-search", help="Selective Search (OpenCV contrib)")
    ss.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                    help=f"OpenCV's fast or quality setting (default {DEFAULT_MODE})")
    ss.add_argument("--max-per-image", type=int, default=DEFAULT_MAX_PER_IMAGE, metavar="K",
                    help=f"keep the K best ranked boxes per image (default "
                         f"{DEFAULT_MAX_PER_IMAGE}; 0: all)")
    ss.add_argument("--images", type=int, metavar="N", help="the first N images only")
    ss.add_argument("--threads", type=int, metavar="N", help="OpenCV threads (default: "
                                                             "OpenCV's)")
    mat = commands.add_parser("import-mat", help="R-CNN / py-faster-rcnn .mat files")
    where = mat.add_mutually_exclusive_group(required=True)
    where.add_argument("--mat-dir", metavar="DIR", help="a selective_search_data folder")
    where.add_argument("--mat", metavar="FILE", help="the .mat file itself")
    recall = commands.add_parser("recall", help="recall of the ground truth at IoU 0.5 / 0.7")
    recall.add_argument("file", help="a proposals file")
    recall.add_argument("--max-proposals", type=int, default=DEFAULT_MAX_PROPOSALS, metavar="K",
                        help=f"each image's first K boxes (default {DEFAULT_MAX_PROPOSALS}; "
                             f"0: all)")
    for command in (ss, mat, recall):
        command.add_argument("--data", help="dataset: a VOC-layout folder, a VOCdevkit, or a "
                                            "COCO JSON (default: the built-in synthetic "
                                            "dataset)")
        command.add_argument("--split", default="trainval", help="split (default trainval)")
    for command in (ss, mat):
        command.add_argument("--out", required=True, help="the proposals file to write (.npz)")
    return parser


def find_mat_file(folder, split):
    """``<folder>/<split>.mat``, else the one ``<folder>/*_<split>.mat``
    (py-faster-rcnn's ``voc_2007_trainval.mat``); DataError listing what
    is there otherwise."""
    exact = os.path.join(folder, f"{split}.mat")
    if os.path.isfile(exact):
        return exact
    found = sorted(glob.glob(os.path.join(glob.escape(folder), f"*_{split}.mat")))
    if len(found) == 1:
        return found[0]
    present = sorted(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(folder),
                                                                         "*.mat")))
    raise DataError(
        f"{folder}: " + (f"several .mat files for split '{split}' ({', '.join(found)}): "
                         "name one with --mat" if found else
                         f"no {split}.mat or *_{split}.mat (.mat files there: "
                         f"{', '.join(present) or 'none'})"))


def progress_bar(stream, what, width=30):
    """A progress callback ``(done, total)``: a bar redrawn in place on a
    terminal, else a line every ~10%, with the rate and the ETA."""
    started = time.perf_counter()
    live = hasattr(stream, "isatty") and stream.isatty()

    def report(done, total):
        if not live and done != total and done % max(total // 10, 1):
            return
        elapsed = max(time.perf_counter() - started, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate else None
        filled = int(width * done / max(total, 1))
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what} "
                f"({rate:.1f}/s, ETA {format_duration(eta)})")
        end = "\n" if not live or done == total else ""
        print(("\r" if live else "") + line, end=end, file=stream, flush=True)
    return report


def _dataset(args, say):
    root = args.data or builtin_dataset(say)
    # Every image of the split, those without objects too: a test split
    # keeps them, and a training run leaves out what it does not use.
    return root, open_dataset(root, args.split, for_testing=True)


def _selective_search(args, stream, say):
    root, dataset = _dataset(args, say)
    records = dataset.records[:args.images] if args.images else dataset.records
    if args.max_per_image < 0:
        raise DataError(f"--max-per-image must be positive (0: all), found {args.max_per_image}")
    say(f"Selective Search ({args.mode} mode, at most {args.max_per_image or 'all'} boxes per "
        f"image) over {len(records)} images of '{dataset.name}' split '{args.split}'")
    started = time.perf_counter()
    proposals = selective_search(
        records, mode=args.mode, max_per_image=args.max_per_image, threads=args.threads,
        progress=progress_bar(stream, "images"),
        meta={"dataset": dataset.name, "split": args.split, "root": os.path.abspath(root)})
    seconds = time.perf_counter() - started
    proposals.meta["seconds"] = round(seconds, 3)
    return proposals, f"{seconds / max(len(records), 1):.3f}s per image"


def _import_mat(args, say):
    path = args.mat or find_mat_file(args.mat_dir, args.split)
    root, dataset = _dataset(args, say)
    say(f"reading {path} for '{dataset.name}' split '{args.split}'")
    proposals = import_mat(path, dataset, meta={"split": args.split,
                                                "root": os.path.abspath(root)})
    return proposals, f"from {path}"


def _recall(args, say):
    _, dataset = _dataset(args, say)
    if args.max_proposals < 0:
        raise DataError(f"--max-proposals must be positive (0: all), found {args.max_proposals}")
    proposals = Proposals.load(args.file)
    check_proposals(proposals, dataset, args.file)
    # The images the file holds (a file of the first N images measures those).
    index = {r.image_id: r for r in dataset.records}
    records = [index[i] for i in proposals.image_ids]
    cap = args.max_proposals or None
    table = proposal_recall([b[:cap] for b in proposals.boxes], records)
    say(f"{args.file}: {table['boxes_per_image']} boxes per image; recall of the "
        f"{table['objects']} objects of {len(records)} images of '{dataset.name}': "
        + ", ".join(f"{v:.3f} at IoU {t}" for t, v in table["recall"].items())
        + f"; mean best IoU {table['best_iou_mean']:.3f}")
    return table


def main(argv=None, stream=None):
    """The entry point; returns the exit status (0 done, 2 a user error)."""
    args = build_parser().parse_args(argv)
    stream = sys.stdout if stream is None else stream

    def say(text):
        print(text, file=stream, flush=True)

    def run():
        if args.command == "recall":
            _recall(args, say)
            return 0
        if args.command == "selective-search":
            proposals, how = _selective_search(args, stream, say)
        else:
            proposals, how = _import_mat(args, say)
        folder = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(folder, exist_ok=True)
        proposals.save(args.out)
        counts = [len(b) for b in proposals.boxes]
        say(f"wrote {proposals.total} proposals of {len(proposals)} images to {args.out} "
            f"({proposals.total / max(len(proposals), 1):.1f} per image, min {min(counts)}, "
            f"max {max(counts)}; {how})")
        return 0
    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
