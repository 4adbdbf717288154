"""Caffe-SSD's box matching, target encoding and hard negative mining, as
pure functions on host NumPy arrays (used by layers/multibox_loss.py).

Caffe-SSD runs these steps on the host too (MultiBoxLossLayer copies the
predictions to the CPU for FindMatches / MineHardExamples); only the
per-prior confidence losses that mining ranks are computed where the
predictions live (``prior_conf_losses`` takes any array module).

Boxes are normalized ``[xmin, ymin, xmax, ymax]`` (no "+1" pixel), as
Caffe-SSD's NormalizedBBox. Match codes per prior: the index of the matched
ground-truth box (>= 0) or -1 (unmatched).
"""
import numpy as np

from netdef.device import array_module
from netdef.errors import DataError

# PriorBoxParameter.CodeType values (caffe.proto).
CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3
# MultiBoxLossParameter.MatchType values.
BIPARTITE, PER_PREDICTION = 0, 1


def label_rows(rows, use_difficult=True):
    """AnnotatedData's label blob (..., 8) ``[image, class, instance, xmin,
    ymin, xmax, ymax, difficult]`` as (K, 8) float64 rows, without its
    filler rows (image -1) and, unless ``use_difficult``, difficult ones."""
    rows = rows.reshape(-1, 8).astype(np.float64)
    rows = rows[rows[:, 0] != -1]
    return rows if use_difficult else rows[rows[:, 7] == 0]


def refuse_bad_rows(rows, problems, where):
    """DataError "WHERE: expected ..., found row [...]" for the first row
    flagged by the first of ``problems`` ((bad mask (K,), what was
    expected)) that flags any."""
    for bad, expected in problems:
        if bad.any():
            row = rows[np.flatnonzero(bad)[0]]
            raise DataError(f"{where}: expected {expected}, found row "
                            f"{[float(v) for v in row]}")


def iou_matrix(boxes, gt):
    """Caffe-SSD's JaccardOverlap of every box (P, 4) with every gt (G, 4):
    (P, G). An empty intersection gives 0; an inverted box has size 0."""
    iw = np.minimum(boxes[:, None, 2], gt[None, :, 2]) - np.maximum(boxes[:, None, 0], gt[None, :, 0])
    ih = np.minimum(boxes[:, None, 3], gt[None, :, 3]) - np.maximum(boxes[:, None, 1], gt[None, :, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)

    def size(b):
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        return np.where((w < 0) | (h < 0), 0.0, w * h)
    union = size(boxes)[:, None] + size(gt)[None, :] - inter
    return np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def crosses_boundary(boxes):
    """Caffe-SSD's IsCrossBoundaryBBox for boxes (P, 4): (P,) bool, True
    where a coordinate lies outside [0, 1]."""
    return ((boxes < 0) | (boxes > 1)).any(axis=1)


def match_boxes(overlaps, match_type, threshold, ignored=None):
    """Caffe-SSD's MatchBBox for one image. overlaps (P, G) float64.

    Bipartite step: repeatedly the largest overlap (> 1e-6) between a prior
    not yet matched and a gt box not yet taken is matched; ties go to the
    lowest prior, then the lowest gt (Caffe-SSD's scan order, which
    ``argmax`` over the row-major matrix reproduces). It loops over at most
    G steps, each vectorized over the (P, G) matrix: the loop is over gt
    boxes, never over priors. PER_PREDICTION then gives every prior still
    unmatched its best gt when that overlap is >= ``threshold``.

    ``ignored`` (P,) bool (ignore_cross_boundary_bbox): those priors take
    no part and are marked -2 (neither positive nor a mining candidate).

    Returns ``(match (P,) int64, best (P,) float64)``: the gt index, -1 or
    -2, and the overlap used by mining (the matched overlap for matched
    priors, else the prior's largest overlap with any gt, 0 when none is
    > 1e-6).
    """
    num_priors, num_gt = overlaps.shape
    match = np.full(num_priors, -1, dtype=np.int64)
    stored = overlaps > 1e-6                      # Caffe-SSD keeps only these
    if ignored is not None and num_gt:
        match[ignored] = -2
        stored = stored & ~ignored[:, None]
    best = np.where(stored, overlaps, 0.0).max(axis=1) if num_gt else np.zeros(num_priors)
    if num_gt == 0:
        return match, best
    free = np.where(stored, overlaps, -1.0)
    for _ in range(num_gt):                       # one gt box per step
        flat = int(np.argmax(free))
        prior, gt = divmod(flat, num_gt)
        if free[prior, gt] < 0:
            break
        match[prior] = gt
        best[prior] = overlaps[prior, gt]
        free[prior, :] = -1.0
        free[:, gt] = -1.0
    if match_type == PER_PREDICTION:
        candidates = np.where(stored & (overlaps >= threshold), overlaps, -1.0)
        gt = np.argmax(candidates, axis=1)
        value = candidates[np.arange(num_priors), gt]
        take = (match == -1) & (value >= 0)
        match[take] = gt[take]
        best[take] = value[take]
    return match, best


def encode_boxes(priors, variances, gt, code_type):
    """Caffe-SSD's EncodeBBox (variance not encoded in the target): the
    offsets (M, 4) of gt boxes (M, 4) from their priors (M, 4), divided by
    the variances (M, 4)."""
    pw, ph = priors[:, 2] - priors[:, 0], priors[:, 3] - priors[:, 1]
    if code_type == CORNER:
        return (gt - priors) / variances
    if code_type == CORNER_SIZE:
        return (gt - priors) / np.stack([pw, ph, pw, ph], axis=1) / variances
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    dx = ((gt[:, 0] + gt[:, 2]) - (priors[:, 0] + priors[:, 2])) / 2 / pw
    dy = ((gt[:, 1] + gt[:, 3]) - (priors[:, 1] + priors[:, 3])) / 2 / ph
    return np.stack([dx, dy, np.log(gw / pw), np.log(gh / ph)], axis=1) / variances


def prior_conf_losses(conf, labels, logistic):
    """Per-prior confidence loss (N, P) of scores conf (N, P, C) against
    labels (N, P) (the matched gt's class, else the background), as
    Caffe-SSD's ComputeConfLoss: softmax cross-entropy with the probability
    floored at FLT_MIN, or the summed logistic loss over the C one-vs-all
    targets. Any array module."""
    xp = array_module(conf)
    if logistic:
        target = labels[..., None] == xp.arange(conf.shape[-1])
        element = xp.maximum(conf, 0) - conf * target + xp.log1p(xp.exp(-xp.abs(conf)))
        return element.sum(axis=-1)
    shifted = conf - conf.max(axis=-1, keepdims=True)
    log_sum = xp.log(xp.exp(shifted).sum(axis=-1))
    picked = xp.take_along_axis(shifted, labels[..., None], axis=-1)[..., 0]
    floor = np.log(np.finfo(np.float32).tiny)
    return -xp.maximum(picked - log_sum, floor)


def mine_negatives(losses, match, best, has_gt, neg_pos_ratio, neg_overlap):
    """Caffe-SSD's MineHardExamples with MAX_NEGATIVE, all images at once.

    losses (N, P) confidence losses; match (N, P) gt index or -1; best
    (N, P) overlaps from ``match_boxes``; has_gt (N,) bool. A prior is
    eligible when unmatched with overlap < ``neg_overlap``; each image with
    gt boxes keeps its ``min(int(positives * neg_pos_ratio), eligible)``
    eligible priors of largest loss (ties: lowest prior first, a stable
    order where Caffe-SSD's std::sort leaves ties unspecified). Images
    without gt boxes get no negatives (as in Caffe-SSD). Returns a (N, P)
    bool mask of the negatives; one argsort per image row, vectorized.
    """
    eligible = (match == -1) & (best < neg_overlap) & has_gt[:, None]
    positives = (match > -1).sum(axis=1)
    count = np.minimum(np.floor(positives * np.float32(neg_pos_ratio)).astype(np.int64),
                       eligible.sum(axis=1))
    key = np.where(eligible, -losses, np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :], axis=1)
    return eligible & (rank < count[:, None])
