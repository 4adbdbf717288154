"""The evaluation call every entry point makes: open the test split, detect
every image, score the detections (VOC mAP or COCO AP), print the table.

    test_set = open_test_set(root, "test", pad_to=None, images=None)
    all_boxes, table, summary, seconds = evaluate_detector(detector, test_set, coco, stream)
    summary_line(summary)    # "mAP 0.8123 (VOC07 11-point), ..."

Under MPI (``world``, a solver.world.World of several ranks) the images are
split across the ranks (rank r detects images r, r + N, ...; see
detection.shards), the detections gathered in dataset order, and rank 0
scores them and prints the table: the detections are those of one process,
so the metrics are too. Every rank returns the same summary.
"""
import os
import sys
import time

from detection.classes import pad_classes
from detection.datasets import DetectionDataset, load_dataset
from detection.evaluation import evaluate_coco, evaluate_voc, format_table
from detection.shards import is_root, root_only, run_sharded
from netdef.errors import DataError

__all__ = ["evaluate_detections", "summary_line", "detection_progress", "open_test_set",
           "evaluation_source",
           "evaluate_detector", "detect_sharded"]


def evaluate_detections(dataset, all_boxes, coco=False):
    """``(result, table text, summary dict)`` of VOC or COCO evaluation of
    ``all_boxes[c][i]`` (``(N, 5)`` per class and image)."""
    if coco:
        result = evaluate_coco(dataset, all_boxes)
        summary = {"metric": "coco", "ap": result.ap, "ap50": result.ap50, "ap75": result.ap75,
                   "ar": result.ar}
    else:
        result = evaluate_voc(dataset, all_boxes, use_07_metric=True)
        summary = {"metric": "voc", "map_07": result.mean_ap_07,
                   "map_area": result.mean_ap_area}
    return result, format_table(result, dataset.classes), summary


def summary_line(summary):
    """One line for an ``evaluate_detections`` summary."""
    if summary["metric"] == "coco":
        return (f"COCO AP {summary['ap']:.4f} (AP50 {summary['ap50']:.4f}, AP75 "
                f"{summary['ap75']:.4f}, AR {summary['ar']:.4f})")
    return (f"mAP {summary['map_07']:.4f} (VOC07 11-point), {summary['map_area']:.4f} "
            f"(area), IoU > 0.5, difficult objects excluded")


def detection_progress(stream, every=50):
    """A progress callback printing every ``every`` images."""
    started = time.perf_counter()

    def report(done, total):
        if done == total or done % every == 0:
            rate = done / max(time.perf_counter() - started, 1e-9)
            print(f"  detected {done}/{total} images ({rate:.1f} images/s)", file=stream,
                  flush=True)
    return report


def open_test_set(root, split, *, on_error="raise", pad_to=None, images=None,
                  check_images=False, json_is_test_set=False):
    """The split to evaluate on (images without objects kept), padded with
    placeholder classes up to ``pad_to`` (the built-in dataset under a
    larger net), cut to its first ``images`` records when given.

    A COCO instances file given as ``root`` holds a single split: with
    ``json_is_test_set`` (``solver.test --data FILE``) it is the test set;
    otherwise ``root`` is also where training read its images (``solver.train``,
    the schedule), so ``split`` must name a second instances file (``--test-split
    FILE``) and anything else is a DataError asking for one, rather than an
    evaluation on the training annotations. ``check_images`` decodes every
    image while loading (see ``load_dataset``).
    """
    source = evaluation_source(root, split, json_is_test_set)
    test_set = load_dataset(source, split, on_error=on_error, keep_empty=True,
                            check_images=check_images)
    if pad_to is not None and pad_to > test_set.num_classes:
        test_set = pad_classes(test_set, pad_to)
    if images is not None:
        test_set = DetectionDataset(test_set.name, test_set.classes,
                                    test_set.records[:max(images, 0)], on_error=on_error)
    return test_set


def evaluation_source(root, split, json_is_test_set=False):
    """Where ``open_test_set`` reads the test split: ``root``, or for a
    COCO file trained on the second file ``split`` names; a DataError
    asking for that file when there is none (a command can call this
    before training to stop early)."""
    root = os.fspath(root)
    if not (os.path.isfile(root) and root.lower().endswith(".json")) or json_is_test_set:
        return root
    split = os.fspath(split)
    if split.lower().endswith(".json") and os.path.isfile(split):
        return split
    raise DataError(
        f"{root}: a COCO annotation file holds a single split, the one training reads, so it "
        f"cannot also be the test split (found test split {split!r}); give the test "
        "annotations as a second file: --test-split path/to/instances_val.json (or --no-eval)")


def detect_sharded(detector, test_set, world=None, progress=None):
    """``all_boxes[c][i]`` of ``detector.detect_dataset`` over ``test_set``
    with the images split across the ranks of ``world`` and gathered in
    dataset order on every rank (one process: ``detect_dataset`` itself).
    ``progress(done, total)`` reports rank 0's share."""
    if world is None or world.size == 1:
        return detector.detect_dataset(test_set, progress)
    records, classes = list(test_set.records), len(test_set.classes)

    def work(indices, report):
        shard = DetectionDataset(test_set.name, test_set.classes, [records[i] for i in indices],
                                 on_error=getattr(test_set, "on_error", "raise"))
        boxes = detector.detect_dataset(shard, report)
        return [[boxes[c][j] for c in range(classes)] for j in range(len(shard.records))]

    per_image = run_sharded(world, len(records), work, progress)
    return [[per_image[i][c] for i in range(len(records))] for c in range(classes)]


def evaluate_detector(detector, test_set, coco, stream=sys.stdout, every=100, world=None):
    """Detect every image of ``test_set`` with ``detector`` (a
    detection.detector.Detector), score them and print the table to
    ``stream``; returns ``(all_boxes, table, summary, seconds)``
    (``all_boxes[c][i]``: ``(N, 5)`` detections of class ``c`` in image
    ``i``). With ``world`` (several MPI ranks) the images are split across
    the ranks; rank 0 scores and prints, every rank returns the same
    ``(all_boxes, table, summary)``; call it on every rank."""
    started = time.perf_counter()
    root = is_root(world)
    progress = detection_progress(stream, every) if root else None
    if root and world is not None and world.size > 1:
        share = len(range(0, len(test_set.records), world.size))
        print(f"  {len(test_set.records)} images split over {world.size} ranks ({share} on "
              f"rank 0; its progress below)", file=stream, flush=True)
    all_boxes = detect_sharded(detector, test_set, world, progress)
    # Scored on rank 0 only; its result (or its error) reaches every rank.
    table, summary = root_only(world, lambda: evaluate_detections(test_set, all_boxes,
                                                                  coco)[1:])
    if root:
        print(table, file=stream, flush=True)
    return all_boxes, table, summary, time.perf_counter() - started
