"""See inside a trained net: ``python -m solver.visualize``.

Per-image methods (one picture per image, or per detection of a detector):

    python -m solver.visualize METHOD NET --weights W IMAGE... [--out DIR]
        [--class NAME | --detection K] [--blob NAME] [--threshold T] [--save-maps]
        [--gpu N | --cpu]

    METHOD: saliency, guided, deconvnet, gradcam, cam, occlusion (--patch P
    --stride S --batch B), rfcn (R-FCN's position-sensitive vote of one
    detection), rpn (anchors, AnchorTarget labels and proposals; --location
    ROW COL, --data DIR for the image's ground truth)

Writes ``<image stem>_<method>.png`` into ``--out`` (default
``out/visualize``); for a detector, one picture per detection,
``<image stem>_<method>_det<K>.png``, K indexing the detections
``solver.detect`` gives for that image at the same ``--threshold``, highest
score first (``--detection K``: only that one; ``--class NAME``: only those
of that class). For a classifier the target is the pre-softmax score of
``--class`` (default: the top class). ``--save-maps`` also writes each map
as a float32 ``.npy`` of the image's height and width.

Methods with their own synopsis:

    python -m solver.visualize class-model NET --weights W --class NAME
        [--steps N] [--jitter PX] [--blur-every N] [--blur-sigma S] [--lr X] [--l2 X]
    python -m solver.visualize top-patches NET --weights W --data DIR --blob B
        --units U [U ...] [--k K] [--split S] [--limit N]
    python -m solver.visualize embeddings NET --weights W --data DIR --blob B
        [--tsne] [--split S] [--limit N]
    python -m solver.visualize browse --data DIR [--split S] [--per-page N]
        [--columns N] [--limit N]

Bad input (a blob, class or detection the net does not have) is one
``error:`` line naming it and the valid choices, exit status 2.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image

from detection.datasets import load_dataset
from detection.detector import read_class_names
from detection.draw import draw_detections
from detection.visualize import gradients
from detection.visualize.browser import browse
from detection.visualize.class_model import class_model
from detection.visualize.embeddings import embeddings
from detection.visualize.model import VisualModel
from detection.visualize.occlusion import occlusion
from detection.visualize.overlay import heatmap_overlay, save_map, save_overlay
from detection.visualize.rfcn_inside import rfcn_inside
from detection.visualize.rpn_inside import rpn_inside
from detection.visualize.top_patches import top_patches
from netdef.errors import DataError
from netdef.snapshot_format import atomic_writer
from solver.cli import add_device_arguments, exit_status, select_device

__all__ = ["main", "build_parser", "IMAGE_METHODS", "progress_bar"]

#: Per-image methods giving a map: name -> function(model, image, target, args).
MAP_METHODS = {
    "saliency": lambda model, image, target, args: gradients.saliency(model, image, target),
    "guided": lambda model, image, target, args: gradients.guided_backprop(model, image, target),
    "deconvnet": lambda model, image, target, args: gradients.deconvnet(model, image, target),
    "gradcam": lambda model, image, target, args: gradients.grad_cam(model, image, target,
                                                               blob=args.blob),
    "cam": lambda model, image, target, args: gradients.cam(model, image, target),
    "occlusion": lambda model, image, target, args: occlusion(
        model, image, target, patch=args.patch, stride=args.stride, batch=args.batch,
        progress=progress_bar(args.messages, "occlusion")),
}
IMAGE_METHODS = tuple(MAP_METHODS) + ("rfcn", "rpn")
DEFAULT_OUT = os.path.join("out", "visualize")


def progress_bar(stream, label, width=30):
    """A ``callable(done, total)`` drawing ``label [#####   ] done/total``
    on one line of ``stream``: redrawn in place on a terminal, else (a log)
    one line at each quarter; the line ends at the last step."""
    tty = hasattr(stream, "isatty") and stream.isatty()
    shown = []

    def report(done, total):
        quarter = 4 * done // max(total, 1)
        if not tty and done < total and quarter in shown:
            return
        shown.append(quarter)
        filled = int(width * done / max(total, 1))
        bar = f"  {label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        print("\r" + bar if tty else bar, end="\n" if done >= total or not tty else "",
              file=stream, flush=True)
    return report


# -- the parser ------------------------------------------------------------------------

def _net_arguments(parser):
    parser.add_argument("net", metavar="NET", help="the net file (a test net or a file with "
                                                   "both phases)")
    parser.add_argument("--weights", required=True,
                        help="a .caffemodel or a snapshot (.solverstate.npz)")
    parser.add_argument("--classes", metavar="FILE", help="class names, one per line")
    parser.add_argument("--scale", type=int, help="shorter image side of a detector "
                                                  "(default: the training scale)")
    parser.add_argument("--max-size", type=int, help="cap of a detector's longer image side")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"folder for the pictures (default {DEFAULT_OUT})")
    add_device_arguments(parser)


def _data_arguments(parser, required, split="test"):
    parser.add_argument("--data", required=required, metavar="DIR",
                        help="a dataset the trainer reads (VOC layout or COCO JSON)")
    parser.add_argument("--split", default=split, help=f"its split (default {split})")
    parser.add_argument("--limit", type=int, help="use only its first N images")


def _image_parser(subparsers, method):
    parser = subparsers.add_parser(method, help=_HELP[method], description=_HELP[method])
    _net_arguments(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    choose = parser.add_mutually_exclusive_group()
    choose.add_argument("--class", dest="class_name", metavar="NAME",
                        help="classifier: the class scored (default the top one); "
                             "detector: only detections of that class")
    choose.add_argument("--detection", type=int, metavar="K",
                        help="detector: only detection K (0 = the highest score)")
    parser.add_argument("--blob", help="gradcam: the convolutional blob (default the last "
                                       "one feeding the scores)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="lowest detection score (default 0.5, as solver.detect)")
    parser.add_argument("--save-maps", action="store_true",
                        help="also write each map as a float32 .npy")
    if method == "occlusion":
        parser.add_argument("--patch", type=int, help="grey patch side in image pixels "
                                                      "(default an eighth of the shorter side)")
        parser.add_argument("--stride", type=int, help="image pixels between patches "
                                                       "(default half the patch)")
        parser.add_argument("--batch", type=int, default=8, help="patches per forward pass")
    if method == "rpn":
        parser.add_argument("--location", type=int, nargs=2, metavar=("ROW", "COL"),
                            help="the RPN map cell whose anchors are drawn (default: the "
                                 "best anchor's)")
        _data_arguments(parser, required=False)
    return parser


def _other_parsers(subparsers):
    sub = subparsers.add_parser("class-model", help=_HELP["class-model"],
                                description=_HELP["class-model"])
    _net_arguments(sub)
    sub.add_argument("--class", dest="class_name", required=True, metavar="NAME")
    sub.add_argument("--steps", type=int, default=200, help="ascent steps (default 200)")
    sub.add_argument("--jitter", type=int, default=0, help="random shift in pixels per step")
    sub.add_argument("--blur-every", type=int, default=0, help="blur every N steps (0: never)")
    sub.add_argument("--blur-sigma", type=float, help="the blur's Gaussian sigma")
    sub.add_argument("--lr", type=float, help="step size (default: set from the first "
                                              "gradient)")
    sub.add_argument("--l2", type=float, help="weight of the L2 regularizer")
    for name in ("top-patches", "embeddings"):
        sub = subparsers.add_parser(name, help=_HELP[name], description=_HELP[name])
        _net_arguments(sub)
        _data_arguments(sub, required=True)
        sub.add_argument("--blob", required=True, help="the blob whose units or features "
                                                       "are shown")
        if name == "top-patches":
            sub.add_argument("--units", type=int, nargs="+", required=True, metavar="U",
                             help="channels of the blob")
            sub.add_argument("--k", type=int, default=9, help="patches per unit (default 9)")
        else:
            sub.add_argument("--tsne", action="store_true",
                             help="t-SNE (scikit-learn, the viz extra) instead of PCA")
            sub.add_argument("--save-maps", action="store_true",
                             help="also write the 2-D points as a .npy")
    sub = subparsers.add_parser("browse", help=_HELP["browse"], description=_HELP["browse"])
    _data_arguments(sub, required=True, split="trainval")
    sub.add_argument("--per-page", type=int, default=12, help="images per page (default 12)")
    sub.add_argument("--columns", type=int, default=4, help="images per row (default 4)")
    sub.add_argument("--out", default=DEFAULT_OUT,
                     help=f"folder for the pages (default {DEFAULT_OUT})")


_HELP = {
    "saliency": "vanilla input gradient of the target score",
    "guided": "guided backpropagation (ReLUs pass positive gradients of positive inputs)",
    "deconvnet": "deconvnet (ReLUs pass positive gradients)",
    "gradcam": "Grad-CAM on a convolutional blob (--blob)",
    "cam": "class activation map (nets ending in global average pooling + InnerProduct)",
    "occlusion": "score drop under a grey patch slid over the image",
    "rfcn": "R-FCN: a detection's position-sensitive maps, the bins read and the vote",
    "rpn": "RPN: anchors at a location, AnchorTarget labels, proposals before/after NMS",
    "class-model": "class model visualization: L2-regularized score ascent from a blank "
                   "image (Simonyan et al.; jitter and blur of Yosinski et al.)",
    "top-patches": "the top-k image patches of chosen units of a blob over a dataset",
    "embeddings": "features of a blob for the ground-truth boxes of a dataset in 2-D "
                  "(PCA, or t-SNE)",
    "browse": "dataset browser: images with their ground-truth boxes (no net)",
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m solver.visualize",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="See inside a trained net: saliency, guided backprop, deconvnet, "
                    "Grad-CAM, CAM and\nocclusion maps; R-FCN's and the RPN's insides; class "
                    "models, top patches,\nembeddings; a dataset browser.",
        epilog=__doc__.split("\n\n", 1)[1].split("\nBad input")[0].replace("``", "") + "\n"
               "Example: python -m solver.visualize gradcam prototxt/rfcn_tiny.prototxt "
               "--weights out/rfcn_tiny/rfcn_tiny_iter_4000.caffemodel photo.jpg")
    subparsers = parser.add_subparsers(dest="method", metavar="METHOD", required=True)
    for method in IMAGE_METHODS:
        _image_parser(subparsers, method)
    _other_parsers(subparsers)
    return parser


# -- running ---------------------------------------------------------------------------

def main(argv=None, messages=None):
    """The entry point; messages (and progress) go to ``messages`` (stderr
    by default). Returns the exit status (2 for a user error)."""
    args = build_parser().parse_args(argv)
    args.messages = sys.stderr if messages is None else messages
    run = _run_images if args.method in IMAGE_METHODS else _RUNNERS[args.method]
    return exit_status(lambda: run(args))


def _say(args, text):
    print(text, file=args.messages, flush=True)


def _open_model(args):
    device = select_device(args.gpu)
    classes = read_class_names(args.classes) if args.classes else None
    return VisualModel(args.net, args.weights, device=device, classes=classes,
                       scale=args.scale, max_size=args.max_size)


def read_rgb(path):
    """An image file as ``(H, W, 3)`` uint8 RGB (DataError when unreadable)."""
    try:
        with Image.open(path) as opened:
            return np.asarray(opened.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read the image: {exc}") from None


def _targets(model, image, args):
    """The targets of one image, one at a time (a bad option fails at the
    first): the classifier's class, or the chosen detections of a detector
    (K, class, threshold as the module docstring says)."""
    if model.kind != "detector":
        if args.detection is not None:
            raise DataError(f"--detection {args.detection}: {args.net} is a classifier; "
                            f"choose a class with --class NAME ({', '.join(model.classes)})")
        yield model.target(image, class_name=args.class_name)
        return
    if args.detection is not None:
        yield model.target(image, detection=args.detection, threshold=args.threshold)
        return
    if args.class_name is not None:
        model.class_index(args.class_name)
    for found in model.detections(image, threshold=args.threshold):
        if args.class_name is None or found.class_name == args.class_name:
            yield model.target(image, detection=found.index, threshold=args.threshold)


def _check_image_options(model, args):
    if args.blob is not None and args.method != "gradcam":
        raise DataError(f"--blob applies to gradcam (and top-patches, embeddings), not "
                        f"{args.method}")
    if args.method == "rfcn" and model.kind != "detector":
        raise DataError(f"rfcn: {args.net} is a classifier; R-FCN inside needs an R-FCN "
                        "detector")


def _run_images(args):
    model = _open_model(args)
    _check_image_options(model, args)
    os.makedirs(args.out, exist_ok=True)
    truth = _ground_truth(args) if args.method == "rpn" else None
    for path in args.images:
        image = read_rgb(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        if args.method == "rpn":
            gt = truth.get(os.path.basename(path)) if truth is not None else None
            if truth is not None and gt is None:
                _say(args, f"{path}: not an image of --data's split {args.split}: no "
                           "AnchorTarget labels drawn")
            picture = rpn_inside(model, image, location=args.location, gt_boxes=gt)
            _say(args, f"wrote {save_overlay(args.out, stem, 'rpn', picture)}")
            continue
        written = 0
        for written, target in enumerate(_targets(model, image, args), 1):
            _write_target(model, image, stem, target, args)
        if not written:
            _say(args, f"{path}: no detection scoring >= {args.threshold:g}"
                       f"{' of class ' + args.class_name if args.class_name else ''}: "
                       "nothing drawn")
    return 0


def _write_target(model, image, stem, target, args):
    """The picture (and with --save-maps the map) of one target."""
    k = target.detection.index if target.detection is not None else None
    if args.method == "rfcn":
        picture = rfcn_inside(model, image, detection=k, threshold=args.threshold)
    else:
        heat = MAP_METHODS[args.method](model, image, target, args)
        shown = image
        if target.detection is not None:       # the detection's box under the heat map
            det = target.detection
            shown = np.asarray(draw_detections(Image.fromarray(image),
                                               [(det.class_name, det.score, det.box)]))
        picture = heatmap_overlay(shown, heat, title=f"{args.method}: {target.label}")
        if args.save_maps:
            _say(args, f"wrote {save_map(args.out, stem, args.method, heat, detection=k)}")
    _say(args, f"wrote {save_overlay(args.out, stem, args.method, picture, detection=k)}")


def _ground_truth(args):
    """Image file name -> ground-truth boxes ``(G, 4)`` of ``--data``'s
    split (None without --data)."""
    if not args.data:
        return None
    dataset = load_dataset(args.data, args.split, keep_empty=True)
    return {os.path.basename(r.path): r.boxes for r in dataset.records}


def _open_split(args):
    dataset = load_dataset(args.data, args.split, keep_empty=True)
    if args.limit is not None:
        dataset.records = dataset.records[:max(args.limit, 0)]
    return dataset


def _save_picture(args, name, picture):
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, name)
    with atomic_writer(path) as handle:
        picture.save(handle, format="PNG")
    _say(args, f"wrote {path}")
    return path


def _run_class_model(args):
    model = _open_model(args)
    index = model.class_index(args.class_name)
    options = {"steps": args.steps, "jitter": args.jitter, "blur_every": args.blur_every}
    for name in ("blur_sigma", "lr", "l2"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    bar = progress_bar(args.messages, f"class model '{args.class_name}'")
    image, objectives = class_model(model, index, callback=lambda step, value: bar(
        step + 1, args.steps), **options)
    if objectives:
        _say(args, f"regularized objective: {objectives[0]:.4g} -> {objectives[-1]:.4g}")
    _save_picture(args, f"class_model_{_file_part(args.class_name)}.png", Image.fromarray(image))
    return 0


def _run_top_patches(args):
    model = _open_model(args)
    dataset = _open_split(args)
    picture = top_patches(model, [r.path for r in dataset.records], args.blob, args.units,
                          k=args.k, progress=progress_bar(args.messages, "top patches"))
    _save_picture(args, f"top_patches_{_file_part(args.blob)}.png", picture)
    return 0


def _run_embeddings(args):
    model = _open_model(args)
    dataset = _open_split(args)
    method = "tsne" if args.tsne else "pca"
    found = embeddings(model, dataset, args.blob, method=method,
                       progress=progress_bar(args.messages, "features"))
    stem = f"embeddings_{_file_part(args.blob)}_{method}"
    _save_picture(args, stem + ".png", found.picture)
    if args.save_maps:
        path = os.path.join(args.out, stem + ".npy")
        np.save(path, np.asarray(found.points, np.float32))
        _say(args, f"wrote {path}")
    return 0


def _run_browse(args):
    dataset = _open_split(args)
    pages = browse(dataset, args.out, per_page=args.per_page, columns=args.columns,
                   progress=progress_bar(args.messages, "images"))
    _say(args, f"wrote {len(pages)} page(s) of {len(dataset)} images to {args.out}")
    return 0


def _file_part(name):
    """``name`` made safe inside a file name (``conv5/3x3`` -> ``conv5_3x3``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


_RUNNERS = {"class-model": _run_class_model, "top-patches": _run_top_patches,
            "embeddings": _run_embeddings, "browse": _run_browse}


if __name__ == "__main__":
    sys.exit(main())
