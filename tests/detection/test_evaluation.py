"""Tests of detection.evaluation: VOC AP (both metrics) and COCO AP.

Expected numbers are worked out by hand in the comments; random cases are
compared with plain per-detection loops written here from the rules of
py-faster-rcnn's voc_eval and pycocotools' evaluateImg/accumulate.
"""
import json
import math
import os

import numpy as np
import pytest

from netdef.errors import DataError, EngineError
from detection.datasets import DetectionDataset, ImageRecord
from detection.evaluation import (COCOResult, VOCResult, dump_detections, evaluate_coco,
                               evaluate_voc, format_table, load_detections, voc_ap)


def make_dataset(images, classes=("cat",)):
    """images: list of lists of (box, label, difficult)."""
    records = []
    for i, objects in enumerate(images):
        boxes = [o[0] for o in objects]
        records.append(ImageRecord(image_id=str(100 + i), path=f"/nowhere/{i}.jpg",
                                   width=200, height=200, boxes=np.reshape(boxes, (-1, 4)),
                                   labels=[o[1] for o in objects],
                                   difficult=[o[2] if len(o) > 2 else False for o in objects]))
    return DetectionDataset("test", ("__background__",) + tuple(classes), records)


def boxes_of(dataset, per_class):
    """all_boxes from {class index: {image index: [[x1, y1, x2, y2, s], ...]}}."""
    all_boxes = [[np.zeros((0, 5)) for _ in dataset.records] for _ in dataset.classes]
    for c, images in per_class.items():
        for i, rows in images.items():
            all_boxes[c][i] = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    return all_boxes


A, B, C = [0, 0, 9, 9], [20, 20, 29, 29], [40, 40, 49, 49]
FAR1, FAR2 = [100, 100, 109, 109], [60, 60, 69, 69]


# ---------------------------------------------------------------- voc_ap / VOC


def three_gt_five_dets():
    # ranked outcomes: TP, FP, TP, FP, TP
    dataset = make_dataset([[(A, 1), (B, 1), (C, 1)]])
    dets = [A + [0.9], FAR1 + [0.8], B + [0.7], FAR2 + [0.6], C + [0.5]]
    return dataset, boxes_of(dataset, {1: {0: dets}})


def test_hand_worked_both_metrics():
    # tp 1 1 2 2 3, fp 0 1 1 2 2 -> recall 1/3 1/3 2/3 2/3 1,
    # precision 1 1/2 2/3 1/2 3/5.
    rec = np.array([1, 1, 2, 2, 3]) / 3
    prec = np.array([1, 1 / 2, 2 / 3, 1 / 2, 3 / 5])
    # VOC07: t = 0, .1, .2, .3 -> 1; t = .4, .5, .6 -> 2/3; t = .7 .. 1 -> 3/5
    ap07 = (4 * 1 + 3 * (2 / 3) + 4 * (3 / 5)) / 11
    # area: envelope 1 on (0, 1/3], 2/3 on (1/3, 2/3], 3/5 on (2/3, 1]
    area = (1 + 2 / 3 + 3 / 5) / 3
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(ap07, abs=1e-15)
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(area, abs=1e-15)

    dataset, all_boxes = three_gt_five_dets()
    result = evaluate_voc(dataset, all_boxes)
    got_rec, got_prec = result.curves[0]
    np.testing.assert_allclose(got_rec, rec, rtol=0, atol=1e-15)
    np.testing.assert_allclose(got_prec, prec, rtol=0, atol=1e-15)
    assert result.ap_07[0] == pytest.approx(ap07, abs=1e-15)
    assert result.ap_area[0] == pytest.approx(area, abs=1e-15)
    assert result.mean_ap == pytest.approx(ap07, abs=1e-15)
    assert result.recall[0] == 1.0 and result.npos[0] == 3 and result.num_detections[0] == 5
    area_result = evaluate_voc(dataset, all_boxes, use_07_metric=False)
    assert area_result.mean_ap == pytest.approx(area, abs=1e-15)


def test_voc_ap_edges():
    # no points: nothing reaches any threshold; the area is 0
    assert voc_ap([], [], True) == 0.0 and voc_ap([], [], False) == 0.0
    # a single perfect point
    assert voc_ap([1.0], [1.0], True) == pytest.approx(1.0)
    assert voc_ap([1.0], [1.0], False) == pytest.approx(1.0)
    # recall 0.5 at precision 1: VOC07 reaches t = 0 .. 0.5 (6 of 11); area 0.5
    assert voc_ap([0.5], [1.0], True) == pytest.approx(6 / 11)
    assert voc_ap([0.5], [1.0], False) == pytest.approx(0.5)
    # voc_eval's thresholds are np.arange(0, 1.1, 0.1): the fourth is
    # 0.30000000000000004, which a recall of exactly 3/10 does not reach
    assert voc_ap([0.3], [1.0], True) == pytest.approx(3 / 11)
    with pytest.raises(ValueError, match="same number"):
        voc_ap([0.1, 0.2], [1.0])


def test_difficult_detection_ignored_and_not_counted():
    d = [60, 60, 69, 69]
    dataset = make_dataset([[(A, 1), (d, 1, True)]])
    # ranked: on the difficult box (ignored), on A (TP), far (FP)
    all_boxes = boxes_of(dataset, {1: {0: [d + [0.9], A + [0.8], FAR1 + [0.7]]}})
    result = evaluate_voc(dataset, all_boxes)
    assert result.npos[0] == 1
    rec, prec = result.curves[0]
    # tp 0 1 1, fp 0 0 1: the ignored detection is a repeated point (0, 0)
    np.testing.assert_allclose(rec, [0, 1, 1])
    np.testing.assert_allclose(prec, [0, 1, 0.5])
    assert result.ap_07[0] == pytest.approx(1.0) and result.ap_area[0] == pytest.approx(1.0)
    # the same box not difficult: all three count (TP, TP, FP) with npos 2
    plain = make_dataset([[(A, 1), (d, 1, False)]])
    result = evaluate_voc(plain, all_boxes)
    assert result.npos[0] == 2
    np.testing.assert_allclose(result.curves[0][1], [1, 1, 2 / 3])


def test_best_box_is_chosen_among_all_boxes():
    # voc_eval compares a detection with the box of highest IoU among every
    # box of its class in the image, difficult or already matched included.
    big = [0, 0, 19, 9]                      # difficult, IoU 0.8 with det
    small = [0, 0, 9, 9]                     # IoU 0.625 with det
    det = [0, 0, 15, 9]                      # area 160
    dataset = make_dataset([[(small, 1), (big, 1, True)]])
    result = evaluate_voc(dataset, boxes_of(dataset, {1: {0: [det + [0.9]]}}))
    rec, prec = result.curves[0]
    # ignored: tp 0, fp 0 -> precision 0 / eps = 0
    np.testing.assert_array_equal(rec, [0.0]) and np.testing.assert_array_equal(prec, [0.0])
    assert result.ap_07[0] == 0.0
    # an already-matched best box makes a FP even when another box would match
    dataset = make_dataset([[(small, 1), ([6, 0, 15, 9], 1)]])
    dets = [small + [0.9], [0, 0, 11, 9, 0.8]]   # second: IoU 10/12 with small, 6/16 with other
    result = evaluate_voc(dataset, boxes_of(dataset, {1: {0: dets}}))
    np.testing.assert_allclose(result.curves[0][1], [1, 0.5])


def test_duplicate_detection_is_false_positive():
    dataset = make_dataset([[(A, 1)]])
    all_boxes = boxes_of(dataset, {1: {0: [A + [0.9], [0, 0, 9, 8, 0.8]]}})
    result = evaluate_voc(dataset, all_boxes)
    np.testing.assert_allclose(result.curves[0][0], [1, 1])
    np.testing.assert_allclose(result.curves[0][1], [1, 0.5])
    assert result.ap_07[0] == pytest.approx(1.0)


def test_iou_threshold_is_strict_with_inclusive_pixels():
    dataset = make_dataset([[(A, 1)]])
    # with widths x2 - x1 + 1: [0, 0, 4, 9] covers 50 of A's 100 pixels -> IoU 0.5
    half = boxes_of(dataset, {1: {0: [[0, 0, 4, 9, 0.9]]}})
    assert evaluate_voc(dataset, half).ap_07[0] == 0.0           # 0.5 is not > 0.5
    assert evaluate_voc(dataset, half, iou_threshold=0.4999).ap_07[0] == pytest.approx(1.0)
    six = boxes_of(dataset, {1: {0: [[0, 0, 5, 9, 0.9]]}})      # IoU 60 / 100
    assert evaluate_voc(dataset, six).ap_07[0] == pytest.approx(1.0)
    assert evaluate_voc(dataset, six, iou_threshold=0.6).ap_07[0] == 0.0
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate_voc(dataset, six, iou_threshold=1.5)


def test_class_without_ground_truth_is_nan_and_left_out_of_the_mean():
    dataset = make_dataset([[(A, 1)]], classes=("cat", "dog"))
    all_boxes = boxes_of(dataset, {1: {0: [A + [0.9]]}, 2: {0: [B + [0.8]]}})
    result = evaluate_voc(dataset, all_boxes)
    assert result.npos.tolist() == [1, 0]
    assert math.isnan(result.ap_07[1]) and math.isnan(result.ap_area[1])
    assert math.isnan(result.recall[1])
    assert np.isnan(result.curves[1][0]).all()
    assert result.mean_ap == pytest.approx(1.0) and result.mean_ap_area == pytest.approx(1.0)
    table = format_table(result, dataset.classes)
    assert "dog" in table and " -" in table.splitlines()[4]
    assert result.as_dict()["ap_07"][1] is None


def test_empty_detections():
    dataset = make_dataset([[(A, 1)], [(B, 2), (C, 1, True)]], classes=("cat", "dog"))
    empty = [None, [[], np.zeros((0, 5))], [np.zeros((0, 5)), None]]
    result = evaluate_voc(dataset, empty)
    assert result.ap_07.tolist() == [0.0, 0.0] and result.ap_area.tolist() == [0.0, 0.0]
    assert result.recall.tolist() == [0.0, 0.0] and result.num_detections.tolist() == [0, 0]
    assert result.npos.tolist() == [1, 1]
    coco = evaluate_coco(dataset, empty)
    assert coco.ap == 0.0 and coco.ap50 == 0.0 and coco.num_detections.tolist() == [0, 0]
    # nothing at all: no images
    nothing = DetectionDataset("none", ("__background__", "cat"), [])
    result = evaluate_voc(nothing, [[], []])
    assert math.isnan(result.mean_ap) and result.npos.tolist() == [0]


def test_score_ties_keep_input_order():
    # equal scores: image order, then row order (a stable sort). FP first
    # then TP gives precision 0, 1/2; the other order would give 1, 1/2.
    dataset = make_dataset([[(A, 1)], [(A, 1)]])
    all_boxes = boxes_of(dataset, {1: {0: [FAR1 + [0.5]], 1: [A + [0.5]]}})
    result = evaluate_voc(dataset, all_boxes)
    np.testing.assert_allclose(result.curves[0][1], [0, 0.5])


# ------------------------------------------------------------------ reference


def voc_reference(dataset, all_boxes, threshold):
    """voc_eval, one detection at a time (stable sort by score)."""
    out = []
    for c in range(1, len(dataset.classes)):
        recs, npos = {}, 0
        for i, r in enumerate(dataset.records):
            sel = r.labels == c
            recs[i] = {"bbox": r.boxes[sel].astype(float), "difficult": r.difficult[sel],
                       "det": [False] * int(sel.sum())}
            npos += int((~r.difficult[sel]).sum())
        dets = [(i, row) for i in range(len(dataset.records)) for row in all_boxes[c][i]]
        dets = sorted(dets, key=lambda d: -d[1][4])
        tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
        for d, (i, row) in enumerate(dets):
            R, bb, ovmax, jmax = recs[i], row[:4], -np.inf, -1
            for j, g in enumerate(R["bbox"]):
                iw = max(min(g[2], bb[2]) - max(g[0], bb[0]) + 1.0, 0.0)
                ih = max(min(g[3], bb[3]) - max(g[1], bb[1]) + 1.0, 0.0)
                inter = iw * ih
                uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                       + (g[2] - g[0] + 1.0) * (g[3] - g[1] + 1.0) - inter)
                if inter / uni > ovmax:
                    ovmax, jmax = inter / uni, j
            if ovmax > threshold:
                if not R["difficult"][jmax]:
                    if not R["det"][jmax]:
                        tp[d] = 1
                        R["det"][jmax] = True
                    else:
                        fp[d] = 1
            else:
                fp[d] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / npos if npos else np.full(len(tp), np.nan)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap07 = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            ap07 += (np.max(prec[rec >= t]) if np.sum(rec >= t) else 0.0) / 11
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for k in range(mpre.size - 1, 0, -1):
            mpre[k - 1] = max(mpre[k - 1], mpre[k])
        idx = np.where(mrec[1:] != mrec[:-1])[0]
        area = np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1])
        if npos == 0:
            ap07 = area = np.nan
        out.append((ap07, area, rec[-1] if len(rec) else (0.0 if npos else np.nan), npos))
    return out


def random_case(rng, num_images=12, num_classes=4, crowded=True):
    """Clustered boxes so that detections overlap several ground truths;
    scores on a coarse grid so that ties occur."""
    images = []
    all_boxes = [[np.zeros((0, 5)) for _ in range(num_images)] for _ in range(num_classes)]
    for i in range(num_images):
        g = rng.integers(0, 7)
        centres = rng.uniform(20, 60, size=(g, 2))
        sizes = rng.uniform(8, 30, size=(g, 2))
        boxes = np.round(np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1))
        labels = rng.integers(1, num_classes, size=g)
        difficult = rng.random(g) < (0.2 if crowded else 0.0)
        images.append([(b.tolist(), int(l), bool(d)) for b, l, d in zip(boxes, labels, difficult)])
        for c in range(1, num_classes):
            n = rng.integers(0, 9)
            if g and n:
                base = boxes[rng.integers(0, g, size=n)]
                jitter = rng.normal(0, 3, size=(n, 4))
                dets = np.concatenate([np.round(base + jitter), rng.integers(0, 6, (n, 1)) / 5],
                                      axis=1)
            else:
                xy = rng.uniform(0, 60, size=(n, 2))
                dets = np.concatenate([xy, xy + 10, rng.integers(0, 6, (n, 1)) / 5], axis=1)
            all_boxes[c][i] = dets
    classes = tuple(f"c{k}" for k in range(1, num_classes))
    return make_dataset(images, classes), all_boxes


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_voc_agrees_with_plain_loop(seed, threshold):
    dataset, all_boxes = random_case(np.random.default_rng(seed))
    result = evaluate_voc(dataset, all_boxes, iou_threshold=threshold)
    expected = voc_reference(dataset, all_boxes, threshold)
    np.testing.assert_allclose(result.ap_07, [e[0] for e in expected], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.ap_area, [e[1] for e in expected], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.recall, [e[2] for e in expected], rtol=0, atol=1e-12)
    assert result.npos.tolist() == [e[3] for e in expected]


def coco_reference(dataset, all_boxes, max_dets=100):
    """pycocotools' evaluateImg + accumulate for one area range, one detection
    and one box at a time. Difficult boxes are COCO's crowd boxes."""
    thresholds = np.linspace(0.5, 0.95, 10)
    rec_points = np.linspace(0.0, 1.0, 101)
    num_images = len(dataset.records)
    precision = np.full((10, 101, len(dataset.classes) - 1), np.nan)

    def iou(d, g, crowd):
        iw = max(min(d[2], g[2]) - max(d[0], g[0]) + 1, 0)
        ih = max(min(d[3], g[3]) - max(d[1], g[1]) + 1, 0)
        inter = iw * ih
        da = (d[2] - d[0] + 1) * (d[3] - d[1] + 1)
        ga = (g[2] - g[0] + 1) * (g[3] - g[1] + 1)
        return inter / (da if crowd else da + ga - inter)

    for c in range(1, len(dataset.classes)):
        scores, matched, ignored, npig = [], [], [], 0
        for i in range(num_images):
            r = dataset.records[i]
            sel = np.flatnonzero(r.labels == c)
            gt_order = sorted(sel, key=lambda j: bool(r.difficult[j]))   # stable
            gts = [r.boxes[j] for j in gt_order]
            g_ig = [bool(r.difficult[j]) for j in gt_order]
            npig += sum(not x for x in g_ig)
            dets = sorted(list(all_boxes[c][i]), key=lambda d: -d[4])[:max_dets]
            dtm = np.zeros((10, len(dets)), bool)
            dtig = np.zeros((10, len(dets)), bool)
            for t, thr in enumerate(thresholds):
                gtm = [False] * len(gts)
                for d, det in enumerate(dets):
                    best, m = min(thr, 1 - 1e-10), -1
                    for j in range(len(gts)):
                        if gtm[j] and not g_ig[j]:
                            continue
                        if m > -1 and not g_ig[m] and g_ig[j]:
                            break
                        v = iou(det, gts[j], g_ig[j])
                        if v < best:
                            continue
                        best, m = v, j
                    if m == -1:
                        continue
                    dtig[t, d] = g_ig[m]
                    dtm[t, d] = True
                    gtm[m] = True
            for d, det in enumerate(dets):
                scores.append(det[4])
                matched.append(dtm[:, d])
                ignored.append(dtig[:, d])
        if npig == 0:
            continue
        order = sorted(range(len(scores)), key=lambda k: -scores[k])
        for t in range(10):
            tp_sum = fp_sum = 0
            rc, pr = [], []
            for k in order:
                if ignored[k][t]:
                    pass
                elif matched[k][t]:
                    tp_sum += 1
                else:
                    fp_sum += 1
                rc.append(tp_sum / npig)
                pr.append(tp_sum / (tp_sum + fp_sum + np.spacing(1)))
            for k in range(len(pr) - 1, 0, -1):
                pr[k - 1] = max(pr[k - 1], pr[k])
            q = np.zeros(101)
            inds = np.searchsorted(rc, rec_points, side="left")
            for ri, pi in enumerate(inds):
                if pi < len(pr):
                    q[ri] = pr[pi]
            precision[t, :, c - 1] = q
    return precision


@pytest.mark.parametrize("seed", range(6))
def test_coco_agrees_with_plain_loop(seed):
    dataset, all_boxes = random_case(np.random.default_rng(100 + seed))
    max_dets = 100 if seed % 2 else 3
    result = evaluate_coco(dataset, all_boxes, max_dets=max_dets)
    expected = coco_reference(dataset, all_boxes, max_dets=max_dets)
    np.testing.assert_allclose(result.precision, expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------- COCO


def test_coco_hand_worked():
    # gts A, B, C; dets: A exactly (IoU 1), a box on B with IoU 100/160 = 0.625, far.
    dataset = make_dataset([[(A, 1), (B, 1), (C, 1)]])
    all_boxes = boxes_of(dataset, {1: {0: [A + [0.9], [20, 20, 29, 35, 0.8], FAR1 + [0.7]]}})
    result = evaluate_coco(dataset, all_boxes)
    # t = .5, .55, .6: tp 1 2 2, fp 0 0 1 -> recall 1/3 2/3 2/3, precision
    # envelope 1 1 2/3: the 101 recall points 0 .. 0.66 (67 of them) get 1,
    # 0.67 .. 1 get 0 -> 67/101. t = .65 .. .95: only A -> recall 1/3,
    # points 0 .. 0.33 (34) get 1 -> 34/101.
    assert result.ap50 == pytest.approx(67 / 101, abs=1e-15)
    assert result.ap75 == pytest.approx(34 / 101, abs=1e-15)
    assert result.ap == pytest.approx((3 * 67 + 7 * 34) / 1010, abs=1e-15)
    assert result.ar == pytest.approx((3 * 2 / 3 + 7 * 1 / 3) / 10, abs=1e-15)
    assert result.num_gt.tolist() == [3] and result.num_detections.tolist() == [3]
    assert isinstance(result, COCOResult) and "AP50" in format_table(result)


def test_coco_threshold_is_inclusive():
    dataset = make_dataset([[(A, 1)]])
    half = boxes_of(dataset, {1: {0: [[0, 0, 4, 9, 0.9]]}})     # IoU exactly 0.5
    result = evaluate_coco(dataset, half)
    assert result.ap50 == pytest.approx(1.0)                       # 0.5 >= 0.5
    assert result.ap == pytest.approx(0.1)                         # only t = 0.5
    assert evaluate_voc(dataset, half).ap_07[0] == 0.0             # VOC: strictly above


def test_coco_crowd_boxes():
    crowd = [0, 0, 99, 99]
    dataset = make_dataset([[(crowd, 1, True), ([150, 150, 159, 159], 1)]])
    inside = [10, 10, 19, 19]          # IoU 0.01, but 1.0 as intersection / detection area
    all_boxes = boxes_of(dataset, {1: {0: [inside + [0.9], [30, 30, 39, 39, 0.8],
                                           [150, 150, 159, 159, 0.7]]}})
    result = evaluate_coco(dataset, all_boxes)
    # both detections inside the crowd box are ignored (a crowd box takes any
    # number), so the ranking is a single TP
    assert result.ap == pytest.approx(1.0) and result.num_gt.tolist() == [1]
    # VOC: IoU 0.01 is not a match, so they are false positives
    voc = evaluate_voc(dataset, all_boxes)
    np.testing.assert_allclose(voc.curves[0][1], [0, 0, 1 / 3])


def test_coco_prefers_real_boxes_to_crowd():
    big = [0, 0, 19, 9]
    small = [0, 0, 9, 9]
    det = [0, 0, 15, 9]                  # IoU 0.8 with the crowd box, 0.625 with small
    dataset = make_dataset([[(small, 1), (big, 1, True)]])
    all_boxes = boxes_of(dataset, {1: {0: [det + [0.9]]}})
    result = evaluate_coco(dataset, all_boxes)
    assert result.ap50 == pytest.approx(1.0)     # matched to small, a TP
    assert evaluate_voc(dataset, all_boxes).ap_07[0] == 0.0   # VOC: ignored


def test_equal_iou_ties():
    g1, g2 = [0, 0, 9, 9], [2, 0, 11, 9]
    d1 = [1, 0, 10, 9, 0.9]              # IoU 90/110 with both boxes
    d2 = g1 + [0.8]                      # IoU 1 with g1, 80/120 with g2
    dataset = make_dataset([[(g1, 1), (g2, 1)]])
    all_boxes = boxes_of(dataset, {1: {0: [d1, d2]}})
    # COCO takes the last of equal IoUs: d1 -> g2, then d2 -> g1, both TPs
    # at t = 0.7 (taking g1 first would leave d2 only g2 at 0.667 < 0.7)
    coco = evaluate_coco(dataset, all_boxes)
    assert coco.iou_thresholds[4] == pytest.approx(0.7)
    assert coco.precision[4].mean() == 1.0
    # VOC takes the first: d1 -> g1; d2's best box is g1, already matched: FP
    voc = evaluate_voc(dataset, all_boxes)
    np.testing.assert_allclose(voc.curves[0][1], [1, 0.5])


def test_coco_max_dets_and_class_without_gt():
    dataset = make_dataset([[(A, 1)]], classes=("cat", "dog"))
    dets = [FAR1 + [0.9], FAR2 + [0.8], A + [0.7]]
    all_boxes = boxes_of(dataset, {1: {0: dets}, 2: {0: [A + [0.5]]}})
    cut = evaluate_coco(dataset, all_boxes, max_dets=2)
    assert cut.num_detections.tolist() == [2, 1] and cut.ap == 0.0
    full = evaluate_coco(dataset, all_boxes)
    # TP third: precision 1/3 at recall 1
    assert full.ap == pytest.approx(1 / 3)
    assert math.isnan(full.ap_per_class[1]) and np.isnan(full.precision[:, :, 1]).all()
    assert full.as_dict()["ap_per_class"][1] is None
    with pytest.raises(ValueError, match="max_dets"):
        evaluate_coco(dataset, all_boxes, max_dets=0)


def test_coco_agrees_with_pycocotools():
    """Cross-check with the reference implementation (a test extra)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    dataset, all_boxes = random_case(np.random.default_rng(7), num_images=20)
    images, anns, dets = [], [], []
    for i, r in enumerate(dataset.records):
        images.append({"id": i + 1, "width": 200, "height": 200})
        for b, lab, crowd in zip(r.boxes.tolist(), r.labels.tolist(), r.difficult.tolist()):
            w, h = b[2] - b[0] + 1, b[3] - b[1] + 1
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": lab,
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": int(crowd)})
        for c in range(1, len(dataset.classes)):
            for row in all_boxes[c][i]:
                dets.append({"image_id": i + 1, "category_id": c, "score": float(row[4]),
                             "bbox": [row[0], row[1], row[2] - row[0] + 1, row[3] - row[1] + 1]})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c, "name": n} for c, n in enumerate(dataset.classes) if c]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        coco_eval = COCOeval(gt, gt.loadRes(dets), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
    expected = coco_eval.eval["precision"][:, :, :, 0, 2]            # area all, maxDets 100
    expected = np.where(expected == -1, np.nan, expected)
    result = evaluate_coco(dataset, all_boxes)
    np.testing.assert_allclose(result.precision, expected, rtol=0, atol=1e-12)


# ------------------------------------------------------------- table and files


def test_format_table():
    dataset, all_boxes = three_gt_five_dets()
    result = evaluate_voc(dataset, all_boxes)
    assert isinstance(result, VOCResult)
    text = format_table(result, dataset.classes)
    lines = text.splitlines()
    assert lines[1].split() == ["class", "gt", "dets", "recall", "AP07", "AParea"]
    assert lines[3].split() == ["cat", "3", "5", "1.0000", f"{8.4 / 11:.4f}", f"{34 / 45:.4f}"]
    assert lines[-1].split()[0] == "mean"
    assert format_table(result) == text
    with pytest.raises(ValueError, match="1 classes"):
        format_table(result, ["a", "b"])
    with pytest.raises(TypeError):
        format_table({"ap": 1}, ["cat"])


def test_dump_and_load_detections(tmp_path):
    dataset, all_boxes = random_case(np.random.default_rng(3), num_images=5)
    path = tmp_path / "dets.json"
    count = dump_detections(path, dataset, all_boxes)
    entries = json.loads(path.read_text())
    assert count == len(entries) == sum(len(all_boxes[c][i]) for c in range(1, 4)
                                        for i in range(5))
    first = entries[0]
    assert set(first) == {"image_id", "class", "score", "box"} and len(first["box"]) == 4
    c = dataset.classes.index(first["class"])
    i = [r.image_id for r in dataset.records].index(first["image_id"])
    np.testing.assert_array_equal(first["box"] + [first["score"]], all_boxes[c][i][0])
    assert os.listdir(tmp_path) == ["dets.json"]           # no temporary left over
    back = load_detections(path, dataset)
    for c in range(1, 4):
        for i in range(5):
            np.testing.assert_array_equal(back[c][i], np.reshape(all_boxes[c][i], (-1, 5)))
    assert evaluate_voc(dataset, back).ap_07.tolist() == evaluate_voc(dataset, all_boxes).ap_07.tolist()


def test_load_detections_errors(tmp_path):
    dataset = make_dataset([[(A, 1)]])
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": "999", "class": "cat", "score": 1, "box": [0, 0, 1, 1]}]')
    with pytest.raises(DataError, match=r"bad.json: detection 0 .*'999'"):
        load_detections(bad, dataset)
    bad.write_text('[{"image_id": "100", "class": "cat", "score": "x", "box": [0, 0, 1, 1]}]')
    with pytest.raises(DataError, match="numeric 'score'"):
        load_detections(bad, dataset)
    bad.write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_detections(bad, dataset)
    with pytest.raises(DataError, match="cannot read"):
        load_detections(tmp_path / "missing.json", dataset)


def test_bad_all_boxes_are_reported():
    dataset = make_dataset([[(A, 1)], [(B, 1)]])
    good = boxes_of(dataset, {1: {0: [A + [0.9]]}})
    with pytest.raises(DataError, match=r"1 class lists; expected 2"):
        evaluate_voc(dataset, good[:1])
    with pytest.raises(DataError, match=r"all_boxes\[1\] \(class 'cat'\) has 1 entries; expected 2"):
        evaluate_voc(dataset, [None, good[1][:1]])
    shape = [None, [np.zeros((2, 4)), []]]
    with pytest.raises(DataError, match=r"all_boxes\[1\]\[0\] .*image '100'.* shape \(2, 4\)"):
        evaluate_coco(dataset, shape)
    nan = [None, [[], [[0, 0, 1, 1, np.nan]]]]
    with pytest.raises(DataError, match=r"all_boxes\[1\]\[1\] .*image '101'.*non-finite"):
        evaluate_voc(dataset, nan)
    with pytest.raises(EngineError, match="DetectionDataset"):
        evaluate_voc(object(), good)
    labelled = make_dataset([[(A, 5)]])
    with pytest.raises(DataError, match=r"image '100' .* labelled 5; expected a class in 1..1"):
        evaluate_voc(labelled, [None, [[]]])
