"""The base of Caffe's file and memory data layers: batches made on the host."""
from layers.base import NoGradientLayer

__all__ = ["HostBatchLayer"]


class HostBatchLayer(NoGradientLayer):
    """A data layer whose batches are made on the host (decoded images,
    database records, HDF5 rows, arrays given from Python) and copied to the
    tops' device: ``next_batch()`` returns one array per top (extra arrays
    beyond the tops are dropped, so a label top may be left out). No
    bottoms, no gradient; the tops take each batch's shape."""

    exact_bottoms = 0

    def next_batch(self):
        """The next batch, one host array per top, advancing the position."""
        raise NotImplementedError

    def reshape(self, bottoms, tops):
        # Sized in setup and by every forward (a batch may take its first
        # image's shape).
        pass

    def forward_cpu(self, bottoms, tops):
        for top, array in zip(tops, self.next_batch()):
            top.set_data(array)

    # The batch is made on the host either way; set_data copies it to the
    # tops' device.
    forward_gpu = forward_cpu
