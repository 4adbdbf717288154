"""R-CNN inference: one CNN pass per warped proposal.

    detector = RegionDetector.from_net_file("prototxt/rcnn_tiny.prototxt",
                                            "out/rcnn_tiny/rcnn_tiny_iter_1200.caffemodel")
    per_class = detector.detect(image_bgr, proposals)        # [c] -> (N, 5)
    detector = RegionDetector(net, crop_settings(net_path), proposals={image_id: (R, 4)})
    all_boxes = detector.detect_dataset(dataset)   # as detection.detector.Detector's

Per image: the first ``max_proposals`` proposals are warped exactly as the
WindowData layer warps training windows (layers.window_data.region_crops:
the same crop size, context padding, crop mode, mean and scale, read from
the net file's WindowData layer), the TEST net runs on them in batches of
``batch`` crops, its ``cls_prob`` ``(R, K)`` scores them and its
``bbox_pred`` ``(R, 4K)`` (deltas divided by BBOX_STDS) moves each
proposal per class; then detection.detector.postprocess (score threshold,
per-class NMS, the cap per image). ``detect_dataset`` returns
``all_boxes[c][i]`` as detection.detector.Detector does, so
detection.evaluate scores it (VOC07 mAP).
"""
import time

import numpy as np

from detection.detector import postprocess
from layers.boxes import bbox_transform_inv, clip_boxes
from layers.input_pipeline.preprocess import prefetched_images
from layers.window_data import BBOX_STDS, region_crops
from netdef.device import to_numpy
from netdef.errors import DataError, NetDefinitionError
from netdef.net import Net
from netdef.schema import read_net

__all__ = ["RegionDetector", "crop_settings"]


def crop_settings(net_path):
    """``dict(crop_size, context_pad, square, mean, scale)`` of the first
    WindowData layer of the net file ``net_path`` (the TRAIN phase's)."""
    for lp in read_net(net_path).layer:
        if lp.type != "WindowData":
            continue
        p, t = lp.window_data_param, lp.transform_param
        crop = t.crop_size or p.crop_size
        mean = np.array(t.mean_value, np.float64)[:, None, None] if len(t.mean_value) else None
        if t.HasField("mean_file") or p.HasField("mean_file"):
            raise NetDefinitionError(f"{net_path}: layer '{lp.name}': R-CNN detection reads "
                                     "mean_value only; found a mean_file")
        scale = t.scale if t.HasField("scale") else (p.scale if p.HasField("scale") else 1.0)
        return dict(crop_size=int(crop), context_pad=int(p.context_pad),
                    square=p.crop_mode == "square", mean=mean, scale=float(scale))
    raise NetDefinitionError(f"{net_path}: no WindowData layer to take the crop settings from "
                             "(R-CNN detection warps proposals as its training did)")


class RegionDetector:
    """R-CNN detection with a TEST net (module docstring).

    Args:
        net: TEST Net with input ``data`` ``(N, C, crop, crop)`` and blobs
            ``cls_prob`` ``(N, K)``, ``bbox_pred`` ``(N, 4K)``.
        settings: ``crop_settings`` of the training net.
        proposals: ``{image id: (R, 4) boxes}`` for ``detect_dataset``.
        max_proposals: proposals kept per image (the first ones).
        batch: crops per forward pass.
    """

    def __init__(self, net, settings, *, proposals=None, max_proposals=300, batch=128,
                 score_thresh=0.05, nms_thresh=0.3, max_per_image=100):
        for name in ("data", "cls_prob", "bbox_pred"):
            if name not in net.blobs:
                raise NetDefinitionError(
                    f"{net.source}: an R-CNN test net needs blobs data, cls_prob and bbox_pred; "
                    f"found no '{name}' (blobs: {', '.join(net.blobs)})")
        self.net, self.settings = net, dict(settings)
        self.proposals = proposals
        self.max_proposals, self.batch = int(max_proposals), int(batch)
        self.score_thresh, self.nms_thresh = float(score_thresh), float(nms_thresh)
        self.max_per_image = int(max_per_image)
        self.net_seconds = 0.0

    @classmethod
    def from_net_file(cls, net_path, weights, device=None, **options):
        """The TEST phase of ``net_path`` with ``weights`` (a .caffemodel)."""
        net = Net(net_path, "TEST", weights=weights, device=device)
        return cls(net, crop_settings(net_path), **options)

    def _forward(self, crops):
        data = self.net.blobs["data"]
        if data.shape != crops.shape:
            data.reshape(crops.shape)
            self.net.reshape()
        started = time.perf_counter()
        self.net.forward(data=crops.astype(data.data.dtype, copy=False))
        self.net_seconds += time.perf_counter() - started
        return to_numpy(self.net.blobs["cls_prob"].data), to_numpy(self.net.blobs["bbox_pred"].data)

    def im_detect(self, image_bgr, proposals):
        """``(scores (R, K), boxes (R, 4K))`` float32 of the first
        ``max_proposals`` of ``proposals`` ``(R, 4)`` in ``image_bgr``."""
        boxes = np.asarray(proposals, np.float64).reshape(-1, 4)
        if self.max_proposals > 0:
            boxes = boxes[:self.max_proposals]
        s = self.settings
        scores, deltas = [], []
        for start in range(0, len(boxes), self.batch):  # batches of crops, each vectorized
            part = boxes[start:start + self.batch]
            crops = region_crops([image_bgr], np.zeros(len(part), np.int64), part,
                                 s["crop_size"], s["context_pad"], s["square"], None, s["mean"],
                                 s["scale"])
            p, d = self._forward(crops)
            scores.append(p.reshape(len(part), -1))
            deltas.append(d.reshape(len(part), -1))
        if not scores:
            classes = self.net.blobs["cls_prob"].shape[1]
            return np.zeros((0, classes), np.float32), np.zeros((0, 4 * classes), np.float32)
        scores, deltas = np.concatenate(scores), np.concatenate(deltas)
        if deltas.shape[1] != 4 * scores.shape[1]:
            raise NetDefinitionError(f"{self.net.source}: bbox_pred has {deltas.shape[1]} "
                                     f"outputs, expected 4 x {scores.shape[1]} classes")
        deltas = deltas * np.tile(BBOX_STDS, scores.shape[1])
        height, width = image_bgr.shape[:2]
        out = clip_boxes(bbox_transform_inv(boxes, deltas), height, width)
        return scores.astype(np.float32), out.astype(np.float32)

    def detect(self, image_bgr, proposals):
        """``postprocess`` of one image: ``[c] -> (N, 5)``."""
        scores, boxes = self.im_detect(image_bgr, proposals)
        return postprocess(scores, boxes, self.score_thresh, self.nms_thresh, self.max_per_image)

    def detect_dataset(self, dataset, progress=None):
        """``all_boxes[c][i]`` for every record of ``dataset``, each image's
        proposals from ``self.proposals`` by image id (so
        detection.evaluate's sharded evaluation takes this detector as it
        takes a Detector); ``progress(done, total)`` after each image."""
        records = list(dataset.records)
        missing = [r.image_id for r in records if r.image_id not in (self.proposals or {})]
        if missing:
            raise DataError(f"no proposals for {len(missing)} of the {len(records)} images of "
                            f"dataset '{dataset.name}', e.g. '{missing[0]}'")
        classes = len(dataset.classes)
        all_boxes = [[None] * len(records) for _ in range(classes)]
        for i, (record, image) in enumerate(prefetched_images(records)):
            dets = self.detect(image, self.proposals[record.image_id])
            if len(dets) != classes:
                raise DataError(f"{self.net.source}: the net scores {len(dets)} classes "
                                f"(background included), dataset '{dataset.name}' has {classes}")
            for c in range(classes):
                all_boxes[c][i] = dets[c]
            if progress is not None:
                progress(i + 1, len(records))
        return all_boxes
