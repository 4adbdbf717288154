"""Evaluate a trained detector on a dataset's test split.

    python -m solver.test NET --weights W [--data DIR] [--split test] [--dump FILE]
                          [--gpu N | --cpu] [--classes FILE] [--test-net FILE]
                          [--proposals FILE [--max-proposals K]]

NET is the net file given to ``solver.train`` (its TEST phase, or the test
file beside a training file: see detection.detector) or a test net. W is a
solver snapshot (``.solverstate.npz``: its box deltas are mapped back with
the stored normalization) or a ``.caffemodel`` (normalization folded into
the weights, as the solver exports them; py-R-FCN's own models too).

Without ``--data`` the built-in synthetic dataset is used. PASCAL VOC-layout
data gets VOC AP at IoU 0.5 under both metrics (VOC07 11-point and area),
difficult objects excluded, with a per-class table; COCO JSON data gets
COCO-style AP (IoU 0.50:0.95, AP50, AP75, AR at 100 detections).
``--dump FILE`` writes every detection (image id, class, score, box in
0-based pixels) as JSON. Results also go to ``FILE.json`` with ``--results``.
A single-stage net (SSD, RetinaNet, YOLO: its detections in a
``detection_out`` blob) is run as detection.single_stage describes: the
whole image warped to its Input size (``--scale`` / ``--max-size`` play no
part), its own NMS (``--nms`` is not applied again), the classes of its
DetectionOutput (a net whose num_classes disagrees with the dataset is an
error). A Fast R-CNN test net (inputs ``data`` and ``rois``) gets each image's
proposals from ``--proposals FILE`` (``python -m solver.proposals``), its
first ``--max-proposals`` (default 2000) boxes (solver.proposal_options).

Under MPI (``mpiexec -n N python -m solver.test ...``) rank r detects images
r, r + N, ...; rank 0 gathers the detections in dataset order, scores them
(the same detections as one process, so the same metrics), prints, and alone
writes ``--dump`` / ``--results``. ``--gpu G`` picks each rank's GPU as
training does (solver.data_parallel.rank_gpu: G + the local rank, or G when
the launcher shows each rank one GPU).
"""
import argparse
import json
import os
import sys

from netdef.errors import DataError
from netdef.snapshot_format import atomic_writer
from detection.classes import pad_classes
# The helpers every entry point shares live in solver.cli and
# detection.evaluate; importable from here as before.
from solver.cli import (add_device_arguments, builtin_dataset, exit_status, is_coco_path,
                        open_dataset, select_device)
from detection.evaluate import (detection_progress, evaluate_detections, evaluate_detector,
                                   open_test_set, summary_line)
from detection.detector import DEFAULT_NMS_THRESH, Detector, load_test_net, read_class_names
from detection.single_stage import check_dataset_classes, is_single_stage, scored_classes
from detection.evaluation import dump_detections
from solver.proposal_options import add_proposal_arguments, evaluation_proposals
from solver.world import current_world, root_stream
from solver.blas import blas_threads_for
from solver.data_parallel import rank_gpu
from detection.shards import root_only

__all__ = ["main", "select_device", "open_dataset", "builtin_dataset", "is_coco_path",
           "evaluate_detections", "add_device_arguments", "summary_line", "detection_progress"]


# -- the entry point -------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m solver.test",
        description="Evaluate a detector: VOC mAP (VOC07 11-point and area) per class, or "
                    "COCO-style AP for COCO data.",
        epilog="Example: python -m solver.test prototxt/rfcn_tiny.prototxt "
               "--weights out/rfcn_tiny/rfcn_tiny_iter_4000.caffemodel")
    parser.add_argument("net", help="the net file (training file with both phases, or a "
                                    "test net)")
    parser.add_argument("--weights", required=True,
                        help="a snapshot (.solverstate.npz) or a .caffemodel")
    parser.add_argument("--data", help="dataset: a VOC-layout folder, a VOCdevkit, or a COCO "
                                       "JSON file (default: the built-in synthetic dataset)")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument("--images", type=int, metavar="N",
                        help="evaluate the first N images of the split only (a quick check)")
    parser.add_argument("--dump", metavar="FILE", help="write every detection as JSON")
    parser.add_argument("--results", metavar="FILE", help="write the metrics as JSON")
    parser.add_argument("--classes", metavar="FILE",
                        help="class names, one per line (default: the snapshot's, else the "
                             "dataset's)")
    parser.add_argument("--test-net", metavar="FILE",
                        help="the test net, when it is not found from NET")
    parser.add_argument("--scale", type=int, help="shorter image side (default: the "
                                                  "training scale; single-stage nets: their "
                                                  "Input size decides)")
    parser.add_argument("--max-size", type=int, help="cap of the longer side")
    parser.add_argument("--score-threshold", type=float, default=0.05,
                        help="detections scoring at most this are dropped (default 0.05)")
    parser.add_argument("--nms", type=float,
                        help=f"per-class NMS IoU (default {DEFAULT_NMS_THRESH}); single-stage "
                             "nets keep their own NMS and ignore it")
    parser.add_argument("--max-per-image", type=int, default=100,
                        help="detections kept per image (default 100)")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="bad annotations: stop, or skip them with a warning")
    parser.add_argument("--check-images", action="store_true",
                        help="decode every image fully while validating the dataset (slower): "
                             "a truncated or corrupt file is found before testing, not when "
                             "first read (with --on-error skip it is left out)")
    add_device_arguments(parser)
    add_proposal_arguments(parser, training=False)
    return parser


def main(argv=None, stream=None):
    args = build_parser().parse_args(argv)
    stream = sys.stdout if stream is None else stream
    world = current_world()
    world.abort_on_uncaught()
    # A failure on one rank alone (its images) must not leave the others waiting in a
    # gather: World.finish ends the job when the ranks do not all stop (solver.world).
    return world.finish(exit_status(lambda: _run(args, stream)))


def _run(args, stream):
    world = current_world()
    stream = root_stream(world, stream)

    def say(text):
        print(text, file=stream, flush=True)

    device = select_device(rank_gpu(args.gpu, world))
    # Rank 0 generates the built-in dataset on first use; the others wait for it.
    root = args.data if args.data else root_only(world, lambda: builtin_dataset(say))
    dataset = open_test_set(root, args.split, on_error=args.on_error, images=args.images,
                            check_images=args.check_images, json_is_test_set=True)
    classes = read_class_names(args.classes) if args.classes else None
    net, info = load_test_net(args.net, args.weights, device=device, test_net=args.test_net,
                              scale=args.scale, max_size=args.max_size, classes=classes,
                              stream=stream)
    scored = scored_classes(net)
    if not args.data and scored is not None and dataset.num_classes < scored:
        say(f"note: the net scores {scored - 1} classes, the built-in dataset has "
            f"{dataset.num_classes - 1}: the others have no test objects")
        dataset = pad_classes(dataset, scored)
    if is_single_stage(net):
        check_dataset_classes(net, dataset)
    names = info.classes
    if names is not None and tuple(names) != tuple(dataset.classes):
        if len(names) != len(dataset.classes):
            raise DataError(
                f"{args.weights}: the detector knows {len(names)} classes "
                f"({', '.join(names[1:])}), dataset '{dataset.name}' has "
                f"{len(dataset.classes)} ({', '.join(dataset.classes[1:])})")
        say(f"note: class names differ between the weights ({', '.join(names[1:])}) and the "
            f"dataset ({', '.join(dataset.classes[1:])}); evaluating by class index")
    say(f"testing {info.path} (TEST phase) on {len(dataset)} images of '{dataset.name}' split "
        f"'{args.split}', {_input_line(net, info, args)}, on {device}"
        + (f" ({world.describe()})" if world.size > 1 else "")
        + (", box deltas un-normalized with the snapshot's stds/means"
           if info.bbox_normalization else ""))
    detector = Detector(net, scale=info.scale, max_size=info.max_size,
                        bbox_normalization=info.bbox_normalization,
                        score_thresh=args.score_threshold,
                        nms_thresh=DEFAULT_NMS_THRESH if args.nms is None else args.nms,
                        max_per_image=args.max_per_image,
                        proposals=evaluation_proposals(args.proposals, args, net, dataset, root,
                                                       say, images=args.images),
                        input_transform=info.input_transform)
    # The training session's BLAS rule: a small net's products on one thread.
    with blas_threads_for(net, device, say=say):
        all_boxes, _, summary, elapsed = evaluate_detector(detector, dataset,
                                                           is_coco_path(root), stream, every=50,
                                                           world=world)
    say(summary_line(summary))
    say(f"{len(dataset)} images in {elapsed:.1f}s")
    if not world.is_root:   # rank 0 writes the files
        return 0
    if args.dump:
        count = dump_detections(args.dump, dataset, all_boxes)
        say(f"wrote {count} detections to {args.dump}")
    if args.results:
        with atomic_writer(args.results) as handle:
            handle.write(json.dumps(dict(summary, weights=os.fspath(args.weights),
                                         images=len(dataset)), indent=1).encode("utf-8"))
        say(f"wrote {args.results}")
    return 0


def _input_line(net, info, args):
    """How images enter the net, for the opening line: the scale of a
    two-stage net; a single-stage net's warp, mean and scale (and a note
    on the options it ignores)."""
    if not is_single_stage(net):
        return f"scale {info.scale} (max {info.max_size})"
    height, width = net.blobs["data"].shape[2:4]
    ignored = [name for name, value in (("--scale", args.scale), ("--max-size", args.max_size),
                                        ("--nms", args.nms)) if value is not None]
    return (f"images warped to {height}x{width} {info.input_transform.describe()}, the net's "
            f"own NMS" + (f" ({', '.join(ignored)} ignored)" if ignored else ""))


if __name__ == "__main__":
    sys.exit(main())
