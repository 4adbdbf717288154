"""ProposalTarget: sample RoIs for the detection head and give them labels
and box regression targets."""
import numpy as np

from layers.anchor_target import rpn_sampling_rng
from layers.base import NoGradientLayer, register, register_python
from layers.boxes import bbox_overlaps, bbox_transform
from layers.python_compat import field_or_default, layer_settings
from netdef.device import array_module, to_numpy
from netdef.errors import DataError

DEFAULT_MEANS = (0.0, 0.0, 0.0, 0.0)
DEFAULT_STDS = (0.1, 0.1, 0.2, 0.2)


@register_python("rpn.proposal_target_layer", "ProposalTargetLayer")
@register("ProposalTarget")
class ProposalTargetLayer(NoGradientLayer):
    """Sample foreground and background RoIs of one image.

    bottoms: rpn_rois ``(R, 5)`` ``[batch_index, x1, y1, x2, y2]`` (one
        image: the Proposal layer's output), gt_boxes ``(G, 5)``
        ``[x1, y1, x2, y2, class]``.
    tops (M sampled RoIs, foreground first):
        rois ``(M, 5)``; labels ``(M, 1, 1, 1)`` (the matched gt class for
        foreground, 0 for background: py-R-FCN's layout, where py-faster-rcnn
        has ``(M,)``; the loss and accuracy layers read labels by count, and
        SoftmaxWithLossOHEM's per-RoI loss takes this shape, which must equal
        SmoothL1LossOHEM's ``(M, 1, 1, 1)`` in the OHEM nets' Eltwise);
        bbox_targets ``(M, C)``: for a foreground RoI, the 4 deltas
            ``(bbox_transform(roi, gt) - mean) / std`` at columns
            ``4 * slot .. 4 * slot + 3`` and 0 elsewhere, where ``slot`` is
            the class (``C = 4 * num_classes``) or, with ``class_agnostic``,
            1 (``C = 8``: background box then foreground box, as py-R-FCN);
        bbox_inside_weights ``(M, C)``: 1 at those 4 columns;
        bbox_outside_weights ``(M, C)``: ``inside > 0``.

    Rules (py-faster-rcnn's rpn/proposal_target_layer.py, py-R-FCN's
    variant): the gt boxes are appended to the RoIs (batch index 0);
    foreground has best IoU >= ``fg_thresh``, background best IoU in
    ``[bg_thresh_lo, bg_thresh_hi)`` (RoIs in neither are dropped).
    Foreground is sampled without replacement up to
    ``round(fg_fraction * batch_size)``, background fills the rest of
    ``batch_size``; ``batch_size: -1`` keeps every foreground and background
    RoI (OHEM), in a random order like the reference. Sampling uses the
    layer's own seeded generator ``self.sampler`` (deterministic).
    ``bbox_normalize_targets`` uses the given (precomputed) means and stds,
    the reference's BBOX_NORMALIZE_TARGETS_PRECOMPUTED.
    As a ``type: "Python"`` layer, ``'num_classes': 2`` means class-agnostic
    (py-R-FCN's nets, whose mode is set in a config file the prototxt does
    not carry); for labels 0 and 1 both modes agree.

    Shapes: ``reshape`` sizes the tops for the most RoIs the layer can
    output (``min(batch_size, R + G)``, or ``R + G`` for -1), so a net's shape
    report shows the maximum; ``forward`` resizes them to the actual count.
    IoU in float64 with the array module of the inputs; the random choice on
    the host. A foreground gt class outside ``[0, num_classes)`` (class-aware
    regression) raises ``DataError``. No gradient flows back.
    """

    random_state_attributes = ("sampler",)

    exact_bottoms = 2
    exact_tops = 5

    def layer_setup(self, bottoms, tops):
        p = layer_settings(self, "proposal_target_param")
        if self.param.type == "Python" or p.HasField("num_classes"):
            self.num_classes = int(p.num_classes)
        else:
            self.num_classes = 0
        if self.num_classes < 2:
            raise self.definition_error(
                "needs num_classes >= 2 (background included): set "
                "proposal_target_param.num_classes, or 'num_classes' in python_param.param_str; "
                f"found {self.num_classes}")
        self.batch_size = int(p.batch_size)
        self.fg_fraction = float(p.fg_fraction)
        self.fg_thresh = float(p.fg_thresh)
        self.bg_thresh_hi = float(p.bg_thresh_hi)
        self.bg_thresh_lo = float(p.bg_thresh_lo)
        # py-R-FCN's class-agnostic prototxts say 'num_classes': 2 and set
        # the mode in their config file, out of our sight; with 2 classes
        # both modes give the same targets for labels 0 and 1, and only the
        # agnostic one accepts the larger labels those nets are fed.
        self.class_agnostic = bool(p.class_agnostic) or (
            self.param.type == "Python" and self.num_classes == 2)
        self.normalize = bool(p.bbox_normalize_targets)
        self.means = np.asarray(field_or_default(p, "bbox_normalize_means", DEFAULT_MEANS), np.float64)
        self.stds = np.asarray(field_or_default(p, "bbox_normalize_stds", DEFAULT_STDS), np.float64)
        if self.batch_size == 0 or self.batch_size < -1:
            raise self.definition_error(
                f"batch_size must be positive or -1 (keep all), found {self.batch_size}")
        if not 0 <= self.fg_fraction <= 1:
            raise self.definition_error(f"fg_fraction must lie in [0, 1], found {self.fg_fraction}")
        if self.means.shape != (4,) or self.stds.shape != (4,) or np.any(self.stds <= 0):
            raise self.definition_error(
                "bbox_normalize_means and bbox_normalize_stds need 4 values each, the stds "
                f"positive; found means {self.means.tolist()}, stds {self.stds.tolist()}")
        self.width = 8 if self.class_agnostic else 4 * self.num_classes
        self.sampler = rpn_sampling_rng(self, p.seed, salt=0)

    def reshape(self, bottoms, tops):
        rois, gt = bottoms[0].shape, bottoms[1].shape
        if len(rois) != 2 or rois[1] != 5:
            raise self.shape_error(0, "rpn_rois (R, 5) rows [batch_index, x1, y1, x2, y2]", rois)
        if len(gt) != 2 or gt[1] != 5:
            raise self.shape_error(1, "gt_boxes (G, 5) rows [x1, y1, x2, y2, class]", gt)
        candidates = rois[0] + gt[0]
        self._resize(tops, candidates if self.batch_size < 0 else min(self.batch_size, candidates))

    def _resize(self, tops, count):
        tops[0].reshape((count, 5))
        tops[1].reshape((count, 1, 1, 1))
        for top in tops[2:]:
            top.reshape((count, self.width))

    def forward_cpu(self, bottoms, tops):
        self._forward(bottoms, tops)

    forward_gpu = forward_cpu

    # -- the computation, one code for both devices -----------------------------
    def _forward(self, bottoms, tops):
        rois, gt = bottoms[0].data, bottoms[1].data
        xp = array_module(rois)
        # One image per batch, as the reference (its gt boxes are image 0's).
        if rois.shape[0] and bool((rois[:, 0] != 0).any()):
            r = int(xp.argmax(rois[:, 0] != 0))
            raise DataError(
                f"{self.where}: bottom '{self.bottom_name(0)}' RoI {r} has batch index "
                f"{float(rois[r, 0]):g}: expected 0 (one image per batch, as py-faster-rcnn "
                "and py-R-FCN)")
        num_gt = gt.shape[0]
        gt_rois = xp.concatenate([xp.zeros((num_gt, 1), dtype=rois.dtype),
                                  gt[:, :4].astype(rois.dtype)], axis=1)
        all_rois = xp.concatenate([rois, gt_rois], axis=0)      # (R + G, 5)
        gt_boxes = gt[:, :4].astype(np.float64)
        if num_gt:
            overlaps = bbox_overlaps(all_rois[:, 1:5].astype(np.float64), gt_boxes)
            assignment = overlaps.argmax(axis=1)
            best = overlaps.max(axis=1)
        else:
            assignment = xp.zeros(all_rois.shape[0], dtype=np.int64)
            best = xp.zeros(all_rois.shape[0], dtype=np.float64)

        keep, num_fg = self._sample(to_numpy(best))
        gt_classes = to_numpy(gt[:, 4]) if num_gt else np.zeros(1)
        labels = gt_classes[to_numpy(assignment)[keep]] if keep.size else np.zeros(0)
        labels[num_fg:] = 0
        self._check_classes(labels[:num_fg])

        keep_x = xp.asarray(keep)
        count = keep.size
        self._resize(tops, count)
        tops[0].data[...] = all_rois[keep_x]
        tops[1].data[...] = xp.asarray(labels).reshape(-1, 1, 1, 1)
        for top in tops[2:]:
            top.data.fill(0)
        regress = np.flatnonzero(labels[:num_fg] > 0)           # foreground rows with a class
        if regress.size == 0:
            return
        rows_x = xp.asarray(regress)
        sources = all_rois[keep_x[rows_x], 1:5].astype(np.float64)
        targets = bbox_transform(sources, gt_boxes[assignment[keep_x[rows_x]]])
        if self.normalize:
            targets = (targets - xp.asarray(self.means)) / xp.asarray(self.stds)
        slots = np.ones(regress.size, np.int64) if self.class_agnostic \
            else labels[regress].astype(np.int64)
        cols = xp.asarray(4 * slots[:, None] + np.arange(4)[None, :])
        tops[2].data[rows_x[:, None], cols] = targets.astype(tops[2].data.dtype)
        tops[3].data[rows_x[:, None], cols] = 1
        tops[4].data[rows_x[:, None], cols] = 1

    def _sample(self, best):
        """Host-side sampling: (indices of the kept RoIs, fg first; #fg)."""
        fg = np.flatnonzero(best >= self.fg_thresh)
        bg = np.flatnonzero((best < self.bg_thresh_hi) & (best >= self.bg_thresh_lo))
        if self.batch_size < 0:
            num_fg, num_bg = fg.size, bg.size
        else:
            num_fg = min(int(np.round(self.fg_fraction * self.batch_size)), fg.size)
            num_bg = min(self.batch_size - num_fg, bg.size)
        # choice without replacement even when everything is kept: the order
        # is random, as in the reference
        fg = self.sampler.choice(fg, size=num_fg, replace=False) if fg.size else fg
        bg = self.sampler.choice(bg, size=num_bg, replace=False) if bg.size else bg
        return np.concatenate([fg, bg]).astype(np.int64), num_fg

    def _check_classes(self, fg_labels):
        if self.class_agnostic or fg_labels.size == 0:
            return
        bad = (fg_labels < 0) | (fg_labels >= self.num_classes) | (fg_labels != np.round(fg_labels))
        if bad.any():
            raise DataError(
                f"{self.where}: bottom '{self.bottom_name(1)}' has class "
                f"{fg_labels[bad][0]:g}, expected an integer in [0, {self.num_classes}) "
                f"(num_classes {self.num_classes})")
