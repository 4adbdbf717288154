"""External proposal sources, written as ``detection.proposals.Proposals``
(the pickle-free file the staged schedule and ``--proposals`` read):

- Selective Search (Uijlings et al. 2013), the proposals of R-CNN, SPPNet
  and Fast R-CNN, through OpenCV contrib's
  ``cv2.ximgproc.segmentation.createSelectiveSearchSegmentation`` (the
  ``proposals`` extra: ``pip install -e '.[proposals]'``);
- R-CNN's / py-faster-rcnn's ``selective_search_data/<split>.mat`` files
  (MATLAB, read with scipy, the same extra).

    proposals = selective_search(dataset.records, mode="fast", max_per_image=2000)
    proposals = import_mat("selective_search_data/voc_2007_trainval.mat", dataset)
    proposals.save("ss_trainval.npz")

Both give boxes ``[x1, y1, x2, y2]`` in inclusive 0-based pixels, cleaned as
py-faster-rcnn's ``pascal_voc._load_selective_search_roidb`` cleans them
(``clean_boxes``): exact duplicates removed (the first kept, the order kept)
and small boxes dropped: a box is kept when ``x2 - x1 >= 2`` and
``y2 - y1 >= 2`` (``ds_utils.filter_small_boxes`` with its ``min_size`` 2,
i.e. at least 3 x 3 pixels).

Modes: "fast" (the default) is OpenCV's ``switchToSelectiveSearchFast``,
the paper's fast setting that R-CNN, SPPNet and Fast R-CNN used (colour
spaces HSV and Lab, two similarity strategies, Felzenszwalb k 50 and 100);
"quality" is ``switchToSelectiveSearchQuality`` (five colour spaces, four
strategies, k 50 to 150: about 3 times slower and 2 to 3 times the boxes).
OpenCV lists the boxes in the paper's diversified rank order (region level
times a random number), best first; ``max_per_image`` (default 2000, Fast
R-CNN's number) keeps the first ones. OpenCV draws those random numbers from
the C library's generator, which Python cannot seed: the set of boxes of an
image is the same in every run, their order (and so which survive a cap
that bites) is not.
"""
import os

import numpy as np

from layers.input_pipeline.preprocess import prefetched_images
from netdef.errors import DataError
from detection.proposal_checks import check_proposals, image_box_problem, record_index
from detection.proposals import Proposals

__all__ = ["selective_search", "selective_search_image", "import_mat", "clean_boxes",
           "rects_to_boxes", "MODES", "DEFAULT_MODE", "DEFAULT_MAX_PER_IMAGE", "MIN_SIZE",
           "INSTALL"]

MODES = ("fast", "quality")
DEFAULT_MODE = "fast"
DEFAULT_MAX_PER_IMAGE = 2000     # Fast R-CNN: about 2000 Selective Search boxes per image
MIN_SIZE = 2                     # py-faster-rcnn's pascal_voc config['min_size']
INSTALL = "pip install -e '.[proposals]'"


def clean_boxes(boxes, min_size=MIN_SIZE):
    """``boxes`` ``(K, 4)`` without exact duplicates (first occurrence kept,
    order kept) and without boxes with ``x2 - x1 < min_size`` or
    ``y2 - y1 < min_size`` (py-faster-rcnn's unique_boxes and
    filter_small_boxes)."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    if not len(boxes):
        return boxes
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)]
    big = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    return boxes[big]


def rects_to_boxes(rects):
    """OpenCV rectangles ``(K, 4)`` ``[x, y, width, height]`` as inclusive
    boxes ``[x1, y1, x2, y2]`` = ``[x, y, x + w - 1, y + h - 1]``."""
    rects = np.asarray(rects, np.int64).reshape(-1, 4)
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:] - 1], axis=1)


def _segmentation():
    """OpenCV contrib's Selective Search object, or a DataError naming the
    extra when OpenCV (or its contrib part) is missing."""
    try:
        import cv2
    except ImportError:
        raise DataError("Selective Search needs OpenCV with its contrib modules, part of the "
                        f"proposals extra: {INSTALL} (opencv-contrib-python-headless)") from None
    if not hasattr(cv2, "ximgproc"):
        raise DataError(
            f"Selective Search needs OpenCV's contrib modules (cv2.ximgproc); OpenCV "
            f"{cv2.__version__} is installed without them: pip uninstall opencv-python "
            f"opencv-python-headless, then {INSTALL} (opencv-contrib-python-headless)")
    return cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()


def selective_search_image(segmentation, image_bgr, mode=DEFAULT_MODE,
                           max_per_image=DEFAULT_MAX_PER_IMAGE):
    """Selective Search boxes ``(K, 4)`` float32 ``[x1, y1, x2, y2]`` of one
    ``(H, W, 3)`` BGR image (float or uint8, 0..255), best ranked first,
    cleaned (``clean_boxes``), at most ``max_per_image`` (0 or None: all).
    ``segmentation``: ``createSelectiveSearchSegmentation()``'s object."""
    if mode not in MODES:
        raise DataError(f"Selective Search mode must be one of {', '.join(MODES)}, "
                        f"found {mode!r}")
    image = np.ascontiguousarray(np.clip(np.asarray(image_bgr), 0, 255).astype(np.uint8))
    segmentation.setBaseImage(image)
    if mode == "fast":
        segmentation.switchToSelectiveSearchFast()
    else:
        segmentation.switchToSelectiveSearchQuality()
    boxes = clean_boxes(rects_to_boxes(segmentation.process()))
    if max_per_image:
        boxes = boxes[:int(max_per_image)]
    return boxes.astype(np.float32)


def selective_search(records, *, mode=DEFAULT_MODE, max_per_image=DEFAULT_MAX_PER_IMAGE,
                     progress=None, meta=None, threads=None):
    """Selective Search proposals of every record of ``records``
    (ImageRecord list), in order: ``Proposals`` without scores, its meta
    ``source`` "selective_search", ``mode``, ``max_per_image``,
    ``min_size`` and ``meta``. ``progress(done, total)`` after each image;
    ``threads``: OpenCV's thread count (None: OpenCV's default). The next
    image is read in a background thread while this one is segmented."""
    segmentation = _segmentation()
    if threads is not None:
        import cv2
        cv2.setNumThreads(int(threads))
    records = list(records)
    boxes = []
    for i, (record, image) in enumerate(prefetched_images(records)):
        boxes.append(selective_search_image(segmentation, image, mode, max_per_image))
        if progress is not None:
            progress(i + 1, len(records))
    info = dict(meta or {}, source="selective_search", mode=mode,
                max_per_image=int(max_per_image or 0), min_size=MIN_SIZE)
    return Proposals([r.image_id for r in records], boxes, None, info)


def _loadmat(path):
    try:
        import scipy.io
    except ImportError:
        raise DataError(f"{path}: MATLAB files need scipy, part of the proposals extra: "
                        f"{INSTALL}") from None
    try:
        return scipy.io.loadmat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as exc:   # scipy raises ValueError, MatReadError, TypeError ...
        raise DataError(f"{path}: not a readable MATLAB file ({type(exc).__name__}: "
                        f"{exc})") from None


def _cell(path, mat, name, what):
    if name not in mat:
        fields = ", ".join(k for k in mat if not k.startswith("__")) or "none"
        raise DataError(f"{path}: no '{name}' field ({what}); its fields: {fields}")
    return np.asarray(mat[name], dtype=object).reshape(-1) if mat[name].dtype == object \
        else np.asarray(mat[name])


def _mat_image_ids(path, mat):
    """The ``images`` field as a list of str (a cell of strings, or a char
    matrix, one id per row)."""
    images = mat.get("images")
    if images is None:
        _cell(path, mat, "images", "the image ids, one per box array")
    if images.dtype == object:
        return [str(np.asarray(v).reshape(-1)[0]) if np.asarray(v).size else ""
                for v in images.reshape(-1)]
    if images.dtype.kind == "U":
        return [str(v).strip() for v in images.reshape(-1)]
    raise DataError(f"{path}: 'images' should hold strings (image ids), found "
                    f"{images.dtype} {images.shape}")


def import_mat(path, dataset, meta=None):
    """The proposals of a R-CNN / py-faster-rcnn ``selective_search_data``
    ``.mat`` file (fields ``images``: image ids, ``boxes``: a cell with one
    ``(K, 4)`` array of 1-based ``[y1 x1 y2 x2]`` per image) for
    ``dataset``: converted with ``[:, (1, 0, 3, 2)] - 1`` (py-faster-rcnn's
    ``_load_selective_search_roidb``), checked against the dataset, then
    cleaned (``clean_boxes``), in the file's order. An unknown image id, a
    row that is not 4 numbers, NaN/Inf, x2 < x1 or a box outside its image
    is a DataError naming the file, the image and the reason
    (``detection.proposal_checks``)."""
    mat = _loadmat(path)
    ids = _mat_image_ids(path, mat)
    cells = _cell(path, mat, "boxes", "one (K, 4) array [y1 x1 y2 x2] per image")
    if cells.dtype != object:
        raise DataError(f"{path}: 'boxes' should be a cell array (one (K, 4) array per image), "
                        f"found a {cells.dtype} array {cells.shape}")
    if len(cells) != len(ids):
        raise DataError(f"{path}: {len(cells)} box arrays for {len(ids)} image ids")
    index = record_index(ids, dataset, path)
    boxes = []
    for image_id, cell in zip(ids, cells):
        array = np.asarray(cell)
        if array.size == 0:
            boxes.append(np.zeros((0, 4), np.float32))
            continue
        if array.ndim != 2 or array.shape[1] != 4 or array.dtype.kind not in "iuf":
            raise DataError(f"{path}: image '{image_id}': expected (K, 4) numbers "
                            f"[y1 x1 y2 x2], found {array.dtype} {array.shape}")
        converted = array[:, (1, 0, 3, 2)].astype(np.float64) - 1
        record = index[image_id]
        problem = image_box_problem(converted, int(record.width), int(record.height))
        if problem:
            raise DataError(f"{path}: image '{image_id}' ({record.path}), boxes converted to "
                            f"0-based [x1 y1 x2 y2]: {problem}")
        boxes.append(clean_boxes(converted).astype(np.float32))
    info = dict(meta or {}, source="mat", file=os.path.abspath(path), min_size=MIN_SIZE,
                dataset=getattr(dataset, "name", None))
    proposals = Proposals(ids, boxes, None, info)
    check_proposals(proposals, dataset, path)
    return proposals
