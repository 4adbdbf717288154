"""ProposalTarget: sample RoIs for the detection head and give them labels
and box regression targets."""
from layers.anchor_target import PROPOSAL_SAMPLING_SALT, rpn_sampling_rng
from layers.base import NoGradientLayer, register, register_python
from layers.detection_targets import DEFAULT_MEANS, DEFAULT_STDS, ProposalTargetCreator
from layers.python_compat import field_or_default, layer_settings
from netdef.device import array_module
from netdef.errors import DataError


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
    RoI (OHEM), in a random order like the reference. The sampling and
    targets are ``layers.detection_targets.ProposalTargetCreator``'s, drawn
    from the generator of the pass (keyed by seed, iteration and image
    position: ``layers.anchor_target.rpn_sampling_rng``).
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
        # py-R-FCN's class-agnostic prototxts say 'num_classes': 2 and set
        # the mode in their config file, out of our sight; with 2 classes
        # both modes give the same targets for labels 0 and 1, and only the
        # agnostic one accepts the larger labels those nets are fed.
        class_agnostic = bool(p.class_agnostic) or (
            self.param.type == "Python" and self.num_classes == 2)
        try:
            self.creator = ProposalTargetCreator(
                self.num_classes, batch_size=p.batch_size, fg_fraction=p.fg_fraction,
                fg_thresh=p.fg_thresh, bg_thresh_hi=p.bg_thresh_hi, bg_thresh_lo=p.bg_thresh_lo,
                normalize=p.bbox_normalize_targets,
                means=field_or_default(p, "bbox_normalize_means", DEFAULT_MEANS),
                stds=field_or_default(p, "bbox_normalize_stds", DEFAULT_STDS),
                class_agnostic=class_agnostic)
        except ValueError as exc:
            raise self.definition_error(str(exc)) from None
        self.sampling_seed = int(p.seed)

    def reshape(self, bottoms, tops):
        rois, gt = bottoms[0].shape, bottoms[1].shape
        if len(rois) != 2 or rois[1] != 5:
            raise self.shape_error(0, "rpn_rois (R, 5) rows [batch_index, x1, y1, x2, y2]", rois)
        if len(gt) != 2 or gt[1] != 5:
            raise self.shape_error(1, "gt_boxes (G, 5) rows [x1, y1, x2, y2, class]", gt)
        self._resize(tops, self.creator.max_count(rois[0], gt[0]))

    def _resize(self, tops, count):
        tops[0].reshape((count, 5))
        tops[1].reshape((count, 1, 1, 1))
        for top in tops[2:]:
            top.reshape((count, self.creator.width))

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
        rng = rpn_sampling_rng(self, self.sampling_seed, PROPOSAL_SAMPLING_SALT)
        outputs = self.creator(rois, gt, rng,
                               source=f"{self.where}: bottom '{self.bottom_name(1)}'")
        self._resize(tops, outputs[0].shape[0])
        tops[0].data[...] = outputs[0]
        tops[1].data[...] = outputs[1].reshape(-1, 1, 1, 1)
        for top, values in zip(tops[2:], outputs[2:]):
            top.data[...] = values
