"""Training minibatches: which images, in which order, and their blobs.

This is the host-side half of the RoIData layer (layers/roi_data.py), kept
free of Blob and Net so it can be tested and reused on its own:

- ``select_entries``: the training examples of a dataset, py-faster-rcnn's
  way: difficult objects dropped, images that cannot give a training
  example left out, then a mirrored copy of every image appended
  (``imdb.append_flipped_images``), the flip applied when the image loads.
- ``TrainingOrder``: the order of the examples, a seeded shuffle per epoch
  with py-faster-rcnn's aspect grouping, as a pure function of
  ``(seed, epoch, cursor)`` so a resumed run continues with the same
  minibatches.
- ``MinibatchBuilder``: loads, flips, scales and stacks the images of one
  ``BatchPlan`` and produces the tops: end-to-end ``data``, ``im_info``,
  ``gt_boxes``; or, for precomputed proposals, ``data``, ``rois``,
  ``labels``, ``bbox_targets``, ``bbox_inside_weights``,
  ``bbox_outside_weights`` sampled by the code the ProposalTarget layer runs
  (``layers.detection_targets.ProposalTargetCreator``).

Every random choice of a minibatch (its image scales, its RoI sample) comes
from a generator seeded by the plan's seed, so the batches do not depend on
which thread builds them or when.
"""
import dataclasses
import warnings

import numpy as np

from layers.input_pipeline.preprocess import (PIXEL_MEANS, flip_boxes, flip_image,
                                              images_to_blob, load_image_bgr, prepare_image)
from netdef.errors import DataError, DataWarning, EngineError

__all__ = ["Entries", "select_entries", "TrainingOrder", "BatchPlan", "MinibatchBuilder",
           "E2E_TOPS", "ROI_TOPS"]

#: Top names of the two forms, in top order.
E2E_TOPS = ("data", "im_info", "gt_boxes")
ROI_TOPS = ("data", "rois", "labels", "bbox_targets", "bbox_inside_weights",
            "bbox_outside_weights")

# Salts that separate the generators drawn from one seed.
_ORDER_SALT = 1
_BATCH_SALT = 2


# -- which examples -------------------------------------------------------------------

@dataclasses.dataclass
class Entries:
    """The training examples: example ``k`` is record ``record[k]`` of the
    dataset, mirrored when ``flipped[k]``.

    Attributes:
        record: ``(E,)`` int64 indices into the dataset's records.
        flipped: ``(E,)`` bool.
        horizontal: ``(E,)`` bool, ``width >= height`` (aspect grouping).
        boxes: per record, ``(G, 4)`` float32 ground truth used for training
            (unflipped; difficult objects dropped unless asked for).
        labels: per record, ``(G,)`` int32.
        skipped: image ids of the records left out.
    """
    record: np.ndarray
    flipped: np.ndarray
    horizontal: np.ndarray
    boxes: list
    labels: list
    skipped: list

    def __len__(self):
        return len(self.record)


def select_entries(records, *, has_rpn=True, proposals=None, use_flipped=True,
                   use_difficult=False, bg_thresh_lo=0.1, bg_thresh_hi=0.5):
    """The training examples of ``records`` (a list of ImageRecord).

    A record is left out when it cannot give a training example, as
    py-faster-rcnn's ``filter_roidb`` does: end-to-end, when it has no
    ground-truth box; with precomputed proposals, when it has neither a
    ground-truth box (which is always a foreground RoI) nor a proposal that
    counts as background (IoU 0 with nothing, so only when
    ``bg_thresh_lo <= 0 < bg_thresh_hi``). Originals come first, then the
    mirrored copies of the same records in the same order.
    """
    boxes, labels, keep, skipped = [], [], [], []
    bg_without_gt = bg_thresh_lo <= 0 < bg_thresh_hi
    for i, record in enumerate(records):
        chosen = np.ones(len(record.labels), bool) if use_difficult \
            else ~np.asarray(record.difficult)
        boxes.append(np.asarray(record.boxes, np.float32)[chosen].reshape(-1, 4))
        labels.append(np.asarray(record.labels, np.int32)[chosen])
        if has_rpn:
            usable = len(labels[-1]) > 0
        else:
            usable = len(labels[-1]) > 0 or (bg_without_gt and len(proposals[i]) > 0)
        (keep if usable else skipped).append(i)
    keep = np.asarray(keep, np.int64)
    skipped = [records[i].image_id for i in skipped]
    copies = 2 if use_flipped else 1
    record = np.tile(keep, copies)
    flipped = np.repeat(np.arange(copies) == 1, len(keep))
    horizontal = np.array([records[i].width >= records[i].height for i in record], bool)
    return Entries(record, flipped, horizontal.reshape(-1), boxes, labels, skipped)


# -- in which order -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """One minibatch to build: example indices (into ``Entries``), where it
    sits in the order (``epoch``, ``cursor`` of its first example), where the
    next one starts (``next_epoch``, ``next_cursor``) and its seed."""
    examples: tuple
    epoch: int
    cursor: int
    next_epoch: int
    next_cursor: int
    seed: tuple


class TrainingOrder:
    """Minibatches of ``ims_per_batch`` examples, epoch after epoch.

    Epoch ``e`` visits the examples in ``permutation(e)``: with ``shuffle``
    a permutation drawn from a generator seeded by ``(seed, e)``; with
    ``aspect_grouping`` (py-faster-rcnn's ``_shuffle_roidb_inds``) the
    landscape (width >= height) and the portrait examples are permuted
    separately, cut into groups of ``max(2, ims_per_batch)`` and the groups
    permuted, so a minibatch holds images of one orientation (and pads
    little). Leftovers of both orientations form mixed groups; a last short
    group goes at the end so the groups stay aligned with the minibatches.
    Without ``shuffle`` (the TEST phase) the order is 0, 1, 2, ...

    A minibatch starting at ``cursor`` takes ``permutation[cursor:cursor +
    ims_per_batch]``; when fewer examples remain, the next epoch begins
    (the reference reshuffles one minibatch earlier, when exactly
    ``ims_per_batch`` remain; here every example of an epoch is used).
    """

    def __init__(self, horizontal, ims_per_batch=1, seed=0, shuffle=True, aspect_grouping=True):
        self.horizontal = np.asarray(horizontal, bool).reshape(-1)
        self.size = len(self.horizontal)
        self.ims_per_batch = int(ims_per_batch)
        self.seed = int(seed) % (1 << 63)
        self.shuffle = bool(shuffle)
        self.aspect_grouping = bool(aspect_grouping)
        if self.size < self.ims_per_batch or self.ims_per_batch < 1:
            raise DataError(f"{self.size} training image(s) cannot fill a minibatch of "
                            f"{self.ims_per_batch} image(s)")
        self._cache = {}

    def permutation(self, epoch):
        """``(E,)`` int64: the order of the examples in ``epoch``."""
        epoch = int(epoch)
        if epoch not in self._cache:
            if len(self._cache) > 4:
                self._cache.clear()
            self._cache[epoch] = self._draw(epoch)
        return self._cache[epoch]

    def _draw(self, epoch):
        if not self.shuffle:
            return np.arange(self.size, dtype=np.int64)
        rng = np.random.default_rng([self.seed, _ORDER_SALT, epoch])
        if not self.aspect_grouping:
            return rng.permutation(self.size).astype(np.int64)
        group = max(2, self.ims_per_batch)
        rows, rest = [], []
        for members in (np.flatnonzero(self.horizontal), np.flatnonzero(~self.horizontal)):
            members = rng.permutation(members)
            full = len(members) // group * group
            rows += list(members[:full].reshape(-1, group))
            rest.append(members[full:])
        rest = np.concatenate(rest)
        full = len(rest) // group * group
        rows += list(rest[:full].reshape(-1, group))
        tail = rest[full:]
        order = [rows[i] for i in rng.permutation(len(rows))] + [tail]
        return np.concatenate(order).astype(np.int64)

    def plan(self, epoch, cursor):
        """The minibatch that starts at position ``(epoch, cursor)``."""
        epoch, cursor = int(epoch), int(cursor)
        if cursor < 0:
            raise DataError(f"data order position: cursor {cursor} is negative")
        if cursor + self.ims_per_batch > self.size:
            epoch, cursor = epoch + 1, 0
        examples = self.permutation(epoch)[cursor:cursor + self.ims_per_batch]
        return BatchPlan(tuple(int(e) for e in examples), epoch, cursor, epoch,
                         cursor + self.ims_per_batch, (self.seed, _BATCH_SALT, epoch, cursor))

    def plans(self, epoch=0, cursor=0):
        """Every minibatch from ``(epoch, cursor)`` on (an endless iterator)."""
        while True:
            plan = self.plan(epoch, cursor)
            yield plan
            epoch, cursor = plan.next_epoch, plan.next_cursor


# -- the blobs of a minibatch ---------------------------------------------------------

class MinibatchBuilder:
    """Builds the arrays of a ``BatchPlan`` (callable; runs in the
    prefetch thread).

    Args:
        records: the dataset's ImageRecords.
        entries: ``Entries`` from ``select_entries``.
        scales: target shorter sides; in training one is drawn per image.
        max_size: cap of the longer side.
        random_scales: draw the scale (TRAIN) or use ``scales[0]`` (TEST).
        proposals: per record ``(R, 4)`` boxes for the precomputed form, or
            None for the end-to-end form.
        target_creator: the precomputed form's RoI sampler, a
            ``layers.detection_targets.ProposalTargetCreator`` (stateless:
            each image draws from its own generator).
        tops: the names to produce (a prefix of ``E2E_TOPS`` or ``ROI_TOPS``).
        name: how messages name the builder's owner (the RoIData layer).
        on_error: ``"raise"``: an example whose image fails when drawn (a
            truncated or corrupt file, a size that is not the annotation's)
            raises its DataError; ``"skip"``: it is replaced, with a
            DataWarning, by the next example in entry order (record order,
            originals then mirrors, wrapping around) that loads, drawn with
            the same scale and seed, so a run stays repeatable and resumes
            identically. A DataError only when no example loads.

    Returns (per call) a dict of NumPy arrays: ``data`` ``(N, 3, H, W)``
    float32 (images zero-padded to the largest); end-to-end: ``im_info``
    ``(N, 3)`` ``[height, width, scale]`` of each scaled image and
    ``gt_boxes`` ``(G, 5)`` ``[x1, y1, x2, y2, class]`` in scaled pixels
    (N = 1); precomputed: ``rois`` ``(R, 5)`` ``[image, x1, y1, x2, y2]``
    in scaled pixels, ``labels`` ``(R,)`` and the targets and weights
    ``(R, C)``, sampled on the unscaled boxes (as py-faster-rcnn's
    roidb does) with ``batch_size / N`` RoIs per image.
    """

    def __init__(self, records, entries, scales=(600,), max_size=1000, *, random_scales=True,
                 proposals=None, target_creator=None, tops=E2E_TOPS, pixel_means=PIXEL_MEANS,
                 name="roi_data", on_error="raise"):
        self.records = records
        self.entries = entries
        self.scales = tuple(int(s) for s in scales)
        self.max_size = int(max_size)
        self.random_scales = bool(random_scales)
        self.proposals = proposals
        self.tops = tuple(tops)
        self.pixel_means = pixel_means
        self.name = name
        self.target_creator = target_creator
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', found {on_error!r}")
        self.on_error = on_error
        self.failed = {}          # record index -> why its image failed (skip mode)
        if proposals is not None and target_creator is None:
            raise ValueError("the precomputed-RoI form (proposals) needs a target_creator")

    def __call__(self, plan):
        n = len(plan.examples)
        rng = np.random.default_rng(list(plan.seed))
        if self.random_scales and len(self.scales) > 1:
            targets = [self.scales[i] for i in rng.integers(0, len(self.scales), size=n)]
        else:
            targets = [self.scales[0]] * n
        images, scales, per_image = [], [], []
        for i, (example, target) in enumerate(zip(plan.examples, targets)):
            blob, scale, extra = self._example_or_next(example, target, i, plan.seed)
            images.append(blob)
            scales.append(scale)
            per_image.append(extra)
        batch = {"data": images_to_blob(images)}
        if self.proposals is None:
            batch["im_info"] = np.array(
                [[b.shape[2], b.shape[3], s] for b, s in zip(images, scales)], dtype=np.float64)
            batch["gt_boxes"] = np.concatenate(per_image, axis=0)
        else:
            for k, name in enumerate(ROI_TOPS[1:]):
                batch[name] = np.concatenate([extra[k] for extra in per_image], axis=0)
        return {name: batch[name] for name in self.tops}

    def _example_or_next(self, example, target, position, seed):
        """``_example``, or in skip mode that of the first example after it
        (entry order, wrapping) whose image loads."""
        for _ in range(len(self.entries)):
            try:
                return self._example(example, target, position, seed)
            except DataError as exc:
                if self.on_error != "skip":
                    raise type(exc)(f"{self.name}: {exc} (on_error 'skip', python -m solver.train "
                                    "--on-error skip, replaces such an image by the next one; "
                                    "--check-images finds them all before training)") from exc
                self._note_failure(example, exc)
            example = (example + 1) % len(self.entries)
        raise DataError(f"{self.name}: no training image could be loaded; "
                        f"{len(self.failed)} failed, e.g. {next(iter(self.failed.values()))}")

    def _note_failure(self, example, exc):
        """Remember a failed record (its other copy is not read again) and
        warn once for it."""
        record_index = int(self.entries.record[example])
        if record_index in self.failed:
            return
        self.failed[record_index] = str(exc)
        warnings.warn(f"{self.name}: skipped image: {exc}; the next training image takes its "
                      "place (on_error 'skip')", DataWarning, stacklevel=2)

    def _example(self, example, target, position, seed):
        """``(blob, scale, extra)`` of one example at ``position`` in the
        batch; its random draws come from ``(seed, position)``."""
        record_index = int(self.entries.record[example])
        record = self.records[record_index]
        if record_index in self.failed:
            raise DataError(self.failed[record_index])
        try:
            return self._one_image(record, record_index, bool(self.entries.flipped[example]),
                                   target, position,
                                   np.random.default_rng(list(seed) + [position]))
        except EngineError as exc:
            if record.path in str(exc):
                raise
            raise type(exc)(f"image '{record.path}' (id {record.image_id}): {exc}") from exc
        except Exception as exc:
            exc.add_note(f"while preparing image '{record.path}' (id {record.image_id})")
            raise

    def _one_image(self, record, record_index, flipped, target_size, position, rng):
        image = load_image_bgr(record.path)
        if image.shape[:2] != (record.height, record.width):
            raise DataError(
                f"image '{record.path}' is {image.shape[1]} x {image.shape[0]} pixels (width x "
                f"height), its annotation says {record.width} x {record.height}")
        boxes = self.entries.boxes[record_index]
        labels = self.entries.labels[record_index].astype(np.float64)
        if flipped:
            image = flip_image(image)
            boxes = flip_boxes(boxes, record.width)
        blob, scale = prepare_image(image, target_size, self.max_size, self.pixel_means)
        gt = np.concatenate([boxes.astype(np.float64), labels[:, None]], axis=1)
        if self.proposals is None:
            gt[:, :4] *= scale
            return blob, scale, gt
        proposals = np.asarray(self.proposals[record_index], np.float64).reshape(-1, 4)
        if flipped:
            proposals = flip_boxes(proposals, record.width)
        rois = np.concatenate([np.zeros((len(proposals), 1)), proposals], axis=1)
        rois, labels, targets, inside, outside = self.target_creator(
            rois, gt, rng, source=f"{self.name}: gt_boxes")
        rois[:, 0] = position
        rois[:, 1:] *= scale
        return blob, scale, (rois, labels, targets, inside, outside)
