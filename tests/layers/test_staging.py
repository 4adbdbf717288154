"""layers.input_pipeline.staging: minibatches staged in pinned buffers by the
prefetch thread and copied asynchronously into the top blobs; nothing
changes on the CPU. The GPU side runs on the stand-in CuPy of
bench.standin_cupy, which counts the copies (``h2d``: through CuPy's own
staging in the calling thread; ``h2d_async``: from pinned memory)."""
import numpy as np
import pytest

from bench.standin_cupy import COUNTS, installed
from layers.input_pipeline.prefetch import Prefetcher
from layers.input_pipeline.staging import PinnedStaging, StagedBatch
from netdef.blob import Blob
from netdef.device import CPU, Device, to_numpy

KEYS = ("data", "im_info", "gt_boxes")


def make_batch(plan):
    """A RoIData-like minibatch whose shapes change with ``plan``."""
    rng = np.random.default_rng(plan)
    height, width, boxes = 4 + plan % 3, 5 + plan % 2, plan % 4   # gt_boxes may be empty
    return {"data": rng.standard_normal((1, 3, height, width)).astype(np.float32),
            "im_info": np.array([[height, width, 1.5]]),
            "gt_boxes": rng.uniform(0, 9, (boxes, 5))}


@pytest.fixture
def cupy():
    with installed() as module:
        COUNTS.reset()
        yield module


def gpu_blobs(cupy, dtype):
    return [Blob((1,), dtype=dtype, xp=cupy) for _ in KEYS]


def assert_uploaded(blobs, batch, dtype):
    for blob, key in zip(blobs, KEYS):
        assert blob.shape == batch[key].shape and blob.data.dtype == dtype
        np.testing.assert_array_equal(to_numpy(blob.data), batch[key].astype(dtype))


def test_on_the_cpu_nothing_changes():
    staging = PinnedStaging(CPU, np.float32)
    assert staging.wrap(make_batch) is make_batch
    blobs = [Blob((1,)) for _ in KEYS]
    staging.upload(make_batch(3), zip(KEYS, blobs))
    assert_uploaded(blobs, make_batch(3), np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_staged_batches_are_copied_asynchronously_into_the_blobs(cupy, dtype):
    staging = PinnedStaging(Device("gpu", 0), dtype, slots=3)
    build = staging.wrap(make_batch)
    blobs = gpu_blobs(cupy, dtype)
    for plan in range(7):
        batch = build(plan)
        assert isinstance(batch, StagedBatch)
        assert all(a.dtype == dtype and a.flags.c_contiguous for a in batch.values())
        COUNTS.reset()
        staging.upload(batch, zip(KEYS, blobs))
        total = COUNTS.totals()
        assert (total["h2d_async"], total["h2d"]) == (len(KEYS), 0)
        assert_uploaded(blobs, make_batch(plan), dtype)


def test_a_plain_batch_or_host_blobs_fall_back_to_set_data(cupy):
    staging = PinnedStaging(Device("gpu", 0), np.float32)
    blobs = gpu_blobs(cupy, np.float32)
    staging.upload(make_batch(2), zip(KEYS, blobs))     # built without staging
    assert COUNTS.totals()["h2d"] == len(KEYS) and COUNTS.totals()["h2d_async"] == 0
    assert_uploaded(blobs, make_batch(2), np.float32)


def test_slots_are_reused_and_wait_for_their_last_upload(cupy, monkeypatch):
    allocations = []
    allocate = cupy.cuda.alloc_pinned_memory
    monkeypatch.setattr(cupy.cuda, "alloc_pinned_memory",
                        lambda nbytes: allocations.append(nbytes) or allocate(nbytes))
    staging = PinnedStaging(Device("gpu", 0), np.float32, slots=3)
    build = staging.wrap(lambda plan: make_batch(0))   # one shape throughout
    blobs = gpu_blobs(cupy, np.float32)
    events = []
    for plan in range(9):
        batch = build(plan)
        assert batch.slot == plan % 3
        staging.upload(batch, zip(KEYS, blobs))
        events.append(staging._slots[batch.slot].copied)
    assert len(allocations) == 3 * len(KEYS)            # one buffer per slot and array
    # Each upload's event was waited on when its slot was staged again.
    assert [e.waits for e in events] == [1] * 6 + [0] * 3


def test_through_the_prefetch_thread(cupy):
    staging = PinnedStaging(Device("gpu", 0), np.float32)
    blobs = gpu_blobs(cupy, np.float32)
    with Prefetcher(staging.wrap(make_batch), iter(range(12)), depth=2) as prefetcher:
        for plan in range(12):
            got_plan, batch = prefetcher.get()
            assert got_plan == plan
            staging.upload(batch, zip(KEYS, blobs))
            assert_uploaded(blobs, make_batch(plan), np.float32)
    assert COUNTS.totals()["h2d"] == 0
