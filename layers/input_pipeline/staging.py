"""Minibatch arrays copied to the GPU through page-locked (pinned) memory.

    staging = PinnedStaging(device, dtype)        # device: the net's Device
    build = staging.wrap(build)                   # the prefetch thread stages
    batch = build(plan)                           # arrays now in pinned buffers
    staging.upload(batch, zip(keys, top_blobs))   # main thread: async copies

A copy from ordinary (pageable) host memory cannot run asynchronously:
``cupy.asarray(host)`` (what ``Blob.set_data`` does) first copies the whole
array into a pinned buffer of CuPy's in the calling thread, then copies it
to a new device array, which ``set_data`` copies once more into the blob.
Here the prefetch thread, which built the batch in the background, also
writes it into pinned buffers of ours (converted to the net's dtype), and
``upload`` starts one asynchronous host-to-device copy per array, straight
into the top blob's device array, on the current stream: the main thread
neither copies nor waits, and no temporary device array is made.

Buffers: a ring of ``slots`` sets of pinned buffers (one buffer per array
name, grown when a larger array comes), used in turn by consecutive batches.
A batch's arrays stay valid until ``slots`` batches later; ``slots`` must
exceed the number of batches alive at once (the prefetcher's depth, the one
being built and the one being uploaded: the default is ``DEFAULT_DEPTH + 3``).
Before a slot is written again, the thread waits for the copies of the last
batch uploaded from it (an event recorded at upload; normally long done).

On the CPU, ``wrap`` returns ``build`` itself and ``upload`` is
``Blob.set_data``: nothing changes there.
"""
import threading

import numpy as np

from layers.input_pipeline.prefetch import DEFAULT_DEPTH
from netdef.device import is_gpu_array

__all__ = ["PinnedStaging", "StagedBatch"]


class StagedBatch(dict):
    """A minibatch (name -> array) whose arrays live in pinned slot ``slot``."""

    def __init__(self, arrays, slot):
        super().__init__(arrays)
        self.slot = slot


class _Slot:
    def __init__(self):
        self.buffers = {}    # name -> (pinned memory, its size in bytes)
        self.copied = None   # event recorded after the last upload from this slot


class PinnedStaging:
    """Pinned staging of minibatches for one device and dtype (see the
    module docstring). ``device``: a ``netdef.device.Device``."""

    def __init__(self, device, dtype, slots=DEFAULT_DEPTH + 3):
        self.device = device
        self.dtype = np.dtype(dtype)
        self._slots = [_Slot() for _ in range(int(slots))]
        self._next = 0
        self._lock = threading.Lock()

    def wrap(self, build):
        """``build`` followed by ``stage`` on the GPU; ``build`` on the CPU."""
        if not self.device.is_gpu:
            return build

        def build_and_stage(plan):
            return self.stage(build(plan))
        return build_and_stage

    def stage(self, batch):
        """A StagedBatch with the values of ``batch`` (name -> host array)
        in the next slot's pinned buffers, as C-contiguous arrays of the
        staging dtype. Called by the prefetch thread."""
        with self._lock:
            index, self._next = self._next, (self._next + 1) % len(self._slots)
        slot = self._slots[index]
        with self.device.context():
            if slot.copied is not None:
                slot.copied.synchronize()   # the slot's last upload has landed
                slot.copied = None
            staged = {name: self._into(slot, name, array) for name, array in batch.items()}
        return StagedBatch(staged, index)

    def _into(self, slot, name, array):
        array = np.asarray(array)
        nbytes = array.size * self.dtype.itemsize
        memory, capacity = slot.buffers.get(name, (None, 0))
        if memory is None or capacity < nbytes:
            capacity = max(nbytes, 1)
            memory = self.device.xp.cuda.alloc_pinned_memory(capacity)
            slot.buffers[name] = (memory, capacity)
        view = np.frombuffer(memory, self.dtype, array.size).reshape(array.shape)
        view[...] = array
        return view

    def upload(self, batch, pairs):
        """Copy each ``batch[name]`` into its blob, for ``(name, blob)`` in
        ``pairs``, reshaping the blob to the array's shape: asynchronous
        copies from the pinned buffers when ``batch`` is a StagedBatch and
        the blobs live on the GPU, ``Blob.set_data`` otherwise."""
        pairs = list(pairs)
        staged = isinstance(batch, StagedBatch) and all(
            is_gpu_array(blob.data) for _, blob in pairs)
        if not staged:
            for name, blob in pairs:
                blob.set_data(batch[name])
            return
        with self.device.context():
            stream = self.device.xp.cuda.get_current_stream()
            for name, blob in pairs:
                array = batch[name]
                blob.reshape(array.shape)
                blob.data.set(array, stream=stream)
            self._slots[batch.slot].copied = stream.record()
