"""Proposal: turn the RPN's scores and box deltas into RoIs."""

from layers.anchor_target import check_single_image_inputs, setup_anchors, update_anchors
from layers.base import NoGradientLayer, register, register_python
from layers.boxes import bbox_transform_inv, clip_boxes, filter_small_boxes, stable_argsort
from layers.nms import nms_sorted
from layers.python_compat import layer_settings
from netdef.device import array_module, to_numpy


def top_scores(scores, candidates, count):
    """The ``count`` candidates of highest score (all for count <= 0),
    highest first, ties in index order: the first ``count`` of a stable
    sort, without sorting everything."""
    xp = array_module(scores)
    neg = -scores[candidates]
    if 0 < count < neg.shape[0]:
        cut = xp.partition(neg, count - 1)[count - 1]    # the count-th best score
        better = xp.flatnonzero(neg < cut)
        tied = xp.flatnonzero(neg == cut)[:count - better.shape[0]]
        chosen = xp.sort(xp.concatenate([better, tied]))
        candidates, neg = candidates[chosen], neg[chosen]
    return candidates[stable_argsort(neg)]


@register_python("rpn.proposal_layer", "ProposalLayer")
@register("Proposal")
class ProposalLayer(NoGradientLayer):
    """Proposals of one image from the RPN outputs.

    bottoms: rpn_cls_prob_reshape ``(1, 2A, H, W)`` (channels ``A..2A-1``
        are the foreground probabilities), rpn_bbox_pred ``(1, 4A, H, W)``
        (channel ``4a + k``: delta k of anchor a), im_info ``(1, 3)``
        ``[height, width, scale]``.
    tops: rois ``(R, 5)`` ``[0, x1, y1, x2, y2]``, highest score first, and
        optionally scores ``(R, 1)``.

    Steps (py-faster-rcnn's rpn/proposal_layer.py): decode every anchor's
    deltas (``bbox_transform_inv``), clip to the image, drop boxes with a
    side below ``min_size * scale``, sort by score (ties: lower anchor index
    first; anchor index ``(y * W + x) * A + a``), keep the first
    ``pre_nms_top_n``, greedy NMS at ``nms_thresh`` (layers.nms), keep the
    first ``post_nms_top_n`` (a count <= 0 means no limit). The counts are the
    phase's: ``train_*`` in TRAIN (12000 / 2000 by default), ``test_*`` in
    TEST (6000 / 300); R-FCN uses 6000 / 300 in both.

    Shapes: ``reshape`` sizes the tops for the most RoIs the layer can output
    (``min(post_nms_top_n, pre_nms_top_n, H*W*A)`` over the positive counts),
    so a net's shape report shows that maximum; ``forward`` resizes them to
    the number actually kept, which varies from image to image.
    The decoding runs in the deltas' dtype with the array module of the
    inputs; on the GPU the NMS runs the bitmask kernels (layers/cuda/nms.cu).
    No gradient flows back.
    """

    exact_bottoms = 3
    min_tops = 1
    max_tops = 2

    def layer_setup(self, bottoms, tops):
        p = layer_settings(self, "proposal_param")
        setup_anchors(self, p)
        if self.phase == "TEST":
            self.pre_nms_top_n, self.post_nms_top_n = int(p.test_pre_nms_top_n), int(p.test_post_nms_top_n)
        else:
            self.pre_nms_top_n, self.post_nms_top_n = int(p.train_pre_nms_top_n), int(p.train_post_nms_top_n)
        self.nms_thresh = float(p.nms_thresh)
        self.min_size = float(p.min_size)
        if p.output_score and len(tops) < 2:
            raise self.definition_error("output_score is set but the layer has one top; "
                                        "add a second top for the scores")

    def reshape(self, bottoms, tops):
        a = self.num_anchors
        prob, deltas = bottoms[0].shape, bottoms[1].shape
        if len(prob) != 4 or prob[0] != 1 or prob[1] != 2 * a:
            raise self.shape_error(0, f"rpn_cls_prob_reshape (1, {2 * a}, H, W): 2 x {a} anchors, "
                                   "one image per batch", prob)
        if deltas != (1, 4 * a) + tuple(prob[2:]):
            raise self.shape_error(1, f"rpn_bbox_pred (1, {4 * a}, {prob[2]}, {prob[3]}) "
                                   "matching the scores' map", deltas)
        check_single_image_inputs(self, bottoms, None, 2)
        update_anchors(self, bottoms[0].data, prob[2], prob[3])
        most = prob[2] * prob[3] * a
        for limit in (self.pre_nms_top_n, self.post_nms_top_n):
            if limit > 0:
                most = min(most, limit)
        self._resize(tops, most)

    @staticmethod
    def _resize(tops, count):
        tops[0].reshape((count, 5))
        if len(tops) > 1:
            tops[1].reshape((count, 1))

    def forward_cpu(self, bottoms, tops):
        self._forward(bottoms, tops, use_kernel=False)

    def forward_gpu(self, bottoms, tops):
        # The same code; only the NMS switches to the CUDA kernels (which
        # also run on NumPy arrays through the host shim in the tests).
        self._forward(bottoms, tops, use_kernel=True)

    def _forward(self, bottoms, tops, use_kernel):
        a = self.num_anchors
        xp = array_module(bottoms[0].data)
        im_height, im_width, im_scale = (float(v) for v in to_numpy(bottoms[2].data)[0])
        # (A, H, W) -> (H*W*A,) and (4A, H, W) -> (H*W*A, 4): anchor order
        scores = bottoms[0].data[0, a:].transpose(1, 2, 0).reshape(-1)
        deltas = bottoms[1].data[0].transpose(1, 2, 0).reshape(-1, 4)
        boxes = clip_boxes(bbox_transform_inv(self.anchors, deltas), im_height, im_width)
        candidates = xp.flatnonzero(filter_small_boxes(boxes, self.min_size * im_scale))
        order = top_scores(scores, candidates, self.pre_nms_top_n)
        boxes, scores = boxes[order], scores[order]
        kept = nms_sorted(boxes, self.nms_thresh, self.post_nms_top_n, use_kernel=use_kernel)
        self._resize(tops, int(kept.shape[0]))
        tops[0].data[:, 0] = 0
        tops[0].data[:, 1:] = boxes[kept]
        if len(tops) > 1:
            tops[1].data[:, 0] = scores[kept]
