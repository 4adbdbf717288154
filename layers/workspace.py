"""Scratch memory shared by layers: ``Workspace``.

Convolution (and any layer with large temporaries: padded image copies,
column matrices, chunk buffers) asks its ``self.workspace`` for scratch
arrays by name instead of holding buffers of its own. Every Layer gets a
private Workspace; a Net assigns one shared Workspace to all its layers
(``layer.workspace = shared``), so the scratch of the whole net is that of
its most demanding layer instead of the sum over layers.

Contract: an array returned by ``array`` / ``zeros`` is valid only until
the calling layer's ``forward`` / ``backward`` returns (the next layer may
overwrite it), and its contents are undefined when handed out: whatever
must be zero is zeroed by the caller, in each call. Two names never share
memory, so one call may hold several buffers at once. What must live from
forward to backward is not scratch and does not belong here. Threads
working side by side (``layers.cpu_threads``) take their scratch from
``workspace.thread(i)``, a child Workspace of their own.
"""
import numpy as np


class Workspace:
    """Named scratch arrays on one device; each name keeps one flat buffer
    per dtype that grows to the largest request and is reused.

    ``device``: a ``netdef.device.Device`` (its ``xp`` allocates, resolved
    on first use so a CPU workspace never imports CuPy).
    """

    def __init__(self, device=None):
        self.device = device
        self._buffers = {}  # (name, dtype) -> flat array
        self._threads = {}  # index -> Workspace of that worker thread

    def thread(self, index):
        """The child Workspace of worker thread ``index`` (made on first
        use, then kept): the same names there are other buffers, so threads
        working side by side (``layers.cpu_threads``) never share scratch.
        Index 0 is this workspace itself."""
        if index == 0:
            return self
        child = self._threads.get(index)
        if child is None:
            child = self._threads[index] = type(self)(self.device)
        return child

    def _xp(self):
        return np if self.device is None else self.device.xp

    def array(self, name, shape, dtype):
        """A C-contiguous array of ``shape`` and ``dtype`` (contents
        undefined) from the buffer called ``name``."""
        dtype = np.dtype(dtype)
        size = 1
        for n in shape:
            size *= int(n)
        key = (name, dtype)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.size < size:
            # Grow to exactly the largest request so far; the old buffer is
            # freed once no view of it remains.
            buffer = self._xp().empty(max(size, 1), dtype)
            self._buffers[key] = buffer
        return buffer[:size].reshape(shape)

    def zeros(self, name, shape, dtype):
        """Like ``array``, filled with zeros."""
        out = self.array(name, shape, dtype)
        out.fill(0)
        return out

    @property
    def nbytes(self):
        """Bytes held by all buffers, the worker threads' included."""
        return sum(int(b.nbytes) for b in self._buffers.values()) + \
            sum(child.nbytes for child in self._threads.values())

    def clear(self):
        """Release every buffer, the worker threads' included."""
        self._buffers.clear()
        self._threads.clear()
