"""Caffe-SSD's ``MultiBoxLoss``: SSD's training loss.

bottoms: ``mbox_loc`` (N, P * 4) box offsets, ``mbox_conf`` (N, P * C)
class scores (logits), ``mbox_priorbox`` (1, 2, P * 4) from PriorBox
(boxes, then variances), ``label`` (1, 1, G, 8) with one row per
ground-truth box ``[image, label, instance, xmin, ymin, xmax, ymax,
difficult]`` in normalized coordinates (rows with image -1 are skipped:
AnnotatedData's filler row). top: the loss, a scalar.

Per image (Caffe-SSD's FindMatches / MineHardExamples, layers/multibox_match.py):
1. gt boxes of the image (difficult ones dropped unless ``use_difficult_gt``);
   a gt labelled ``background_label_id`` is an error; an empty or inverted
   gt box overlaps nothing and is never matched (as in Caffe-SSD);
2. matching of the priors (``use_prior_for_matching``, default) or of the
   decoded predictions against the gt boxes: bipartite, then (match_type
   PER_PREDICTION, the default) every other prior with IoU >=
   ``overlap_threshold`` to its best gt; with ``ignore_cross_boundary_bbox``
   the priors (or decoded boxes) reaching outside [0, 1] are left out of
   matching and mining (background when there is no mining);
3. mining (``mining_type`` MAX_NEGATIVE, the default): the unmatched priors
   with largest IoU < ``neg_overlap`` and the largest confidence loss, at most
   ``neg_pos_ratio`` x positives; NONE: every prior counts in the
   confidence loss (background where unmatched), images without gt included;
4. loss = ``loc_weight`` x loc_loss / n + conf_loss / n with loc_loss the
   SMOOTH_L1 (sigma 1) or L2 (0.5 x squared) sum over the matched priors'
   offsets against the encoded gt (``code_type``: CORNER default, SSD uses
   CENTER_SIZE; divided by the prior variances), conf_loss the SOFTMAX
   cross-entropy (default) or LOGISTIC (one-vs-all sigmoid) sum over the
   selected priors, and n = ``loss_param.normalization``: VALID (default:
   the number of matches), FULL (N x P), BATCH_SIZE (N), PRE_FIXED, NONE;
   at least 1. When the layer's ``propagate_down`` list is given, a term
   whose bottom has false is left out (Caffe-SSD's rule).

Backward: to mbox_loc and mbox_conf only; the matches and selections of
the forward pass are held fixed. Asking for a gradient of the priors or the
labels is an error.

Devices: matching, encoding and mining run on the host in float64 (as in
Caffe-SSD, which copies the predictions to the CPU for them); the mining's
per-prior confidence losses, the two losses and their gradients are array
code on the predictions' device (NumPy or CuPy), one algorithm for both.

Not supported (a named error): share_location false, HARD_EXAMPLE mining,
NMS in mining (multibox_loss_param.nms_param), encode_variance_in_target,
map_object_to_agnostic, bp_inside, LOGISTIC with
a background_label_id other than 0. Departures: LOGISTIC without mining
uses one-hot targets for every prior (Caffe-SSD's pointer step there is per
prior, not per score); tied confidence losses in mining are taken lowest
prior first (Caffe-SSD's std::sort leaves ties unspecified).
"""
import numpy as np

from layers.base import Layer, register
from layers.detection_output import decode_boxes
from layers.multibox_match import (crosses_boundary, encode_boxes, iou_matrix, label_rows,
                                   match_boxes, mine_negatives, prior_conf_losses,
                                   refuse_bad_rows)
from layers.softmax import loss_normalizer, read_normalization
from netdef.device import array_module, to_numpy

SMOOTH_L1, L2 = 1, 0
SOFTMAX, LOGISTIC = 0, 1
NO_MINING, MAX_NEGATIVE, HARD_EXAMPLE = 0, 1, 2


@register("MultiBoxLoss")
class MultiBoxLossLayer(Layer):
    """See the module docstring. bottoms: loc (N, P * 4), conf (N, P * C),
    priors (1, 2, P * 4), labels (1, 1, G, 8); top: the loss ()."""

    exact_bottoms = 4
    exact_tops = 1
    is_loss = True

    def layer_setup(self, bottoms, tops):
        p = self.param.multibox_loss_param
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise self.definition_error(
                "multibox_loss_param.num_classes is required (the classes of mbox_conf, "
                "background included)")
        self.num_classes = int(p.num_classes)
        self.background = int(p.background_label_id)
        if self.background >= self.num_classes:
            raise self.definition_error(
                f"multibox_loss_param.background_label_id {self.background} is not a class "
                f"of num_classes {self.num_classes}")
        self._refuse_unsupported(p)
        self.loc_type, self.conf_type = int(p.loc_loss_type), int(p.conf_loss_type)
        self.loc_weight = float(p.loc_weight)
        self.match_type, self.threshold = int(p.match_type), float(p.overlap_threshold)
        self.use_prior = bool(p.use_prior_for_matching)
        self.use_difficult = bool(p.use_difficult_gt)
        self.mining = int(p.mining_type)
        self.neg_pos_ratio, self.neg_overlap = float(p.neg_pos_ratio), float(p.neg_overlap)
        self.code_type = int(p.code_type)
        self.ignore_cross = bool(p.ignore_cross_boundary_bbox)
        self.normalization = read_normalization(self.param.loss_param)
        self.pre_fixed = float(self.param.loss_param.pre_fixed_normalizer)
        down = list(self.param.propagate_down)
        self.terms = (not down or bool(down[0]), len(down) < 2 or bool(down[1]))
        self.selection = None  # what forward chose, read by backward

    def _refuse_unsupported(self, p):
        if p.HasField("do_neg_mining") and p.do_neg_mining != (p.mining_type != NO_MINING):
            raise self.definition_error(
                f"multibox_loss_param.do_neg_mining {str(p.do_neg_mining).lower()} disagrees "
                f"with mining_type {type(p).MiningType.Name(p.mining_type)} (do_neg_mining is "
                "deprecated; set mining_type alone)")
        unsupported = [
            (not p.share_location, "share_location false (one box per class)"),
            (p.mining_type == HARD_EXAMPLE, "mining_type HARD_EXAMPLE"),
            (p.HasField("nms_param") and p.nms_param.nms_threshold > 0, "NMS in mining "
             "(nms_param)"),
            (p.encode_variance_in_target, "encode_variance_in_target true"),
            (p.map_object_to_agnostic, "map_object_to_agnostic true"),
            (p.bp_inside, "bp_inside true"),
            (p.conf_loss_type == LOGISTIC and p.background_label_id != 0,
             "conf_loss_type LOGISTIC with background_label_id other than 0"),
        ]
        for bad, what in unsupported:
            if bad:
                raise self.definition_error(
                    f"multibox_loss_param: {what} is not supported (SSD's nets use "
                    "share_location true, MAX_NEGATIVE or NONE mining, variances not encoded "
                    "in the target)")

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2

    def reshape(self, bottoms, tops):
        loc, conf, prior, label = (tuple(b.shape) for b in bottoms)
        if len(prior) != 3 or prior[:2] != (1, 2) or prior[2] % 4 or prior[2] == 0:
            raise self.shape_error(2, "(1, 2, P * 4): PriorBox's boxes and variances", prior)
        priors = prior[2] // 4
        if len(loc) < 2 or int(np.prod(loc[1:])) != priors * 4:
            raise self.shape_error(
                0, f"(N, P * 4) = (N, {priors * 4}) for the {priors} priors of "
                   f"'{self.bottom_name(2)}'", loc)
        num = loc[0]
        if len(conf) < 2 or conf[0] != num or int(np.prod(conf[1:])) != priors * self.num_classes:
            found = int(np.prod(conf[1:])) / priors if len(conf) > 1 else 0
            raise self.shape_error(
                1, f"({num}, P * num_classes) = ({num}, {priors * self.num_classes}) for "
                   f"{priors} priors and num_classes {self.num_classes} (found {found:g} "
                   "scores per prior)", conf)
        if len(label) != 4 or label[:2] != (1, 1) or label[3] != 8:
            raise self.shape_error(
                3, "(1, 1, G, 8): rows [image, label, instance, xmin, ymin, xmax, ymax, "
                   "difficult]", label)
        self.num, self.num_priors = num, priors
        tops[0].reshape(())

    # -- ground truth, matching, mining (host) -----------------------------------------
    def _ground_truth(self, rows):
        """Per image: (boxes (G_i, 4) float64, labels (G_i,) int64)."""
        rows = label_rows(rows, self.use_difficult)
        image, label = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
        problems = [
            ((image < 0) | (image >= self.num) | (rows[:, 0] != image),
             f"an image index in [0, {self.num}) or -1"),
            ((label < 0) | (label >= self.num_classes) | (rows[:, 1] != label),
             f"a class label in [0, {self.num_classes})"),
            (label == self.background, f"a label other than the background "
                                      f"{self.background} (found background in the dataset)"),
            # an empty or inverted box overlaps nothing, so it is never matched
            # (Caffe-SSD's rule); only coordinates that are not numbers are refused
            (~np.isfinite(rows[:, 3:7]).all(axis=1), "finite box coordinates"),
        ]
        refuse_bad_rows(rows, problems, f"{self.where}: bottom '{self.bottom_name(3)}'")
        return [(rows[image == i, 3:7], label[image == i]) for i in range(self.num)]

    def _match(self, gt, priors, loc):
        """(match (N, P), best (N, P)) on the host."""
        match = np.full((self.num, self.num_priors), -1, dtype=np.int64)
        best = np.zeros((self.num, self.num_priors))
        if not self.use_prior:
            host = to_numpy(loc).astype(np.float64)
            decoded = decode_boxes(priors[0], priors[1], host, self.code_type, False)
        for i, (boxes, _) in enumerate(gt):  # one image at a time; vectorized inside
            if len(boxes):
                candidates = priors[0] if self.use_prior else decoded[i]
                ignored = crosses_boundary(candidates) if self.ignore_cross else None
                match[i], best[i] = match_boxes(iou_matrix(candidates, boxes),
                                                self.match_type, self.threshold, ignored)
        return match, best

    def _select(self, bottoms):
        """Matches, targets and the confidence rows of the pass."""
        xp = array_module(bottoms[0].data)
        loc = bottoms[0].data.reshape(self.num, self.num_priors, 4)
        conf = bottoms[1].data.reshape(self.num, self.num_priors, self.num_classes)
        priors = to_numpy(bottoms[2].data).astype(np.float64).reshape(2, self.num_priors, 4)
        gt = self._ground_truth(to_numpy(bottoms[3].data))
        match, best = self._match(gt, priors, loc)
        labels = np.full(match.shape, self.background, dtype=np.int64)
        pos_img, pos_prior = np.nonzero(match > -1)
        gt_index = match[pos_img, pos_prior]
        gt_boxes = np.zeros((len(pos_img), 4))
        for i, (boxes, classes) in enumerate(gt):  # per image, vectorized over its matches
            here = pos_img == i
            gt_boxes[here] = boxes[gt_index[here]]
            labels[i, pos_prior[here]] = classes[gt_index[here]]
        targets = encode_boxes(priors[0][pos_prior], priors[1][pos_prior], gt_boxes,
                               self.code_type)
        if self.mining == MAX_NEGATIVE:
            losses = to_numpy(prior_conf_losses(conf, xp.asarray(labels),
                                                self.conf_type == LOGISTIC))
            has_gt = np.array([len(b) > 0 for b, _ in gt], dtype=bool)
            chosen = (match > -1) | mine_negatives(losses, match, best, has_gt,
                                                   self.neg_pos_ratio, self.neg_overlap)
        else:
            chosen = np.ones(match.shape, dtype=bool)
        conf_img, conf_prior = np.nonzero(chosen)
        return {"pos": (xp.asarray(pos_img), xp.asarray(pos_prior)),
                "targets": xp.asarray(targets, dtype=loc.dtype),
                "conf": (xp.asarray(conf_img), xp.asarray(conf_prior)),
                "conf_labels": xp.asarray(labels[conf_img, conf_prior]),
                "num_matches": len(pos_img), "num_negatives": int(chosen.sum()) - len(pos_img)}

    # -- losses (any device) -----------------------------------------------------------
    def _loc_term(self, loc, sel):
        """(sum, slope (M, 4)) of the localization loss."""
        d = loc[sel["pos"]] - sel["targets"]
        xp = array_module(d)
        if self.loc_type == L2:
            return 0.5 * (d * d).sum(), d
        small = xp.abs(d) < 1
        return xp.where(small, 0.5 * d * d, xp.abs(d) - 0.5).sum(), xp.where(small, d, xp.sign(d))

    def _conf_term(self, conf, sel):
        """(sum, slope (K, C)) of the confidence loss."""
        x = conf[sel["conf"]]
        xp = array_module(x)
        target = sel["conf_labels"][:, None] == xp.arange(self.num_classes)
        if self.conf_type == LOGISTIC:
            loss = xp.maximum(x, 0) - x * target + xp.log1p(xp.exp(-xp.abs(x)))
            return loss.sum(), 1 / (1 + xp.exp(-x)) - target
        shifted = x - x.max(axis=1, keepdims=True)
        log_prob = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        floor = np.log(np.finfo(np.float32).tiny)  # Caffe's -log(max(prob, FLT_MIN))
        picked = xp.take_along_axis(log_prob, sel["conf_labels"][:, None], axis=1)
        return -xp.maximum(picked, floor).sum(), xp.exp(log_prob) - target

    def _normalizer(self):
        return loss_normalizer(self.normalization, full=self.num * self.num_priors,
                               batch=self.num, valid=self.selection["num_matches"],
                               pre_fixed=self.pre_fixed)

    def _forward(self, bottoms, tops):
        sel = self.selection = self._select(bottoms)
        loc = bottoms[0].data.reshape(self.num, self.num_priors, 4)
        conf = bottoms[1].data.reshape(self.num, self.num_priors, self.num_classes)
        normalizer = self._normalizer()
        loss = array_module(loc).zeros((), dtype=loc.dtype)
        if self.terms[0]:
            loc_sum, sel["loc_slope"] = self._loc_term(loc, sel)
            loss = loss + self.loc_weight * loc_sum / normalizer
        if self.terms[1]:
            conf_sum, sel["conf_slope"] = self._conf_term(conf, sel)
            loss = loss + conf_sum / normalizer
        tops[0].data[...] = loss

    def _backward(self, tops, propagate_down, bottoms):
        for index, role in ((2, "prior box"), (3, "label")):
            if propagate_down[index]:
                raise self.definition_error(
                    f"cannot back-propagate to the {role} bottom '{self.bottom_name(index)}'; "
                    "set propagate_down: false for it")
        sel, scale = self.selection, tops[0].diff / self._normalizer()
        shapes = ((self.num, self.num_priors, 4),
                  (self.num, self.num_priors, self.num_classes))
        for index, key, weight in ((0, "loc", self.loc_weight), (1, "conf", 1.0)):
            if not propagate_down[index]:
                continue
            diff = bottoms[index].diff.reshape(shapes[index])
            diff[...] = 0
            if self.terms[index]:
                rows = sel["pos"] if key == "loc" else sel["conf"]
                # each (image, prior) appears once: a plain assignment, no sum
                diff[rows] = sel[f"{key}_slope"] * (scale * weight)

    forward_cpu = forward_gpu = _forward
    backward_cpu = backward_gpu = _backward
