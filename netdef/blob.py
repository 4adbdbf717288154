"""Blob: the data and diff arrays of one tensor, on one device."""
import numpy as np

from .device import array_module, to_numpy


def released_array(shape, dtype, xp):
    """A stand-in for storage that a lean memory plan gave to another blob:
    ``shape`` and ``dtype`` are kept, every element reads NaN, and writing
    raises on the CPU (a read-only view). It costs no memory (one element,
    broadcast)."""
    return xp.broadcast_to(xp.full((), np.nan, dtype=dtype), tuple(shape))


class Blob:
    """``data`` and ``diff`` arrays of one shape, dtype and device.

    Layers that work in place share one Blob object between a bottom and a
    top. ``reshape`` keeps the arrays when the shape is unchanged, so buffers
    are not reallocated on every forward pass.

    The diff is allocated (zeroed) the first time it is read or written, so
    forward-only use and blobs nothing differentiates cost no diff memory.
    A lean memory plan may hand a blob's storage to another blob between
    uses (``release_data`` / ``release_diff``); it then reads NaN until a
    producer writes it again.

    A parameter blob may instead ``adopt`` storage that a solver owns (views
    into its flat buffers): from then on its arrays stay those views.
    """

    def __init__(self, shape=(), dtype=np.float32, xp=np):
        self.xp = xp
        self.dtype = np.dtype(dtype)
        # xp.zeros, not zeros_like: fresh zero pages come from the OS lazily,
        # so building a large net does not write every byte of every blob.
        self._data = xp.zeros(tuple(int(s) for s in shape), dtype=self.dtype)
        self._diff = None
        self._released = False
        self._adopted = False
        # Where storage comes from: None (fresh zeros) or a storage pool
        # with ``take(shape, dtype, zero)`` (a lean memory plan).
        self.pool = None

    @classmethod
    def from_array(cls, array):
        """A Blob holding ``array`` as data (not copied); its diff is lazy."""
        blob = cls.__new__(cls)
        blob.xp = array_module(array)
        blob.dtype = array.dtype
        blob._data = array
        blob._diff = None
        blob._released = False
        blob._adopted = False
        blob.pool = None
        return blob

    # -- the arrays ---------------------------------------------------------------
    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, array):
        if self._adopted:
            self._copy_into(self._data, array, "data")
            return
        self._data = array
        self._released = False

    @property
    def diff(self):
        """The gradient, (zeroed) storage allocated on first use."""
        if self._diff is None or self._diff.shape != self._data.shape:
            self._diff = self._new(self._data.shape, zero=True)
        return self._diff

    @diff.setter
    def diff(self, array):
        if self._adopted:
            self._copy_into(self._diff, array, "diff")
            return
        self._diff = array

    @property
    def has_diff(self):
        """Whether a diff has been allocated (a never-used diff is zero)."""
        return self._diff is not None and self._diff.shape == self._data.shape

    # -- storage owned elsewhere ------------------------------------------------------
    def adopt(self, data, diff):
        """Keep this blob's values in ``data`` and ``diff`` from now on:
        arrays of the blob's shape and dtype on its device (typically views
        into a solver's flat buffers, solver.flat_params). The current data
        (and diff, when one was allocated; else ``diff`` is zeroed) is copied
        in. Afterwards assigning ``data`` or ``diff`` copies into these
        arrays, and ``reshape`` to another shape or releasing storage raises
        ValueError, so whoever owns the buffers keeps seeing the parameter.
        Adopting again (another solver) moves the values to the new arrays."""
        for name, array in (("data", data), ("diff", diff)):
            if tuple(array.shape) != self.shape or array.dtype != self.dtype:
                raise ValueError(f"{self!r} cannot adopt a {name} array of shape "
                                 f"{tuple(array.shape)} and dtype {array.dtype}")
        data[...] = self._data
        if self.has_diff:
            diff[...] = self._diff
        else:
            diff.fill(0)
        self._data, self._diff = data, diff
        self._released, self._adopted = False, True

    @property
    def adopted(self):
        """True once ``adopt`` gave the blob storage owned elsewhere."""
        return self._adopted

    def _copy_into(self, target, array, name):
        if tuple(array.shape) != self.shape:
            raise ValueError(f"{self!r} keeps its {name} in adopted storage: cannot assign "
                             f"an array of shape {tuple(array.shape)}")
        target[...] = array

    def _refuse_if_adopted(self, what):
        if self._adopted:
            raise ValueError(f"{self!r} keeps its arrays in adopted storage (a solver's flat "
                             f"buffers): cannot {what}")

    def _new(self, shape, zero):
        if self.pool is not None:
            return self.pool.take(shape, self.dtype, zero)
        return self.xp.zeros(shape, dtype=self.dtype)

    # -- shape --------------------------------------------------------------------
    @property
    def shape(self):
        return tuple(self._data.shape)

    @property
    def count(self):
        return int(self._data.size)

    @property
    def num_axes(self):
        return self._data.ndim

    @property
    def is_released(self):
        """True while the data is a stand-in (see ``released_array``)."""
        return self._released

    def reshape(self, *shape):
        """Give the blob ``shape`` (a tuple, or the dims as arguments as in
        pycaffe); contents are zeroed only when it changes (storage taken
        from a pool is not zeroed: its producer writes every element)."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"blob shape must be non-negative, found {shape}")
        if shape != self.shape or self._released:
            self._refuse_if_adopted(f"reshape it to {shape}")
            self._data = self._new(shape, zero=False)
            self._diff = None
            self._released = False

    def release_data(self):
        """Give the data's storage back to the pool (a lean plan's step)."""
        self._refuse_if_adopted("release its data")
        if self.pool is not None and not self._released:
            self.pool.give(self._data)
        self._data = released_array(self.shape, self.dtype, self.xp)
        self._released = True

    def release_diff(self):
        """Give the diff's storage back to the pool; the next use re-zeroes."""
        self._refuse_if_adopted("release its diff")
        if self._diff is not None and self.pool is not None:
            self.pool.give(self._diff)
        self._diff = None

    def set_data(self, array):
        """Copy ``array`` (any device) into data, reshaping to its shape."""
        array = to_numpy(array) if self.xp is np else array
        self.reshape(array.shape)
        self._data[...] = self.xp.asarray(array, dtype=self.dtype)

    def zero_diff(self):
        if self._diff is not None:
            self._diff.fill(0)

    def __repr__(self):
        return f"Blob(shape={self.shape}, dtype={self.dtype.name})"
