"""MemoryData: batches of arrays handed over from Python (Caffe's
MemoryDataLayer, which pycaffe's ``net.set_input_arrays`` feeds)."""
import warnings

import numpy as np

from layers.base import register
from layers.host_batches import HostBatchLayer
from netdef.device import to_numpy
from netdef.errors import DataError, DataWarning


@register("MemoryData")
class MemoryDataLayer(HostBatchLayer):
    """Serves the rows of arrays given with ``reset(data, labels)``, in
    order, ``batch_size`` at a time, going round to the first batch after
    the last.

    memory_data_param: batch_size, channels, height, width (all positive).
    tops: data ``(batch_size, channels, height, width)``, label
    ``(batch_size,)``. ``reset`` takes data ``(n, channels, height, width)``
    and labels ``(n,)`` (or pycaffe's ``(n, 1, 1, 1)``), ``n`` a multiple of
    batch_size; like Caffe's Reset it applies no transform_param (a
    DataWarning says so when one is set). The arrays are kept (converted to
    the net's dtype on the host); each forward copies the next batch into
    the tops' device. No backward.
    """

    exact_tops = 2

    def layer_setup(self, bottoms, tops):
        p = self.param.memory_data_param
        dims = (int(p.batch_size), int(p.channels), int(p.height), int(p.width))
        if min(dims) < 1:
            raise self.definition_error(
                "memory_data_param batch_size, channels, height and width must all be "
                f"positive, found {dims[0]}, {dims[1]}, {dims[2]}, {dims[3]}")
        self.batch_size, self.item_shape = dims[0], dims[1:]
        self._data = None
        self._labels = None
        self.cursor = 0
        tops[0].reshape(dims)
        tops[1].reshape((self.batch_size,))

    def reset(self, data, labels):
        """Serve ``data`` ``(n, C, H, W)`` and ``labels`` ``(n,)`` from the
        first batch on. Raises DataError for shapes that do not fit."""
        data = np.asarray(to_numpy(data), dtype=self.dtype)
        labels = np.asarray(to_numpy(labels), dtype=self.dtype)
        n = data.shape[0] if data.ndim else 0
        if data.shape[1:] != self.item_shape or n == 0:
            raise DataError(
                f"{self.where}: reset data must be (n, {', '.join(map(str, self.item_shape))}) "
                f"(n, channels, height, width) with n >= 1, found {data.shape}")
        if labels.shape not in ((n,), (n, 1, 1, 1)):
            raise DataError(f"{self.where}: reset labels must be ({n},) (one per data row) "
                            f"or ({n}, 1, 1, 1), found {labels.shape}")
        if n % self.batch_size:
            raise DataError(f"{self.where}: reset got {n} rows, not a multiple of batch_size "
                            f"{self.batch_size}")
        if self.param.HasField("transform_param"):
            warnings.warn(f"{self.where}: MemoryData does not apply transform_param to the "
                          "arrays given to reset", DataWarning, stacklevel=2)
        self._data, self._labels = data, labels.reshape(n)
        self.cursor = 0

    def next_batch(self):
        """The next ``(data, labels)`` rows of the arrays given to ``reset``."""
        if self._data is None:
            raise self.definition_error(
                "has no data: call layer.reset(data, labels) (or net.set_input_arrays(data, "
                "labels)) before the forward pass")
        batch = slice(self.cursor, self.cursor + self.batch_size)
        self.cursor = (self.cursor + self.batch_size) % len(self._data)
        return self._data[batch], self._labels[batch]
