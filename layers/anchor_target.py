"""AnchorTarget: the RPN's training labels and box targets for every anchor."""
import numpy as np

from layers.base import NoGradientLayer, register, register_python
from layers.boxes import DEFAULT_RATIOS, DEFAULT_SCALES, generate_anchors, shifted_anchors
from layers.detection_targets import AnchorTargetCreator
from layers.python_compat import field_or_default, layer_settings
from netdef.device import array_module, to_numpy


def check_single_image_inputs(layer, bottoms, gt_index, im_info_index):
    """Shape checks shared by the RPN layers: gt_boxes ``(G, 5)`` and
    im_info ``(1, 3)`` (one image per batch, as in the reference)."""
    if gt_index is not None:
        gt = bottoms[gt_index].shape
        if len(gt) != 2 or gt[1] != 5:
            raise layer.shape_error(gt_index, "gt_boxes (G, 5) rows [x1, y1, x2, y2, class]", gt)
    info = bottoms[im_info_index].shape
    if info != (1, 3):
        raise layer.shape_error(im_info_index, "im_info (1, 3) [height, width, scale] "
                                "(one image per batch)", info)


def setup_anchors(layer, p):
    """Read the anchor settings shared by the RPN layers (AnchorTarget,
    Proposal) from their parameter ``p``: ``feat_stride`` (checked positive)
    and the ``base_size`` x ``ratios`` x ``scales`` base anchors. The shifted
    anchors are built in reshape (``update_anchors``)."""
    layer.feat_stride = int(p.feat_stride)
    layer.base_anchors = generate_anchors(
        p.base_size, field_or_default(p, "ratios", DEFAULT_RATIOS),
        field_or_default(p, "scales", DEFAULT_SCALES))
    layer.num_anchors = layer.base_anchors.shape[0]
    layer.anchors, layer.anchor_key = None, None
    if layer.feat_stride <= 0:
        raise layer.definition_error(f"feat_stride must be positive, found {layer.feat_stride}")


def update_anchors(layer, like, height, width):
    """Set ``layer.anchors``, the ``(height * width * A, 4)`` float64 shifted
    anchors on the device of ``like``; rebuilt only when the map size or the
    device changes (called from reshape)."""
    xp = array_module(like)
    key = (height, width, xp.__name__)
    if layer.anchor_key != key:
        layer.anchors = shifted_anchors(layer.base_anchors, layer.feat_stride, height, width, xp)
        layer.anchor_key = key


#: Salts of the sampling draws (Layer.keyed_rng) of AnchorTarget and ProposalTarget.
ANCHOR_SAMPLING_SALT = 0x5A17
PROPOSAL_SAMPLING_SALT = 0x5A18


def rpn_sampling_rng(layer, seed, salt):
    """The sampling generator of the current pass: keyed by the pass
    (``layer.draw_key``: iteration, image position) and seeded by the
    parameter's ``seed`` when it is >= 0, else by the net's seed for this
    layer; the same pass draws the same in any process."""
    return layer.keyed_rng(salt, seed=int(seed) if seed >= 0 else None)


@register_python("rpn.anchor_target_layer", "AnchorTargetLayer")
@register("AnchorTarget")
class AnchorTargetLayer(NoGradientLayer):
    """Assign the anchors of one image to its ground-truth boxes.

    bottoms: rpn_cls_score ``(1, 2A, H, W)`` (only H and W are read),
        gt_boxes ``(G, 5)`` ``[x1, y1, x2, y2, class]``, im_info ``(1, 3)``
        ``[height, width, scale]``, and optionally data (ignored, as in the
        reference prototxts).
    tops (py-faster-rcnn's layout; anchor ``a`` at cell ``(y, x)``):
        rpn_labels ``(1, 1, A*H, W)``: element ``[0, 0, a*H + y, x]`` is 1
            (foreground), 0 (background) or -1 (ignored);
        rpn_bbox_targets ``(1, 4A, H, W)``: channel ``4a + k`` holds delta k
            of ``bbox_transform(anchor, its best gt box)``;
        rpn_bbox_inside_weights ``(1, 4A, H, W)``: 1 for foreground anchors;
        rpn_bbox_outside_weights ``(1, 4A, H, W)``: ``1 / (labelled anchors)``
            for every labelled anchor when ``positive_weight < 0``, else
            ``positive_weight / #fg`` and ``(1 - positive_weight) / #bg``.

    Rules (py-faster-rcnn's rpn/anchor_target_layer.py): only anchors inside
    the image by ``allowed_border`` pixels are labelled (others are -1 with
    zero targets); background where the best IoU < ``negative_overlap``;
    foreground where it is >= ``positive_overlap`` and, for each gt box,
    every anchor whose IoU equals that box's best IoU (all ties, as the
    reference); ``clobber_positives`` applies the background rule last.
    Then foreground is randomly cut down to ``fg_fraction * batch_size`` and
    background to ``batch_size - #fg`` (the cut anchors become -1). The rules
    are ``layers.detection_targets.AnchorTargetCreator``'s, drawing from the
    generator of the pass (``rpn_sampling_rng``: keyed by the layer's seed,
    the iteration and the image position, so a data-parallel rank draws what
    a single process draws for that pass).
    One deliberate departure: a gt box whose best IoU is 0 (it overlaps no
    inside anchor) marks no anchor, where the reference would make every
    anchor that misses it foreground. With no gt boxes at all, every inside
    anchor is background (subsampled) and all targets are 0.

    IoU, targets and weights are computed with the array module of the
    inputs (the per-anchor arrays stay on the GPU); the random choice runs on
    the host. IoU in float64, as the reference. No gradient flows back.
    """

    min_bottoms = 3
    max_bottoms = 4
    exact_tops = 4

    def layer_setup(self, bottoms, tops):
        p = layer_settings(self, "anchor_target_param")
        setup_anchors(self, p)
        try:
            self.creator = AnchorTargetCreator(
                batch_size=p.batch_size, fg_fraction=p.fg_fraction,
                positive_overlap=p.positive_overlap, negative_overlap=p.negative_overlap,
                clobber_positives=p.clobber_positives, positive_weight=p.positive_weight,
                allowed_border=p.allowed_border)
        except ValueError as exc:
            raise self.definition_error(str(exc)) from None
        self.sampling_seed = int(p.seed)

    def reshape(self, bottoms, tops):
        score = bottoms[0].shape
        if len(score) != 4 or score[0] != 1:
            raise self.shape_error(0, "rpn_cls_score (1, 2A, H, W) (one image per batch)", score)
        check_single_image_inputs(self, bottoms, 1, 2)
        height, width = score[2], score[3]
        update_anchors(self, bottoms[0].data, height, width)
        a = self.num_anchors
        if score[1] != 2 * a:
            # The anchors configured here must be the ones the RPN scores.
            raise self.shape_error(0, f"rpn_cls_score (1, {2 * a}, H, W): 2 x {a} anchors "
                                   "(ratios x scales of this layer)", score)
        tops[0].reshape((1, 1, a * height, width))
        for top in tops[1:]:
            top.reshape((1, 4 * a, height, width))

    def forward_cpu(self, bottoms, tops):
        self._forward(bottoms, tops)

    forward_gpu = forward_cpu

    # -- the computation, one code for both devices -----------------------------
    def _forward(self, bottoms, tops):
        height, width = bottoms[0].shape[2:]
        im_size = to_numpy(bottoms[2].data)[0, :2]
        gt = bottoms[1].data[:, :4].astype(np.float64)
        labels, targets, inside_w, outside_w = self.creator(
            self.anchors, gt, im_size,
            rpn_sampling_rng(self, self.sampling_seed, ANCHOR_SAMPLING_SALT))
        a = self.num_anchors
        # (H*W*A,) -> (1, A, H, W) -> (1, 1, A*H, W); (H*W*A, 4) -> (1, 4A, H, W)
        tops[0].data[...] = labels.reshape(height, width, a).transpose(2, 0, 1) \
            .reshape(1, 1, a * height, width)
        for top, values in zip(tops[1:], (targets, inside_w, outside_w)):
            top.data[...] = values.reshape(height, width, 4 * a).transpose(2, 0, 1)[None]
