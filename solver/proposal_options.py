"""``--proposals FILE`` for ``solver.train`` and ``solver.test``: Fast
R-CNN trained and tested on external proposals (Selective Search, a .mat
import, an RPN stage's file; detection.proposal_sources).

    add_proposal_arguments(parser, training=True)   # --proposals, --test-proposals, --max-proposals
    boxes = training_proposals(args, data_layer, train_set, root, say)
    session.feed(train_set, boxes)                  # None for an end-to-end net
    by_id = evaluation_proposals(args.test_proposals, args, test_net, test_set, root, say)
    Detector(test_net, ..., proposals=by_id)        # feeds the test net's rois input

Training: the net's data layer must be RoIData in its precomputed-RoI form
(``has_rpn: false``; Fast R-CNN, the staged detector nets); it samples its
RoIs per image from the file's boxes plus the ground truth with its own
parameters (images per batch, RoIs per image, fg fraction and thresholds).
Testing: the test net takes ``data`` and ``rois`` as inputs (Fast R-CNN's
test.prototxt), and each image's proposals go in as its RoIs.

Each image keeps its first ``--max-proposals`` boxes (default 2000, Fast
R-CNN's Selective Search count; the file's order is best first: RPN score,
Selective Search rank), which bounds the time of a test image. The file is
checked against the whole split (images without objects included):
detection.proposal_checks names the file, the image and the reason.
"""
import warnings

from netdef.errors import DataError, DataWarning
from detection.datasets import load_dataset
from detection.evaluate import open_test_set
from detection.proposal_checks import DEFAULT_MAX_PROPOSALS, proposals_for_dataset

__all__ = ["add_proposal_arguments", "training_proposals", "evaluation_proposals",
           "takes_rois", "SS_HINT"]

SS_HINT = "python -m solver.proposals selective-search --split {split} --out FILE"


def add_proposal_arguments(parser, *, training):
    """``--proposals FILE`` and ``--max-proposals K``; for training also
    ``--test-proposals FILE`` (the test split's, for the evaluation)."""
    group = parser.add_argument_group("external proposals (Fast R-CNN)")
    if training:
        group.add_argument("--proposals", metavar="FILE",
                           help="proposals of the training split for a precomputed-RoI data "
                                "layer (python -m solver.proposals ...)")
        group.add_argument("--test-proposals", metavar="FILE",
                           help="proposals of the test split, for a test net with a rois input")
    else:
        group.add_argument("--proposals", metavar="FILE",
                           help="proposals of the split, fed to a test net with a rois input")
    group.add_argument("--max-proposals", type=int, default=DEFAULT_MAX_PROPOSALS, metavar="K",
                       help=f"keep each image's first K proposals (default "
                            f"{DEFAULT_MAX_PROPOSALS}; 0: all)")


def _whole_split(load):
    # The split again with every image (the run's own load left out images
    # without objects, or bad ones): warnings were given by that load.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return load()


def _summary(boxes, path, cap):
    total = sum(len(b) for b in boxes)
    return (f"proposals: {path}: {total} boxes for {len(boxes)} images "
            f"({total / max(len(boxes), 1):.1f} per image"
            + (f", at most {cap} kept per image)" if cap else ")"))


def training_proposals(args, layer, train_set, root, say):
    """The per-record boxes of ``args.proposals`` for ``train_set``, or None
    without the option. DataError when the option and the data layer's
    form disagree (precomputed RoIs need a file, end-to-end takes none)."""
    path = getattr(args, "proposals", None)
    if layer.has_rpn:
        if path:
            raise DataError(f"--proposals {path}: data layer '{layer.name}' is in the "
                            f"end-to-end form (has_rpn), whose RPN makes the proposals; a "
                            f"Fast R-CNN net has a RoIData layer with has_rpn: false")
        return None
    if not path:
        raise DataError(
            f"data layer '{layer.name}' takes precomputed proposals (has_rpn: false, a Fast "
            f"R-CNN net): give --proposals FILE, e.g. from "
            f"{SS_HINT.format(split=args.train_split)}")
    split = _whole_split(lambda: load_dataset(root, args.train_split, keep_empty=True,
                                              on_error=args.on_error))
    boxes = proposals_for_dataset(path, train_set, args.max_proposals, split=split,
                                  on_unknown="skip" if args.on_error == "skip" else "raise")
    say(_summary(boxes, path, args.max_proposals))
    return boxes


def takes_rois(net):
    """True for a Fast R-CNN test net: ``rois`` is one of its inputs."""
    return "rois" in net.inputs


def evaluation_proposals(path, args, net, test_set, root, say, *, split_name=None,
                         images=None):
    """``{image id: (R, 4) boxes}`` of ``path`` for ``test_set``, or None
    for a net that makes its own RoIs and no ``path``. DataError when a
    Fast R-CNN test net has no file, or a file is given for a net without a
    ``rois`` input. ``images``: the run cut the split to its first N (the
    file is checked against the whole split)."""
    if net is None:
        return None
    split_name = split_name or getattr(args, "test_split", None) or args.split
    if not takes_rois(net):
        if path:
            raise DataError(f"{path}: the test net {net.source} makes its own RoIs (its "
                            f"inputs: {', '.join(net.inputs) or 'none'}); proposals from a "
                            f"file need a Fast R-CNN test net with the inputs data and rois")
        return None
    if not path:
        option = "--test-proposals" if hasattr(args, "test_proposals") else "--proposals"
        raise DataError(
            f"the test net {net.source} takes rois as an input (Fast R-CNN): give {option} "
            f"FILE for split '{split_name}', e.g. from {SS_HINT.format(split=split_name)}"
            + (", or --no-eval" if option == "--test-proposals" else ""))
    split = test_set
    if images:
        as_test_set = not hasattr(args, "test_proposals")    # solver.test: a JSON is the test set
        split = _whole_split(lambda: open_test_set(root, split_name, on_error=args.on_error,
                                                   json_is_test_set=as_test_set))
    boxes = proposals_for_dataset(path, test_set, args.max_proposals, split=split,
                                  on_unknown="skip" if args.on_error == "skip" else "raise")
    say(_summary(boxes, path, args.max_proposals))
    return {r.image_id: b for r, b in zip(test_set.records, boxes)}
