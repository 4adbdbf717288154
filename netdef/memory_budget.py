"""The memory budget of a Net: refuse a shape before allocating it.

A Net owns one ``MemoryBudget``. Every blob the Net creates (the tops) and
every parameter blob its layers create take their storage through a
``BlobAccount``, which the budget charges *before* the array is allocated;
a request that would bring the net over the limit raises
``MemoryBudgetError`` naming the layer, the blob, the shape and the bytes,
and nothing is allocated.

What is counted (what the Net will allocate):

- data of every top blob, at its current shape (an in-place top is its
  bottom's Blob: counted once), and of every parameter blob, when they are
  sized (build, ``Net.reshape``, ``set_input_arrays``, a user's
  ``blob.reshape``); a reshape replaces the blob's previous charge;
- while a parameter blob is filled, the float64 values the filler draws
  (``netdef.fillers`` returns float64): checked, not kept;
- diffs, when a blob allocates one (charged then), and, once the build has
  planned backward, the diffs that backward will allocate (blobs on the
  backward path, learnable parameters) in a TRAIN net or one that forces
  backward (a TEST net is run forward; its diffs are charged if a backward
  allocates them), plus the scratch of the hungriest layer (one
  ``layers.workspace.Workspace`` serves all layers; a layer states its need
  with ``scratch_bytes()``, see ``layers/conv.py``): ``check_plan`` refuses
  a net whose whole need is over the limit. A diff freed by a reshape stays
  charged at its old size until backward takes it again (charged then).

Not counted: buffers a layer allocates itself rather than through a Blob
(Pooling's argmax, a data layer's prefetch), the values a DummyData filler
draws, and what a solver adds (its history); a MemoryError raised while a
layer is set up or reshaped is still reported as a ``MemoryBudgetError``
naming the layer.

Under the lean memory plan (``netdef.memory``) the blobs are still built,
and resized by ``Net.reshape``, each with its own storage before the plan
takes that storage into its pool, so the peak of a build or a reshape is the
same sum; the pool's later passes reuse those buffers. The budget charges
the blobs the plan manages through the same accounts (wrapping the plan's
pool), so their sizes stay counted once each.

The limit (``resolve_limit``): ``Net(..., memory_limit=BYTES)``, else the
environment variable ``NETDEF_MEMORY_LIMIT`` (bytes, or with a K/M/G/T
suffix, powers of 1024), else the default: on the CPU the machine's
available memory (``MemAvailable`` of /proc/meminfo, lowered to a cgroup's
remaining limit when there is one; free physical pages where /proc is
absent) divided among the processes of a data-parallel run on this machine
(OMPI_COMM_WORLD_LOCAL_SIZE, MPI_LOCALNRANKS, SLURM_NTASKS_PER_NODE or
LOCAL_WORLD_SIZE, else 1); on a GPU its free memory plus the free blocks
of CuPy's memory pool.
"""
import contextlib
import os
import re

import numpy as np

from .blob import Blob
from .errors import NetDefinitionError

ENV_LIMIT = "NETDEF_MEMORY_LIMIT"
LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                        "SLURM_NTASKS_PER_NODE", "LOCAL_WORLD_SIZE")
FALLBACK_BYTES = 8 << 30  # where the machine's memory cannot be read
SUFFIXES = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}
HOW_TO_CHANGE = f"change it with Net(..., memory_limit=BYTES) or {ENV_LIMIT}=BYTES (K/M/G/T suffix)"


class MemoryBudgetError(NetDefinitionError):
    """A blob, parameter or the whole net needs more memory than the budget."""


def human_bytes(n):
    """``n`` bytes in binary units, e.g. '10.9 TiB'."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def parse_bytes(text, what):
    """Bytes from an int or a text such as '512M', '8G', '1.5T', '4096'
    (suffixes are powers of 1024, an optional 'B' or 'iB' may follow)."""
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        value = int(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.I)
        if match is None:
            raise NetDefinitionError(
                f"{what}: expected a number of bytes, optionally with a K/M/G/T suffix "
                f"(e.g. 8G), found {text!r}")
        value = int(float(match.group(1)) * 1024 ** SUFFIXES[match.group(2).upper()])
    if value <= 0:
        raise NetDefinitionError(f"{what}: expected a positive number of bytes, found {text!r}")
    return value


def local_process_count(environ=os.environ):
    """(processes of a data-parallel run on this machine, the variable that
    says so or None)."""
    for name in LOCAL_SIZE_VARIABLES:
        match = re.match(r"\s*(\d+)", environ.get(name, ""))
        if match and int(match.group(1)) >= 1:
            return int(match.group(1)), name
    return 1, None


def _read_int(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def host_available_bytes(meminfo="/proc/meminfo", cgroup="/sys/fs/cgroup"):
    """(bytes of memory available to this process, where the figure comes from)."""
    available, source = None, "MemAvailable in /proc/meminfo"
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            source = "free physical pages (sysconf)"
        except (ValueError, OSError, AttributeError):
            return FALLBACK_BYTES, "a fixed 8 GiB (the machine's memory could not be read)"
    # A container's cgroup (v2) may allow less than the machine has free.
    limit, used = _read_int(f"{cgroup}/memory.max"), _read_int(f"{cgroup}/memory.current")
    if limit is not None and used is not None and limit - used < available:
        available, source = max(limit - used, 0), "the cgroup's memory.max - memory.current"
    return available, source


def gpu_free_bytes(device):
    """(free bytes on ``device``'s GPU plus CuPy's pooled free blocks, the
    source), or None where the GPU cannot say."""
    cupy = device.xp
    try:
        with device.context():
            free, _ = cupy.cuda.runtime.memGetInfo()
    except Exception:  # a driver or CuPy that cannot answer: use the host's figure
        return None
    try:
        pooled = int(cupy.get_default_memory_pool().free_bytes())
    except Exception:  # no pool (CuPy's allocator switched off)
        pooled = 0
    return int(free) + pooled, f"GPU {device.index}'s free memory (cudaMemGetInfo + CuPy's pool)"


def default_limit(device, environ=os.environ):
    """(bytes, the text that says how they were chosen)."""
    if device is not None and device.is_gpu:
        found = gpu_free_bytes(device)
        if found is not None:
            return found[0], f"the default: {found[1]}, {human_bytes(found[0])}"
    available, source = host_available_bytes()
    processes, variable = local_process_count(environ)
    share = f" / {processes} processes ({variable})" if variable else ""
    return max(available // processes, 1), \
        f"the default: {human_bytes(available)} available ({source}){share}"


def resolve_limit(memory_limit, device, environ=os.environ):
    """(limit in bytes, its source): the option, the environment, the default."""
    if memory_limit is not None:
        value = parse_bytes(memory_limit, "Net memory_limit")
        return value, f"memory_limit={memory_limit!r} given to the Net"
    if environ.get(ENV_LIMIT, "").strip():
        text = environ[ENV_LIMIT]
        return parse_bytes(text, f"environment variable {ENV_LIMIT}"), f"{ENV_LIMIT}={text}"
    return default_limit(device, environ)


def describe(shape, dtype):
    """'shape (3, 4) float32' for messages."""
    return f"shape {tuple(int(s) for s in shape)} {np.dtype(dtype).name}"


def array_bytes(shape, dtype):
    """Bytes of an array of ``shape`` and ``dtype`` (Python ints: no overflow)."""
    count = 1
    for n in shape:
        count *= int(n)
    return count * np.dtype(dtype).itemsize


class MemoryBudget:
    """The running total of a Net's storage against its limit.

    ``limit``: bytes; ``source``: how the limit was chosen (quoted in every
    refusal); ``where``: the context of the refusals (the Net's file, and
    during a layer's setup or reshape that layer, see ``inside``).
    """

    def __init__(self, limit, source, where=""):
        self.limit, self.source, self.where = int(limit), source, where
        self._context = None
        self.total = 0  # bytes charged to accounts now

    @contextlib.contextmanager
    def inside(self, context):
        """Name ``context`` (e.g. "layer 'conv1' (type Convolution)") in
        refusals raised inside the ``with`` block, and turn a MemoryError
        raised there into a ``MemoryBudgetError``."""
        saved, self._context = self._context, context
        try:
            yield
        except MemoryError as exc:
            # An allocation the accounts do not see (a layer's own buffer)
            # that the allocator refused: named, not a raw MemoryError.
            reason = str(exc) or "MemoryError"
            raise MemoryBudgetError(
                f"{self._prefix()}: the allocator could not provide memory ({reason}) "
                f"with {human_bytes(self.total)} charged to the net; its memory budget is "
                f"{human_bytes(self.limit)} ({self.source}; {HOW_TO_CHANGE})") from exc
        finally:
            self._context = saved

    def _prefix(self):
        return ": ".join(part for part in (self.where, self._context) if part)

    def refuse(self, what, nbytes, total):
        """The error for ``what`` needing ``nbytes``, bringing the net to ``total``."""
        return MemoryBudgetError(
            f"{self._prefix()}: {what} needs {human_bytes(nbytes)} ({nbytes:,} bytes); the net "
            f"would then need {human_bytes(total)}, over its memory budget of "
            f"{human_bytes(self.limit)} ({self.source}; {HOW_TO_CHANGE})")

    def charge(self, account, kind, shape, dtype):
        """Charge ``account`` for its ``kind`` ("data" or "diff") of
        ``shape``/``dtype`` in place of what it held; refused when the new
        total is over the limit. Call before allocating."""
        nbytes = array_bytes(shape, dtype)
        total = self.total - account.charged.get(kind, 0) + nbytes
        if total > self.limit:
            raise self.refuse(f"the {kind} of {account.label}, {describe(shape, dtype)},",
                              nbytes, total)
        account.charged[kind] = nbytes
        self.total = total

    def check_extra(self, what, nbytes):
        """Refuse when ``nbytes`` more than the charged total is over the
        limit (what a pass will allocate later: diffs, scratch). ``what``
        may be a function making the text, called only to refuse."""
        if self.total + nbytes > self.limit:
            raise self.refuse(what() if callable(what) else what, nbytes, self.total + nbytes)


class BlobAccount:
    """A Blob's storage source (``blob.pool``, the protocol of
    ``netdef.memory.StoragePool``: ``take(shape, dtype, zero)`` and
    ``give(array)``) that asks the budget first. Storage comes from
    ``inner`` (a lean plan's pool) when given, else fresh zeros, as for a
    Blob without a pool. Blob takes its data unzeroed and its diff zeroed,
    which is how the account tells them apart."""

    def __init__(self, budget, label, xp, inner=None):
        self.budget, self.label, self.xp, self.inner = budget, label, xp, inner
        self.charged = {}  # "data" / "diff" -> bytes

    @classmethod
    def attach(cls, blob, budget, label):
        """Give ``blob`` (as created: its data allocated, its diff not) an
        account charged for that data; its later storage is checked first."""
        account = cls(budget, label, blob.xp)
        budget.charge(account, "data", blob.shape, blob.dtype)
        blob.pool = account
        return account

    def take(self, shape, dtype, zero):
        self.budget.charge(self, "diff" if zero else "data", shape, dtype)
        if self.inner is not None:
            return self.inner.take(shape, dtype, zero)
        return self.xp.zeros(tuple(shape), dtype=dtype)

    def give(self, array):
        if self.inner is not None:
            self.inner.give(array)


def param_blob_maker(budget, layer):
    """A ``param_blob_factory(shape)`` for ``layer`` (see
    ``Layer.new_param_blob``) whose blobs are charged to ``budget`` before they are
    allocated; the float64 values a filler draws for the blob (then casts
    into it) are checked with it."""
    made = [0]

    def make(shape):
        shape = tuple(int(s) for s in shape)
        label = f"parameter blob {made[0]}"
        made[0] += 1
        budget.check_extra(lambda: f"{label}, {describe(shape, layer.dtype)}, with the float64 "
                                   "values its filler draws,",
                           array_bytes(shape, layer.dtype) + array_bytes(shape, np.float64))
        blob = Blob((), dtype=layer.dtype, xp=layer.device.xp)
        BlobAccount.attach(blob, budget, label)
        blob.reshape(shape)
        return blob

    return make


def _diffs_to_come(net):
    """(label, blob, bytes) of every diff backward will allocate that is not
    allocated (charged) yet: bottoms it propagates to, tops of layers that
    run backward, learnable parameters with a non-zero lr_mult."""
    pending = {}
    for i, lp in enumerate(net.layer_params):
        pairs = [(name, blob) for name, blob, needs in
                 zip(lp.bottom, net.bottom_blobs[i], net.bottom_need_backward[i]) if needs]
        if net.layer_need_backward[i]:
            pairs += list(zip(lp.top, net.top_blobs[i]))
        for name, blob in pairs:
            pending[id(blob)] = (f"blob '{name}'", blob)
    for p in net.learnable_params:
        if p.lr_mult != 0:
            pending[id(p.blob)] = (f"parameter blob {p.index} of layer '{p.layer}'", p.blob)
    found = []
    for label, blob in pending.values():
        account = blob.pool if isinstance(blob.pool, BlobAccount) else None
        if account is None or "diff" not in account.charged:
            found.append((label, blob, array_bytes(blob.shape, blob.dtype)))
    return found


def check_plan(budget, net):
    """Refuse ``net`` (built, backward planned) when the storage charged so
    far plus the diffs its backward will allocate (TRAIN, or forced
    backward) plus the scratch of its hungriest layer
    (``layer.scratch_bytes()``, for layers that state it) is over the
    budget; the message names the largest of them."""
    trains = net.phase == "TRAIN" or net.force_backward
    diffs = _diffs_to_come(net) if trains else []
    scratch = [(f"scratch of layer '{name}'", layer.scratch_bytes())
               for name, layer in net.layer_dict.items() if hasattr(layer, "scratch_bytes")]
    largest_scratch = max(scratch, key=lambda s: s[1], default=("no scratch", 0))
    extra = sum(n for _, _, n in diffs) + largest_scratch[1]
    if budget.total + extra <= budget.limit:
        return
    named = [(f"the diff of {label} ({describe(blob.shape, blob.dtype)})", n)
             for label, blob, n in diffs]
    largest = max(named + [largest_scratch], key=lambda d: d[1])
    budget.check_extra(
        f"backward's gradients ({len(diffs)} diff(s)) and the shared scratch "
        f"({largest_scratch[0]}; the largest of them: {largest[0]}, {human_bytes(largest[1])})",
        extra)
