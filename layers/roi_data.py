"""RoIData: the training data layer (py-faster-rcnn's roi_data_layer)."""
import warnings

import numpy as np

from layers.base import Layer, register, register_python
from layers.detection_targets import DEFAULT_MEANS, DEFAULT_STDS, ProposalTargetCreator
from layers.input_pipeline.minibatch import (E2E_TOPS, ROI_TOPS, MinibatchBuilder, TrainingOrder,
                                             select_entries)
from layers.input_pipeline.prefetch import DEFAULT_DEPTH, Prefetcher
from layers.input_pipeline.staging import PinnedStaging
from layers.python_compat import field_or_default, layer_settings
from netdef.errors import DataError, DataWarning

DEFAULT_SCALES = (600,)


@register_python("roi_data_layer.layer", "RoIDataLayer")
@register("RoIData")
class RoIDataLayer(Layer):
    """Minibatches of a detection dataset, as py-faster-rcnn feeds them.

    The images come from a dataset that a prototxt cannot name: the trainer
    calls ``layer.set_dataset(dataset, proposals=None)`` (``dataset``: a
    ``detection.datasets.DetectionDataset``, or anything with its ``records``,
    ``name`` and ``num_classes``; ``proposals``: per record
    ``(R, 4)`` boxes ``[x1, y1, x2, y2]`` in the record's pixels, for the
    precomputed form). Until then the tops have the reference shapes (so a
    net builds and reports its shapes) and ``forward`` raises a
    ``NetDefinitionError`` saying to train with ``python -m solver.train``.

    roi_data_param: num_classes (background included), scales (shorter
    side; several: one drawn per training image; default 600), max_size
    (1000), ims_per_batch (1), use_flipped (true), aspect_grouping (true),
    seed (-1: the net's), prefetch (true), has_rpn, use_difficult (false),
    and for the precomputed form batch_size (128, -1: all), fg_fraction,
    fg_thresh, bg_thresh_hi, bg_thresh_lo, bbox_normalize_targets,
    bbox_normalize_means, bbox_normalize_stds, class_agnostic (as
    ProposalTarget's). As ``type: "Python"`` (roi_data_layer.layer.
    RoIDataLayer) the same keys are read from ``param_str``
    (``'num_classes': 21``).

    tops, end-to-end (``has_rpn``; ims_per_batch must be 1, as in the
    reference: gt_boxes has no image index and AnchorTarget / Proposal /
    ProposalTarget handle one image):
        data ``(1, 3, H, W)`` BGR minus pixel means, scaled;
        im_info ``(1, 3)`` ``[H, W, scale]``;
        gt_boxes ``(G, 5)`` ``[x1, y1, x2, y2, class]`` times the scale.
    tops, precomputed RoIs (the staged Fast R-CNN nets; 6 tops, or 3
    without box regression), ``N = ims_per_batch`` images padded to the
    largest:
        data ``(N, 3, H, W)``; rois ``(R, 5)`` ``[image, x1, y1, x2, y2]``;
        labels ``(R, 1, 1, 1)`` (the layout of the ProposalTarget layer this
        form stands in for: py-R-FCN's OHEM nets add SoftmaxWithLossOHEM's
        per-RoI loss, shaped like the labels, to SmoothL1LossOHEM's
        ``(R, 1, 1, 1)``; the loss and accuracy layers read labels by
        count, so py-faster-rcnn's Fast R-CNN nets take them too);
        bbox_targets, bbox_inside_weights,
        bbox_outside_weights ``(R, C)`` (``C = 4 * num_classes``, or 8
        class-agnostic): ``batch_size / N`` RoIs per image sampled from its
        proposals plus its ground truth on the unscaled boxes by the
        ProposalTarget layer's code (``self.target_creator``, a
        ``layers.detection_targets.ProposalTargetCreator``), the RoIs then
        scaled.
    Unset ``has_rpn`` means end-to-end unless the tops are the precomputed
    form's (six tops, or the second named "rois"), which is how the
    reference prototxts, which carry no flag, are told apart.

    Order (layers/input_pipeline/minibatch.py): TRAIN visits every usable image and, with
    use_flipped, its mirror image, once per epoch, in a seeded permutation
    with aspect grouping; TEST visits the images in order without flips,
    at ``scales[0]``. Images without ground truth are left out in the
    end-to-end form (with a DataWarning giving the count), as
    py-faster-rcnn's filter_roidb. Difficult objects are dropped unless
    use_difficult.

    State: ``epoch`` and ``cursor`` (where the next minibatch starts),
    ``order_seed`` and, as a check, ``examples`` (the number of training
    examples) are the layer's random state (``random_state()``, JSON ints),
    so a snapshot resumes with the same minibatches; each minibatch's
    random choices come from a seed derived from its position.

    Loading runs ahead in a background thread (layers/input_pipeline/prefetch.py) with
    ``prefetch``; the batches are the same either way. An image that fails
    when drawn (a truncated or corrupt file that the dataset's header check
    let through) raises a DataError naming it, or with the dataset's
    ``on_error`` "skip" is replaced by the next training example with a
    DataWarning (``MinibatchBuilder``): the same replacement in every run.
    The minibatch is built on the host; on the GPU the prefetch thread also
    stages it in pinned buffers and forward copies them into the tops
    asynchronously (layers/input_pipeline/staging.py). No backward.
    """

    random_state_attributes = ("epoch", "cursor", "order_seed", "examples")

    exact_bottoms = 0
    min_tops = 3
    max_tops = 6

    def layer_setup(self, bottoms, tops):
        p = layer_settings(self, "roi_data_param")
        self.num_classes = int(p.num_classes)
        if self.num_classes < 2:
            raise self.definition_error(
                "needs num_classes >= 2 (background included): set roi_data_param.num_classes, "
                f"or 'num_classes' in python_param.param_str; found {self.num_classes}")
        self.scales = tuple(int(s) for s in field_or_default(p, "scales", DEFAULT_SCALES))
        self.max_size = int(p.max_size)
        self.ims_per_batch = int(p.ims_per_batch)
        if min(self.scales) < 1 or self.max_size < 1 or self.ims_per_batch < 1:
            raise self.definition_error(
                "scales, max_size and ims_per_batch must be positive, found scales "
                f"{list(self.scales)}, max_size {self.max_size}, "
                f"ims_per_batch {self.ims_per_batch}")
        self.training = self.phase == "TRAIN"
        self.use_flipped = bool(p.use_flipped) and self.training
        self.aspect_grouping = bool(p.aspect_grouping)
        self.prefetch = bool(p.prefetch)
        self.use_difficult = bool(p.use_difficult)
        self.order_seed = (int(p.seed) if p.seed >= 0 else self.seed) % (1 << 63)
        self.epoch = 0
        self.cursor = 0
        names = [self.top_name(i) for i in range(len(tops))]
        if p.HasField("has_rpn"):
            self.has_rpn = bool(p.has_rpn)
        else:
            self.has_rpn = not (len(tops) == 6 or names[1] == "rois")
        self._read_sampling(p)
        self._check_tops(len(tops))
        self.what = ("roi_data_layer.layer.RoIDataLayer" if self.param.type == "Python"
                     else "RoIData")
        self._dataset = None
        self._proposals = None
        self._entries = None
        self._expected_examples = None
        self._pipeline = None
        self.on_error = "raise"
        self._size_reference_tops(tops)

    def _read_sampling(self, p):
        """The precomputed form's RoI sampler (``target_creator``) and its
        box-target normalization as given (``bbox_normalization``: ``(means,
        stds)``, or None)."""
        self.target_creator = None
        self.bbox_normalization = None
        self.batch_size = int(p.batch_size)
        self.class_agnostic = bool(p.class_agnostic)
        self.bg_thresh_lo = float(p.bg_thresh_lo)
        self.bg_thresh_hi = float(p.bg_thresh_hi)
        means = field_or_default(p, "bbox_normalize_means", DEFAULT_MEANS)
        stds = field_or_default(p, "bbox_normalize_stds", DEFAULT_STDS)
        if self.has_rpn:
            return
        if self.batch_size == 0 or self.batch_size < -1:
            raise self.definition_error(
                f"batch_size must be positive or -1 (keep all), found {self.batch_size}")
        if self.batch_size > 0 and self.batch_size % self.ims_per_batch:
            raise self.definition_error(
                f"ims_per_batch ({self.ims_per_batch}) must divide batch_size "
                f"({self.batch_size}): each image gives batch_size / ims_per_batch RoIs")
        if p.bbox_normalize_targets:
            self.bbox_normalization = (tuple(means), tuple(stds))
        try:   # the creator checks the rest (fractions, thresholds, stds)
            self.target_creator = ProposalTargetCreator(
                self.num_classes,
                batch_size=self.batch_size // self.ims_per_batch if self.batch_size > 0 else -1,
                fg_fraction=p.fg_fraction, fg_thresh=p.fg_thresh,
                bg_thresh_hi=self.bg_thresh_hi, bg_thresh_lo=self.bg_thresh_lo,
                normalize=p.bbox_normalize_targets,
                # sampled with the float32 values a ProposalTargetParameter holds
                means=np.float32(means), stds=np.float32(stds),
                class_agnostic=self.class_agnostic)
        except ValueError as exc:
            raise self.definition_error(str(exc)) from None

    def _check_tops(self, count):
        if self.has_rpn:
            if count != 3:
                raise self.definition_error(
                    f"the end-to-end form (has_rpn) has 3 tops ({', '.join(E2E_TOPS)}), "
                    f"found {count}")
            if self.ims_per_batch != 1:
                raise self.definition_error(
                    f"the end-to-end form (has_rpn) takes 1 image per batch (gt_boxes has no "
                    f"image index, and the RPN layers handle one image), found ims_per_batch "
                    f"{self.ims_per_batch}; the precomputed-RoI form takes several")
            self.top_keys = E2E_TOPS
        else:
            if count not in (3, 6):
                raise self.definition_error(
                    f"the precomputed-RoI form (has_rpn false) has 6 tops ({', '.join(ROI_TOPS)}) "
                    f"or the first 3 without box regression, found {count}")
            self.top_keys = ROI_TOPS[:count]

    def _size_reference_tops(self, tops):
        """The shapes py-faster-rcnn's layer gives its tops in setup."""
        n = self.ims_per_batch
        tops[0].reshape((n, 3, max(self.scales), self.max_size))
        if self.has_rpn:
            tops[1].reshape((n, 3))
            tops[1].data[...] = tops[1].xp.asarray(
                np.tile([max(self.scales), self.max_size, 1.0], (n, 1)), dtype=tops[1].dtype)
            tops[2].reshape((1, 5))
            return
        rois = self.batch_size if self.batch_size > 0 else 1
        width = 8 if self.class_agnostic else 4 * self.num_classes
        shapes = [(rois, 5), (rois, 1, 1, 1), (rois, width), (rois, width), (rois, width)]
        for top, shape in zip(tops[1:], shapes):
            top.reshape(shape)

    # -- the dataset ---------------------------------------------------------------------
    def set_dataset(self, dataset, proposals=None, on_error=None):
        """Train on ``dataset`` (a DetectionDataset); ``proposals`` (a list
        with one ``(R, 4)`` array per record) for the precomputed-RoI form;
        ``on_error`` ("raise" or "skip") for images that fail when drawn,
        by default the dataset's own ``on_error`` (how it was loaded), else
        "raise".

        Raises ``DataError`` for a class count that does not match the net,
        missing or malformed proposals, or too few usable images.
        """
        records = list(dataset.records)
        name = getattr(dataset, "name", "dataset")
        on_error = on_error or getattr(dataset, "on_error", "raise")
        if on_error not in ("raise", "skip"):
            raise DataError(f"{self.where}: on_error must be 'raise' or 'skip', "
                            f"found {on_error!r}")
        classes = getattr(dataset, "num_classes", None)
        if classes is not None and classes != self.num_classes and not self.class_agnostic:
            raise DataError(
                f"{self.where}: dataset '{name}' has {classes} classes (background included), "
                f"the layer's num_classes is {self.num_classes}")
        proposals = self._check_proposals(records, proposals, name)
        entries = select_entries(
            records, has_rpn=self.has_rpn, proposals=proposals, use_flipped=self.use_flipped,
            use_difficult=self.use_difficult, bg_thresh_lo=self.bg_thresh_lo,
            bg_thresh_hi=self.bg_thresh_hi)
        if entries.skipped:
            reason = "ground-truth boxes" if self.has_rpn else \
                "ground-truth boxes or background proposals"
            shown = ", ".join(entries.skipped[:5]) + (", ..." if len(entries.skipped) > 5 else "")
            warnings.warn(f"{self.where}: left out {len(entries.skipped)} of {len(records)} "
                          f"images of '{name}' without {reason} ({shown})", DataWarning,
                          stacklevel=2)
        if len(entries) < self.ims_per_batch:
            raise DataError(
                f"{self.where}: dataset '{name}' gives {len(entries)} training image(s) "
                f"({len(entries.skipped)} left out), fewer than ims_per_batch {self.ims_per_batch}")
        self._stop_pipeline()
        self._dataset, self._proposals, self._entries = dataset, proposals, entries
        self.on_error = on_error
        self.skipped = list(entries.skipped)
        self._check_resume()

    def _check_proposals(self, records, proposals, name):
        if self.has_rpn:
            if proposals is not None:
                raise DataError(f"{self.where}: proposals were given to the end-to-end form "
                                "(has_rpn), which makes its own")
            return None
        if proposals is None:
            raise DataError(f"{self.where}: the precomputed-RoI form needs proposals: "
                            "set_dataset(dataset, proposals) with one (R, 4) array per image")
        proposals = list(proposals)
        if len(proposals) != len(records):
            raise DataError(f"{self.where}: {len(proposals)} proposal arrays for the "
                            f"{len(records)} images of '{name}'")
        checked = []
        for record, boxes in zip(records, proposals):
            boxes = np.asarray(boxes, dtype=np.float32)
            if boxes.size == 0:
                boxes = boxes.reshape(0, 4)
            if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
                raise DataError(f"{self.where}: proposals of image '{record.image_id}' "
                                f"({record.path}): expected finite (R, 4) boxes "
                                f"[x1, y1, x2, y2], found shape {boxes.shape}")
            checked.append(boxes)
        return checked

    # -- state -----------------------------------------------------------------------------
    @property
    def examples(self):
        """Training examples (flips included) of the dataset; -1 without one."""
        return len(self._entries) if self._entries is not None else -1

    def set_random_state(self, state):
        """Continue from a saved position: the next forward gives the
        minibatch that followed the one consumed when ``random_state()``
        was taken. ``examples`` is checked against the dataset."""
        position = (int(state["epoch"]), int(state["cursor"]), int(state["order_seed"]))
        expected = state.get("examples", -1)
        self._expected_examples = None if expected in (None, -1) else int(expected)
        if position != (self.epoch, self.cursor, self.order_seed):
            # Batches prepared ahead belong to the old position.
            self._stop_pipeline()
            self.epoch, self.cursor, self.order_seed = position
        self._check_resume()

    # The same, under the names SGDSolver's state providers use.
    def get_state(self):
        return self.random_state()

    def set_state(self, state):
        self.set_random_state(state)

    def _check_resume(self):
        if self._entries is None or self._expected_examples is None:
            return
        expected, found = self._expected_examples, len(self._entries)
        if expected != found:
            self._expected_examples = None
            raise DataError(
                f"{self.where}: the saved data order is for {expected} training examples "
                f"(flips included), the dataset gives {found}; resume with the same dataset "
                "and settings")

    # -- running ---------------------------------------------------------------------------
    def _start_pipeline(self):
        order = TrainingOrder(self._entries.horizontal, self.ims_per_batch, self.order_seed,
                              shuffle=self.training, aspect_grouping=self.aspect_grouping)
        build = MinibatchBuilder(
            self._dataset.records, self._entries, self.scales, self.max_size,
            random_scales=self.training, proposals=self._proposals,
            target_creator=self.target_creator, tops=self.top_keys, name=self.where,
            on_error=self.on_error)
        self._staging = PinnedStaging(self.device, self.dtype)
        laid_out = build if self.has_rpn else (lambda plan: _proposal_target_layout(build(plan)))
        self._pipeline = Prefetcher(self._staging.wrap(laid_out),
                                    order.plans(self.epoch, self.cursor),
                                    depth=DEFAULT_DEPTH if self.prefetch else 0,
                                    name=f"{self.name} prefetch")

    def _stop_pipeline(self):
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None

    def close(self):
        """Stop background loading (it restarts at the next forward)."""
        self._stop_pipeline()

    def next_minibatch(self):
        """The next minibatch as a dict of host arrays (top name -> array),
        advancing the order as ``forward`` does."""
        if self._entries is None:
            raise self.definition_error(
                f"{self.what} needs a dataset, which a prototxt cannot name: train with "
                "python -m solver.train, which reads the dataset and hands it to this layer "
                "(layer.set_dataset(dataset, proposals=None))")
        if self._pipeline is None:
            self._start_pipeline()
        try:
            plan, batch = self._pipeline.get()
        except BaseException:
            # Restart from the last consumed position: the failing batch is
            # built again (and fails again) rather than silently skipped.
            self._stop_pipeline()
            raise
        self.epoch, self.cursor = plan.next_epoch, plan.next_cursor
        return batch

    def reshape(self, bottoms, tops):
        # Sized in setup (reference shapes) and by every forward.
        pass

    def forward_cpu(self, bottoms, tops):
        batch = self.next_minibatch()
        for top, key in zip(tops, self.top_keys):
            top.set_data(batch[key])

    def forward_gpu(self, bottoms, tops):
        # The prefetch thread built the minibatch on the host and staged it
        # in pinned buffers: asynchronous copies into the tops.
        batch = self.next_minibatch()
        self._staging.upload(batch, zip(self.top_keys, tops))

    def backward_cpu(self, tops, propagate_down, bottoms):
        pass

    backward_gpu = backward_cpu


def _proposal_target_layout(batch):
    """A precomputed-RoI minibatch with its labels ``(R,)`` viewed as the
    ProposalTarget layer's ``(R, 1, 1, 1)``."""
    if "labels" in batch:
        batch["labels"] = batch["labels"].reshape(-1, 1, 1, 1)
    return batch
