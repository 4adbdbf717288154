"""Blob: the data and diff arrays of one tensor, on one device."""
import numpy as np

from .device import array_module, to_numpy


class Blob:
    """``data`` and ``diff`` arrays of one shape, dtype and device.

    Layers that work in place share one Blob object between a bottom and a
    top. ``reshape`` keeps the arrays when the shape is unchanged, so buffers
    are not reallocated on every forward pass.
    """

    def __init__(self, shape=(), dtype=np.float32, xp=np):
        self.xp = xp
        self.dtype = np.dtype(dtype)
        # xp.zeros, not zeros_like: fresh zero pages come from the OS lazily,
        # so building a large net does not write every byte of every blob.
        self.data = xp.zeros(tuple(int(s) for s in shape), dtype=self.dtype)
        self.diff = xp.zeros(self.data.shape, dtype=self.dtype)

    @classmethod
    def from_array(cls, array):
        """A Blob holding ``array`` as data (not copied) and a zero diff."""
        xp = array_module(array)
        blob = cls.__new__(cls)
        blob.xp = xp
        blob.dtype = array.dtype
        blob.data = array
        blob.diff = xp.zeros(array.shape, dtype=array.dtype)
        return blob

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def count(self):
        return int(self.data.size)

    @property
    def num_axes(self):
        return self.data.ndim

    def reshape(self, *shape):
        """Give the blob ``shape`` (a tuple, or the dims as arguments as in
        pycaffe); contents are zeroed only when it changes."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"blob shape must be non-negative, found {shape}")
        if shape != self.shape:
            self.data = self.xp.zeros(shape, dtype=self.dtype)
            self.diff = self.xp.zeros(shape, dtype=self.dtype)

    def set_data(self, array):
        """Copy ``array`` (any device) into data, reshaping to its shape."""
        array = to_numpy(array) if self.xp is np else array
        self.reshape(array.shape)
        self.data[...] = self.xp.asarray(array, dtype=self.dtype)

    def zero_diff(self):
        self.diff.fill(0)

    def __repr__(self):
        return f"Blob(shape={self.shape}, dtype={self.dtype.name})"
