"""Training order, example selection, minibatch building and background
prefetching (layers/input_pipeline/minibatch.py, prefetch.py)."""
import gc
import threading

import numpy as np
import pytest
from PIL import Image

from layers.boxes import bbox_overlaps
from layers.detection_targets import ProposalTargetCreator
from netdef.errors import DataError
from detection.datasets import ImageRecord
from layers.input_pipeline.minibatch import (E2E_TOPS, ROI_TOPS, MinibatchBuilder, TrainingOrder,
                              select_entries)
from layers.input_pipeline.preprocess import PIXEL_MEANS
from layers.input_pipeline.prefetch import Prefetcher


# -- order ---------------------------------------------------------------------------

def batches_of_epoch(order, epoch):
    plans, position = [], (epoch, 0)
    while True:
        plan = order.plan(*position)
        if plan.epoch != epoch:
            return plans
        plans.append(plan)
        position = (plan.next_epoch, plan.next_cursor)


def test_order_is_a_seeded_permutation_per_epoch():
    horizontal = np.array([True, False] * 5)
    order = TrainingOrder(horizontal, 1, seed=7)
    again = TrainingOrder(horizontal, 1, seed=7)
    other = TrainingOrder(horizontal, 1, seed=8)
    for epoch in range(3):
        perm = order.permutation(epoch)
        assert sorted(perm) == list(range(10))
        np.testing.assert_array_equal(perm, again.permutation(epoch))
    assert not np.array_equal(order.permutation(0), order.permutation(1))
    assert not np.array_equal(order.permutation(0), other.permutation(0))


def test_every_example_once_per_epoch_then_a_new_epoch():
    order = TrainingOrder(np.ones(6, bool), 1, seed=0)
    plans = batches_of_epoch(order, 0)
    assert [p.cursor for p in plans] == list(range(6))
    assert sorted(p.examples[0] for p in plans) == list(range(6))
    last = plans[-1]
    nxt = order.plan(last.next_epoch, last.next_cursor)
    assert (nxt.epoch, nxt.cursor) == (1, 0)


def test_a_partial_last_batch_starts_the_next_epoch():
    order = TrainingOrder(np.ones(5, bool), 2, seed=0, aspect_grouping=False)
    plans = batches_of_epoch(order, 0)
    assert [p.cursor for p in plans] == [0, 2]
    assert all(len(p.examples) == 2 for p in plans)


def test_batch_seeds_depend_on_the_position_only():
    order = TrainingOrder(np.ones(4, bool), 1, seed=3)
    assert order.plan(2, 1).seed == TrainingOrder(np.ones(4, bool), 1, seed=3).plan(2, 1).seed
    assert order.plan(2, 1).seed != order.plan(2, 2).seed != order.plan(3, 1).seed


@pytest.mark.parametrize("ims_per_batch", [1, 2, 3])
def test_aspect_grouping_batches_one_orientation(ims_per_batch):
    group = max(2, ims_per_batch)
    horizontal = np.array([True] * (3 * group) + [False] * (2 * group))
    order = TrainingOrder(horizontal, ims_per_batch, seed=11)
    for epoch in range(4):
        perm = order.permutation(epoch)
        assert sorted(perm) == list(range(len(horizontal)))
        for start in range(0, len(perm), group):
            assert len(set(horizontal[perm[start:start + group]])) == 1
    assert len({tuple(order.permutation(e)) for e in range(4)}) == 4


def test_aspect_grouping_leftovers():
    """3 landscape + 3 portrait in pairs: one pair of each kind, one mixed
    pair; an odd total leaves a single example at the end."""
    horizontal = np.array([True, True, True, False, False, False])
    perm = TrainingOrder(horizontal, 1, seed=0).permutation(0)
    pairs = [tuple(horizontal[perm[i:i + 2]]) for i in range(0, 6, 2)]
    assert sorted(pairs) == sorted([(True, True), (False, False), (True, False)])
    odd = np.array([True, True, False, False, False])
    assert sorted(TrainingOrder(odd, 1, seed=0).permutation(0)) == list(range(5))


def test_without_shuffle_the_order_is_the_dataset_order():
    order = TrainingOrder(np.array([True, False, True]), 1, seed=5, shuffle=False)
    np.testing.assert_array_equal(order.permutation(3), [0, 1, 2])


def test_too_few_examples_for_a_batch():
    with pytest.raises(DataError, match=r"2 training image\(s\) cannot fill a minibatch of 3"):
        TrainingOrder(np.ones(2, bool), 3)


# -- examples ------------------------------------------------------------------------

def record(i, width, height, boxes=((1, 1, 5, 5),), labels=(1,), difficult=None, path="x"):
    difficult = [False] * len(labels) if difficult is None else difficult
    return ImageRecord(str(i), path, width, height, np.array(boxes, np.float32).reshape(-1, 4),
                       labels, difficult)


def test_entries_originals_then_flipped_copies():
    records = [record(0, 10, 8), record(1, 8, 10), record(2, 9, 9)]
    entries = select_entries(records)
    np.testing.assert_array_equal(entries.record, [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(entries.flipped, [False] * 3 + [True] * 3)
    np.testing.assert_array_equal(entries.horizontal, [True, False, True] * 2)
    assert len(select_entries(records, use_flipped=False)) == 3


def test_entries_drop_difficult_objects_and_images_left_without_boxes():
    records = [record(0, 10, 8, boxes=[(0, 0, 3, 3), (1, 1, 4, 4)], labels=[1, 2],
                      difficult=[True, False]),
               record(1, 10, 8, boxes=[(0, 0, 3, 3)], labels=[1], difficult=[True]),
               record(2, 10, 8, boxes=np.zeros((0, 4)), labels=[])]
    entries = select_entries(records, use_flipped=False)
    np.testing.assert_array_equal(entries.record, [0])
    assert entries.skipped == ["1", "2"]
    np.testing.assert_array_equal(entries.boxes[0], [[1, 1, 4, 4]])
    np.testing.assert_array_equal(entries.labels[0], [2])
    kept = select_entries(records, use_flipped=False, use_difficult=True)
    np.testing.assert_array_equal(kept.record, [0, 1])
    assert len(kept.labels[0]) == 2


def test_precomputed_form_keeps_images_without_boxes_only_for_background():
    records = [record(0, 10, 8, boxes=np.zeros((0, 4)), labels=[]), record(1, 10, 8)]
    proposals = [np.array([[0, 0, 4, 4]], np.float32), np.zeros((0, 4), np.float32)]
    entries = select_entries(records, has_rpn=False, proposals=proposals, use_flipped=False)
    assert entries.skipped == ["0"]                       # bg_thresh_lo 0.1: no background
    entries = select_entries(records, has_rpn=False, proposals=proposals, use_flipped=False,
                             bg_thresh_lo=0.0)
    np.testing.assert_array_equal(entries.record, [0, 1])


# -- building minibatches ---------------------------------------------------------------

@pytest.fixture()
def images(tmp_path):
    """Three small PNG images (landscape, portrait, landscape) with boxes."""
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (30, 40), (50, 20)]
    records = []
    for i, (w, h) in enumerate(sizes):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        boxes = np.array([[2, 3, 15, 20], [w - 12, h - 10, w - 1, h - 1]], np.float32)
        records.append(record(i, w, h, boxes=boxes, labels=[1 + i % 3, 3], path=str(path)))
    return records


def plan_for(examples, seed=(1, 2, 0, 0)):
    from layers.input_pipeline.minibatch import BatchPlan
    return BatchPlan(tuple(examples), 0, 0, 0, len(examples), seed)


def test_end_to_end_batch_of_a_flipped_image(images):
    entries = select_entries(images)                      # examples 3..5 are the flips
    build = MinibatchBuilder(images, entries, scales=(60,), max_size=1000)
    batch = build(plan_for([4]))                          # record 1 (30 x 40), flipped
    assert tuple(batch) == E2E_TOPS
    scale = 60 / 30
    assert batch["data"].shape == (1, 3, 80, 60)
    np.testing.assert_allclose(batch["im_info"], [[80, 60, scale]])
    rec = images[1]
    expected = []
    for (x1, y1, x2, y2), label in zip(rec.boxes, rec.labels):
        expected.append([(rec.width - x2 - 1) * scale, y1 * scale, (rec.width - x1 - 1) * scale,
                         y2 * scale, label])
    np.testing.assert_allclose(batch["gt_boxes"], expected)
    # the image is mirrored: the scaled image of the original, reversed left to right
    plain = build(plan_for([1]))
    np.testing.assert_allclose(batch["data"], plain["data"][..., ::-1], atol=1e-3)


def test_random_scale_per_image_from_the_plan_seed(images):
    entries = select_entries(images, use_flipped=False)
    build = MinibatchBuilder(images, entries, scales=(20, 30, 40), max_size=1000)
    shorter = set()
    for cursor in range(12):
        batch = build(plan_for([0], seed=(5, 2, 0, cursor)))
        shorter.add(int(min(batch["data"].shape[2:])))
        again = build(plan_for([0], seed=(5, 2, 0, cursor)))
        np.testing.assert_array_equal(batch["data"], again["data"])
    assert shorter == {20, 30, 40}
    test_build = MinibatchBuilder(images, entries, scales=(20, 30, 40), random_scales=False)
    assert min(test_build(plan_for([0]))["data"].shape[2:]) == 20


def test_size_mismatch_names_the_file(images):
    images[0].width = 41
    build = MinibatchBuilder(images, select_entries(images), scales=(30,))
    with pytest.raises(DataError, match=r"im0\.png' is 40 x 30 pixels .* annotation says 41 x 30"):
        build(plan_for([0]))


def proposals_for(records, count=40, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for r in records:
        x1 = rng.uniform(0, r.width * 0.6, count)
        y1 = rng.uniform(0, r.height * 0.6, count)
        x2 = np.minimum(x1 + rng.uniform(2, r.width * 0.6, count), r.width - 1)
        y2 = np.minimum(y1 + rng.uniform(2, r.height * 0.6, count), r.height - 1)
        boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
        out.append(np.concatenate([boxes, r.boxes + 0.5]))    # some foreground too
    return out


SAMPLING = ProposalTargetCreator(4, batch_size=16, fg_fraction=0.25, fg_thresh=0.5,
                                 bg_thresh_hi=0.5, bg_thresh_lo=0.0, normalize=True,
                                 means=[0, 0, 0, 0], stds=[0.1, 0.1, 0.2, 0.2])


def test_precomputed_batch_samples_rois_per_image(images):
    proposals = proposals_for(images)
    entries = select_entries(images, has_rpn=False, proposals=proposals, bg_thresh_lo=0.0)
    build = MinibatchBuilder(images, entries, scales=(60,), proposals=proposals,
                             target_creator=SAMPLING, tops=ROI_TOPS)
    batch = build(plan_for([0, 5]))                       # record 0, and record 2 flipped
    assert tuple(batch) == ROI_TOPS
    assert batch["data"].shape[0] == 2
    rois, labels = batch["rois"], batch["labels"]
    assert rois.shape == (32, 5) and labels.shape == (32,)
    assert batch["bbox_targets"].shape == (32, 16)
    for image, (index, flipped) in enumerate([(0, False), (2, True)]):
        rec = images[index]
        mine = rois[:, 0] == image
        assert mine.sum() == 16
        scale = 60 / min(rec.width, rec.height)
        gt = rec.boxes.astype(np.float64)
        props = proposals[index].astype(np.float64)
        if flipped:
            gt = np.stack([rec.width - gt[:, 2] - 1, gt[:, 1], rec.width - gt[:, 0] - 1,
                           gt[:, 3]], 1)
            props = np.stack([rec.width - props[:, 2] - 1, props[:, 1],
                              rec.width - props[:, 0] - 1, props[:, 3]], 1)
        boxes = rois[mine, 1:] / scale
        candidates = np.concatenate([props, gt])
        # every RoI is a (scaled) proposal or gt box of its own image
        distance = np.abs(boxes[:, None, :] - candidates[None]).max(axis=2).min(axis=1)
        assert distance.max() < 1e-3
        overlaps = bbox_overlaps(boxes, gt).max(axis=1)
        fg = overlaps >= 0.5
        assert fg.sum() == 4                              # round(0.25 * 16)
        assert np.all(labels[mine][fg] > 0) and np.all(labels[mine][~fg] == 0)
        assert np.all(fg[:4])                             # foreground first
        weights = batch["bbox_inside_weights"][mine]
        np.testing.assert_array_equal(weights.sum(axis=1), np.where(fg, 4, 0))
        np.testing.assert_array_equal(batch["bbox_outside_weights"][mine], weights)


def test_builder_output_is_deterministic(images):
    proposals = proposals_for(images)
    entries = select_entries(images, has_rpn=False, proposals=proposals, bg_thresh_lo=0.0)
    first = MinibatchBuilder(images, entries, scales=(30, 40), proposals=proposals,
                             target_creator=SAMPLING, tops=ROI_TOPS)(plan_for([1, 2]))
    second = MinibatchBuilder(images, entries, scales=(30, 40), proposals=proposals,
                              target_creator=SAMPLING, tops=ROI_TOPS)(plan_for([1, 2]))
    for name in ROI_TOPS:
        np.testing.assert_array_equal(first[name], second[name])


# -- prefetching ---------------------------------------------------------------------

def numbered_plans(log):
    i = 0
    while True:
        log.append((i, threading.get_ident()))
        yield i
        i += 1


def slow_square(plan):
    rng = np.random.default_rng(plan)
    return plan * plan + rng.integers(1000)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_prefetch_gives_the_synchronous_results(depth):
    sync = Prefetcher(slow_square, numbered_plans([]), depth=0)
    log = []
    with Prefetcher(slow_square, numbered_plans(log), depth=depth) as threaded:
        assert threaded.threaded and not sync.threaded
        for _ in range(10):
            assert threaded.get() == sync.get()
        # plans are drawn in the calling thread, at most depth + 1 ahead
        assert {ident for _, ident in log} == {threading.get_ident()}
        assert len(log) <= 10 + depth + 1


def test_worker_errors_are_raised_by_get():
    def build(plan):
        if plan == 2:
            raise DataError("cannot read image '/data/broken.jpg': truncated")
        return plan

    with Prefetcher(build, iter(range(5)), depth=2) as prefetcher:
        assert prefetcher.get() == (0, 0)
        assert prefetcher.get() == (1, 1)
        with pytest.raises(DataError, match="broken.jpg") as error:
            prefetcher.get()
        assert any(frame.name == "build" for frame in
                   __import__("traceback").extract_tb(error.value.__traceback__))


def test_exhausted_plans_stop_iteration():
    with Prefetcher(lambda p: p, iter(range(2)), depth=2) as prefetcher:
        assert [prefetcher.get()[1] for _ in range(2)] == [0, 1]
        with pytest.raises(StopIteration):
            prefetcher.get()


def test_close_stops_and_joins_the_thread():
    started = threading.Event()

    def build(plan):
        started.set()
        return plan

    prefetcher = Prefetcher(build, numbered_plans([]), depth=2)
    started.wait(5)
    thread = prefetcher._thread
    assert thread.daemon and thread.is_alive()
    prefetcher.close()
    assert not thread.is_alive()
    prefetcher.close()                                   # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        prefetcher.get()


def test_a_dropped_prefetcher_stops_its_thread():
    prefetcher = Prefetcher(lambda p: p, numbered_plans([]), depth=2)
    thread = prefetcher._thread
    del prefetcher
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()


def test_prefetched_minibatches_equal_synchronous_ones(images):
    entries = select_entries(images)
    order = TrainingOrder(entries.horizontal, 1, seed=4)
    build = MinibatchBuilder(images, entries, scales=(20, 30), max_size=100)
    sync = Prefetcher(build, order.plans(), depth=0)
    with Prefetcher(build, order.plans(), depth=3) as threaded:
        for _ in range(8):
            (plan_a, a), (plan_b, b) = sync.get(), threaded.get()
            assert plan_a == plan_b
            for name in E2E_TOPS:
                np.testing.assert_array_equal(a[name], b[name])


def test_pixel_means_used(images):
    entries = select_entries(images, use_flipped=False)
    batch = MinibatchBuilder(images, entries, scales=(30,))(plan_for([0]))
    assert batch["data"].mean() == pytest.approx(127.5 - np.mean(PIXEL_MEANS), abs=3)
