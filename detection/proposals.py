"""Proposals of a trained RPN over a dataset, in a pickle-free file keyed by
its content (what py-faster-rcnn's ``rpn_generate`` writes as a pickle
between the stages of its alternating optimization).

    net = Net("prototxt/rfcn_tiny_staged_rpn_test.prototxt", "TEST", weights=rpn_weights)
    proposals = generate_proposals(net, dataset.records, scale=192, max_size=256)
    proposals.save("stage1_proposals.npz")
    boxes = Proposals.load("stage1_proposals.npz").for_dataset(dataset, "stage1_proposals.npz")
    data_layer.set_dataset(dataset, proposals=boxes)

One image, as py-faster-rcnn's ``im_proposals``: the image is scaled
(shorter side ``scale``, longer side at most ``max_size``) and
mean-subtracted, ``data`` and ``im_info`` go forward, and the ``rois`` blob
``(R, 5)`` ``[0, x1, y1, x2, y2]`` divided by the image scale gives the
image's proposals ``(R, 4)`` in its own pixels (highest score first, as the
Proposal layer orders them); the ``scores`` blob ``(R, 1)`` is kept when the
net has one. Flipped training images use the same proposals, mirrored by the
data layer (py-faster-rcnn does the same).

The file (``netdef.snapshot_format``: an ``.npz`` of arrays plus JSON, no
pickle) holds ``boxes`` ``(N, 4)`` float32, the proposals of all images
concatenated, ``counts`` ``(I,)`` int64 per image, ``scores`` ``(N,)``
float32 when present, and in its metadata the image ids (in file order),
the dataset name, the cache ``key`` and what produced it. Files of other
sources have the same form (and the same ``kind``, "rpn-proposals", so
that every reader takes them), their metadata saying where they come from:
``source`` "selective_search" with its ``mode``, ``max_per_image`` and
``min_size``, or "mat" with the ``file`` imported
(detection.proposal_sources; ``python -m solver.proposals``). Boxes are
listed best first per image (RPN score, Selective Search rank), so a cap
keeps each image's first ones (detection.proposal_checks).

``proposals_key`` hashes everything the proposals depend on: the RPN net
(its text after any overrides), the bytes of the weights file, the image
scaling, the blob names and dtype, and for every image its id, path, size
and the size, mtime and inode of its file (the rule of the dataset
annotation cache: a replaced image changes at least one of them). A file
whose key matches can be reused as it is; ``load_or_generate`` does that.
"""
import dataclasses
import hashlib
import json
import os
import time

import numpy as np

from netdef.device import to_numpy
from netdef.errors import DataError, NetDefinitionError, WeightsError
from netdef.snapshot_format import load_arrays, save_arrays
from layers.input_pipeline.preprocess import prefetched_images, prepare_image
from detection.shards import is_root, root_only, run_sharded

__all__ = ["Proposals", "generate_proposals", "proposals_key", "load_or_generate",
           "cache_path", "KIND", "VERSION"]

KIND = "rpn-proposals"
VERSION = 1


@dataclasses.dataclass(eq=False)
class Proposals:
    """Proposals per image.

    Attributes:
        image_ids: list of str, one per image.
        boxes: list of ``(R_i, 4)`` float32 ``[x1, y1, x2, y2]`` in the
            image's pixels (0-based, inclusive).
        scores: list of ``(R_i,)`` float32 objectness scores, or None.
        meta: JSON-serialisable dict (key, dataset, how they were made).
    """
    image_ids: list
    boxes: list
    scores: list = None
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.image_ids = [str(i) for i in self.image_ids]
        self.boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in self.boxes]
        if len(self.boxes) != len(self.image_ids):
            raise ValueError(f"{len(self.boxes)} box arrays for {len(self.image_ids)} images")
        if self.scores is not None:
            self.scores = [np.asarray(s, np.float32).reshape(-1) for s in self.scores]
            if [len(s) for s in self.scores] != [len(b) for b in self.boxes]:
                raise ValueError("scores and boxes differ in count for some image")

    def __len__(self):
        return len(self.image_ids)

    @property
    def total(self):
        """The number of proposals over all images."""
        return int(sum(len(b) for b in self.boxes))

    def save(self, path):
        """Write to ``path`` atomically (see the module docstring)."""
        counts = np.array([len(b) for b in self.boxes], np.int64)
        arrays = {"boxes": np.concatenate(self.boxes) if self.boxes
                  else np.zeros((0, 4), np.float32), "counts": counts}
        if self.scores is not None:
            arrays["scores"] = np.concatenate(self.scores) if self.scores \
                else np.zeros((0,), np.float32)
        meta = dict(self.meta, kind=KIND, version=VERSION, image_ids=self.image_ids)
        save_arrays(path, arrays, meta)

    @classmethod
    def load(cls, path):
        """Read a file written by ``save``; a foreign, damaged or
        inconsistent file raises DataError naming it."""
        path = os.fspath(path)
        try:
            arrays, meta = load_arrays(path)
        except WeightsError as exc:
            raise DataError(f"proposals file {exc}") from None
        if meta.get("kind") != KIND:
            raise DataError(f"{path}: not a proposals file (kind {meta.get('kind')!r})")
        if meta.get("version") != VERSION:
            raise DataError(f"{path}: proposals file version {meta.get('version')} is not "
                            f"supported (this reader: {VERSION})")
        ids, boxes, counts, scores = _checked_content(path, meta, arrays)
        splits = np.cumsum(counts)[:-1]
        meta = {k: v for k, v in meta.items() if k not in ("kind", "version", "image_ids")}
        return cls(ids, np.split(boxes, splits),
                   None if scores is None else np.split(scores, splits), meta)

    def for_dataset(self, dataset, source="proposals"):
        """The boxes in the order of ``dataset.records`` (matched by image
        id), as ``RoIDataLayer.set_dataset(dataset, proposals=...)`` takes
        them. DataError, naming ``source``, when an image has none."""
        index = {image_id: i for i, image_id in enumerate(self.image_ids)}
        missing = [r.image_id for r in dataset.records if r.image_id not in index]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise DataError(
                f"{source}: no proposals for {len(missing)} of the {len(dataset.records)} images "
                f"of dataset '{getattr(dataset, 'name', 'dataset')}' ({shown}); they were "
                f"generated for {len(self.image_ids)} images"
                + (f" of '{self.meta['dataset']}'" if self.meta.get("dataset") else ""))
        return [self.boxes[index[r.image_id]] for r in dataset.records]


def _blob_array(net, name, what):
    if name not in net.blobs:
        raise NetDefinitionError(
            f"{net.source}: the RPN net has no blob '{name}' ({what}); its blobs: "
            f"{', '.join(net.blobs)}")
    return to_numpy(net.blobs[name].data)


def _checked_content(path, meta, arrays):
    """``(image ids, boxes, counts, scores or None)`` of a proposals file,
    checked: ids a list of strings, ``boxes`` (N, 4) and ``scores`` (N,)
    finite floating point, ``counts`` (I,) non-negative integers summing to
    N; else DataError naming ``path``."""
    ids = meta.get("image_ids")
    boxes, counts, scores = arrays.get("boxes"), arrays.get("counts"), arrays.get("scores")
    if not isinstance(ids, list) or boxes is None or counts is None:
        raise DataError(f"{path}: proposals file without image_ids, boxes or counts")
    if not all(isinstance(i, str) for i in ids):
        raise DataError(f"{path}: the image_ids of a proposals file must be strings")
    if counts.dtype.kind not in "iu" or counts.ndim != 1 or len(counts) != len(ids) \
            or (counts < 0).any():
        raise DataError(f"{path}: proposals counts must be {len(ids)} non-negative integers "
                        f"(one per image id), found {counts.dtype} {counts.shape}")
    total = sum(int(c) for c in counts.tolist())   # Python ints: no int64 wrap-around
    for name, array, shape in (("boxes", boxes, (total, 4)), ("scores", scores, (total,))):
        if array is None:
            continue
        if array.dtype.kind != "f" or array.shape != shape:
            raise DataError(f"{path}: inconsistent proposals file ({len(ids)} image ids, "
                            f"counts summing to {total}, {name} {array.dtype} {array.shape}; "
                            f"expected float {shape})")
        if not np.isfinite(array).all():
            raise DataError(f"{path}: the proposals' {name} hold NaN or Inf")
    return ids, boxes, counts, scores


def generate_proposals(net, records, *, scale=600, max_size=1000, rois_blob="rois",
                       scores_blob="scores", progress=None, meta=None, world=None):
    """Proposals of ``net`` (a TEST-phase RPN Net with inputs ``data`` and
    ``im_info``) for every record of ``records`` (ImageRecord list), in
    order. ``progress(done, total)`` is called after each image. The next
    image is read in a background thread while the net runs. Returns
    ``Proposals`` (scores kept when the net has ``scores_blob``).

    With ``world`` (several MPI ranks, each with the same net and weights)
    rank r runs images r, r + N, ... and every rank gets all of them in
    ``records`` order (detection.shards): the same as one process;
    ``progress`` then counts rank 0's share. Call it on every rank."""
    for name in ("data", "im_info"):
        if name not in net.blobs:
            raise NetDefinitionError(
                f"{net.source}: the RPN net needs the inputs data and im_info; it has no blob "
                f"'{name}' (inputs: {', '.join(net.inputs) or 'none'})")
    with_scores = scores_blob in net.blobs
    records = list(records)

    def work(indices, report):
        return _image_proposals(net, [records[i] for i in indices], scale, max_size,
                                rois_blob, scores_blob if with_scores else None, report)

    per_image = run_sharded(world, len(records), work, progress)
    return Proposals([r.image_id for r in records], [boxes for boxes, _ in per_image],
                     [scores for _, scores in per_image] if with_scores else None,
                     dict(meta or {}))


def _image_proposals(net, records, scale, max_size, rois_blob, scores_blob, progress):
    """``[(boxes (R, 4), scores (R,) or None)]`` of ``records`` in order
    (``scores_blob`` None: no scores)."""
    out = []
    for i, (record, image) in enumerate(prefetched_images(records)):
        blob, im_scale = prepare_image(image, scale, max_size)
        im_info = np.array([[blob.shape[2], blob.shape[3], im_scale]], np.float32)
        net.forward(data=blob, im_info=im_info)
        rois = _blob_array(net, rois_blob, "the proposals, (R, 5)")
        if rois.ndim != 2 or rois.shape[1] != 5:
            raise NetDefinitionError(
                f"{net.source}: blob '{rois_blob}' should hold proposals (R, 5) "
                f"[batch, x1, y1, x2, y2], found shape {rois.shape}")
        # Back to the image's own pixels (py-faster-rcnn's im_proposals).
        boxes = (rois[:, 1:5].astype(np.float64) / im_scale).astype(np.float32)
        scores = None if scores_blob is None else \
            _blob_array(net, scores_blob, "scores").reshape(-1).astype(np.float32)
        out.append((boxes, scores))
        if progress is not None:
            progress(i + 1, len(records))
    return out


def _file_digest(path, chunk=1 << 22):
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while True:
                block = handle.read(chunk)
                if not block:
                    break
                digest.update(block)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read the weights: {exc.strerror or exc}") from None
    return digest.hexdigest()


def _image_identity(record):
    try:
        st = os.stat(record.path)
        stat = [st.st_size, st.st_mtime_ns, st.st_ino]
    except OSError as exc:
        stat = ["missing", type(exc).__name__]
    return [record.image_id, os.path.abspath(record.path), int(record.width),
            int(record.height), stat]


def proposals_key(net_text, weights_path, records, *, scale, max_size, rois_blob="rois",
                  scores_blob="scores", dtype="float32"):
    """The cache key (hex) of the proposals of the RPN net ``net_text``
    (its prototxt text, overrides applied) with the weights file
    ``weights_path`` over ``records``, at this image scaling."""
    digest = hashlib.sha256()

    def add(label, value):
        digest.update(json.dumps([label, value], sort_keys=True).encode("utf-8"))
        digest.update(b"\0")

    add("kind", [KIND, VERSION])
    add("net", net_text)
    add("weights", _file_digest(weights_path))
    add("scaling", [int(scale), int(max_size)])
    add("blobs", [rois_blob, scores_blob])
    add("dtype", str(np.dtype(dtype)))
    add("images", [_image_identity(r) for r in records])
    return digest.hexdigest()


def cache_path(folder, stem, key):
    """``<folder>/<stem>_<first 16 hex digits of key>.npz``."""
    return os.path.join(os.fspath(folder), f"{stem}_{key[:16]}.npz")


def load_or_generate(path, key, make, say=None, world=None):
    """The proposals in ``path`` when it exists and holds key ``key``;
    otherwise ``make()``'s (a ``Proposals``), stamped with the key and
    saved to ``path``. Returns ``(proposals, reused)``.

    With ``world`` (several MPI ranks): rank 0 decides whether the file can
    be reused and tells the others; otherwise every rank calls ``make()``
    (a ``generate_proposals(..., world=world)``: the ranks share the
    images), rank 0 writes the file, and the others wait for it and read
    it, so every rank holds exactly what the file holds. ``say`` is used
    on rank 0 only. ``path`` must be on a file system every rank sees."""
    if world is None or world.size == 1:
        return _load_or_generate(path, key, make, say)
    root = is_root(world)
    cached = _cached(path, key, say if root else None) if root else None
    if world.bcast(cached is not None, root=0):
        return (cached if root else Proposals.load(path)), True
    started = time.perf_counter()
    proposals = make()
    seconds = round(time.perf_counter() - started, 3)

    def write():
        proposals.meta = dict(proposals.meta, key=key, seconds=seconds)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        proposals.save(path)

    root_only(world, write)
    return (proposals if root else Proposals.load(path)), False


def _cached(path, key, say):
    """The proposals of ``path`` when it holds ``key``, else None (said why)."""
    if not os.path.isfile(path):
        return None
    try:
        cached = Proposals.load(path)
    except DataError as exc:
        if say:
            say(f"ignoring the unreadable proposals cache {path} ({exc})")
        return None
    if cached.meta.get("key") == key:
        return cached
    if say:
        say(f"{path} holds proposals of other inputs (key mismatch): generating again")
    return None


def _load_or_generate(path, key, make, say):
    cached = _cached(path, key, say)
    if cached is not None:
        return cached, True
    started = time.perf_counter()
    proposals = make()
    proposals.meta = dict(proposals.meta, key=key,
                          seconds=round(time.perf_counter() - started, 3))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    proposals.save(path)
    return proposals, False
