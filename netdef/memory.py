"""The lean memory plan: blobs share storage when their lifetimes do not
overlap (a liveness plan over the ordered steps of the graph plan).

By default a Net keeps Caffe's promise: every named blob's data, and after a
backward its diff, stays readable. ``Net(..., keep=[names])`` chooses the
lean plan instead: only the named blobs (and the net's inputs and outputs,
and the tops of layers without bottoms: data layers, Parameter) keep that
promise; every other blob takes its data and diff from one
``StoragePool`` and gives them back as soon as no later step reads them, so
a blob that was given back reads NaN (``Blob.is_released``) until the next
pass writes it.

Lifetimes, per storage group (a blob and the blobs that are views of it:
the tops of a Split that shares its bottom, Reshape and Flatten tops):
- data: from the step that first writes it to the last step that reads it
  in forward; when a step using it needs backward, until that step's
  backward has run (backward reads the activations it saved);
- diff (per blob): from the first backward that writes it to the backward
  of the step that first wrote the blob in forward (its producer), which is
  the last to read it.
"""
import weakref

import numpy as np

from layers.fused import SharedSplit
from netdef.errors import NetDefinitionError

# Layer types whose top is a view of the bottom's data.
VIEW_LAYERS = ("Reshape", "Flatten")


class StoragePool:
    """Flat byte buffers on one device, handed out as typed views and
    given back for reuse. A buffer dropped without being given back is
    simply freed (the pool holds no reference to buffers in use)."""

    def __init__(self, xp):
        self.xp = xp
        self.free = []                              # buffers ready for reuse
        self.taken = weakref.WeakValueDictionary()  # id -> buffer in use
        self.allocated_bytes = 0                    # total ever allocated

    def take(self, shape, dtype, zero):
        """An array of ``shape`` and ``dtype`` (zeroed when ``zero``)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        buffer = self._fitting(nbytes)
        self.taken[id(buffer)] = buffer
        array = buffer[:nbytes].view(dtype).reshape(shape)
        if zero:
            array.fill(0)
        return array

    def _fitting(self, nbytes):
        """The smallest free buffer of at least ``nbytes``, else a new one
        (first dropping the largest free buffer that is too small, so that
        shapes that keep growing do not pile up buffers)."""
        # Indices, not list.remove: arrays compare element-wise.
        fits = [i for i, b in enumerate(self.free) if b.size >= nbytes]
        if fits:
            return self.free.pop(min(fits, key=lambda i: self.free[i].size))
        if self.free:
            largest = max(range(len(self.free)), key=lambda i: self.free[i].size)
            self.free.pop(largest)
        self.allocated_bytes += nbytes
        return self.xp.empty(max(nbytes, 1), dtype=np.uint8)

    def give(self, array):
        """Return the buffer under ``array`` (a view from ``take``); arrays
        that did not come from this pool, or were given already, are ignored."""
        base = array
        while base is not None:
            if self.taken.get(id(base)) is base:
                del self.taken[id(base)]
                self.free.append(base)
                return
            base = base.base


class MemoryPlan:
    """Which blobs give back their data and diffs after which step.

    ``net``: a built Net whose ``steps`` are set; ``keep``: names of the
    blobs that stay readable (the net's inputs and outputs always do).
    """

    def __init__(self, net, keep):
        self.pool = StoragePool(net.device.xp)
        missing = sorted(set(keep) - set(net.blobs))
        if missing:
            raise NetDefinitionError(
                f"{net.source}: keep names blob(s) {', '.join(missing)} that the net does not "
                f"have in phase {net.phase} (blobs: {', '.join(net.blobs)})")
        kept = {id(net.blobs[n]) for n in set(keep) | set(net.inputs) | set(net.outputs)}
        # Tops of layers without bottoms stay out of the plan too, like the
        # inputs: data layers size them once in setup and may rewrite them
        # only when they change (a constant DummyData top), and a Parameter
        # layer's top is its weights.
        kept |= {id(top) for bottoms, tops in zip(net.bottom_blobs, net.top_blobs)
                 if not bottoms for top in tops}
        groups = _storage_groups(net)
        self._users = _steps_by_blob(net)
        n = len(net.steps)
        self.data_after_forward = [[] for _ in range(n)]
        self.data_after_backward = [[] for _ in range(n)]
        self.diff_after_backward = [[] for _ in range(n)]
        for members in groups.values():
            if any(id(b) in kept for b in members):
                continue
            for blob in members:
                blob.pool = self.pool
            self._plan_data(net, members)
            for blob in members:
                self._plan_diff(net, blob)
        self.groups = [g for g in groups.values() if g[0].pool is self.pool]
        # Storage from the build goes now: the first pass takes from the pool.
        self.release_all()

    def _plan_data(self, net, members):
        users = sorted({s for blob in members for s in self._users.get(id(blob), ())})
        if not users:
            return
        backward_users = [s for s in users if net.steps[s].need_backward]
        if backward_users:
            self.data_after_backward[min(backward_users)].append(members)
        else:
            self.data_after_forward[max(users)].append(members)

    def _plan_diff(self, net, blob):
        users = self._users.get(id(blob))
        if users:
            self.diff_after_backward[users[0]].append(blob)

    def release_all(self):
        """Give back the storage of every blob the plan manages (after the
        build, and after ``Net.reshape``, which sizes every blob at once)."""
        for members in self.groups:
            _release_group(members)

    def after_forward(self, step_index):
        for members in self.data_after_forward[step_index]:
            _release_group(members)

    def after_backward(self, step_index):
        for members in self.data_after_backward[step_index]:
            _release_group(members)
        for blob in self.diff_after_backward[step_index]:
            blob.release_diff()

    def summary(self):
        shared = sum(len(g) for g in self.data_after_forward + self.data_after_backward)
        return (f"memory plan: lean, {shared} storage group(s) share one pool; "
                f"{sum(len(d) for d in self.diff_after_backward)} diff(s) given back in backward")


def _release_group(members):
    for blob in members:
        blob.release_data()


def _storage_groups(net):
    """id(root blob) -> [root and the blobs that are views of its data]."""
    root = {}

    def find(blob):
        while id(blob) in root and root[id(blob)] is not blob:
            blob = root[id(blob)]
        return blob

    for blob in net.blobs.values():
        root.setdefault(id(blob), blob)
    for step in net.steps:
        for i in step.indices:
            lp = net.layer_params[i]
            shares = lp.type in VIEW_LAYERS or isinstance(step, SharedSplit)
            if shares:
                bottom = find(net.bottom_blobs[i][0])
                for top in net.top_blobs[i]:
                    root[id(find(top))] = bottom
    groups = {}
    for blob in net.blobs.values():
        groups.setdefault(id(find(blob)), []).append(blob)
    return groups


def _steps_by_blob(net):
    """id(blob) -> the indices, in order, of the steps that read or write it."""
    users = {}
    for s, step in enumerate(net.steps):
        for i in step.indices:
            for blob in net.bottom_blobs[i] + net.top_blobs[i]:
                steps = users.setdefault(id(blob), [])
                if not steps or steps[-1] != s:
                    steps.append(s)
    return users
