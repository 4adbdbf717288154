"""Data: batches of Caffe Datum records from an LMDB (Caffe's DataLayer with
``backend: LMDB``, the databases convert_imageset and convert_mnist_data
write)."""
import itertools
import os
import weakref

import numpy as np
from google.protobuf.message import DecodeError

from layers.base import register
from layers.host_batches import HostBatchLayer
from layers.input_pipeline.caffe_transform import CaffeTransform, decode_image, pad_images
from netdef import caffe_pb2
from netdef.errors import DataError, NetDefinitionError

# Salts of the layer's random streams (with its seed): the batch's transform
# draws, the initial skip.
_TRANSFORM_SALT, _SKIP_SALT = 2, 3


def import_lmdb(where):
    """The ``lmdb`` module (an optional extra), or a NetDefinitionError
    saying how to install it."""
    try:
        import lmdb
    except ImportError:
        raise NetDefinitionError(
            f"{where}: reading an LMDB needs the lmdb package, part of the data extra: "
            "pip install -e '.[data]'") from None
    return lmdb


# Open databases by real path: LMDB allows one environment per database in a
# process, and a TRAIN and a TEST net may read the same one. An environment
# closes when no layer holds it any more.
_ENVIRONMENTS = weakref.WeakValueDictionary()


def open_lmdb(lmdb, source):
    """The read-only environment of the LMDB directory ``source`` (shared)."""
    key = os.path.realpath(source)
    env = _ENVIRONMENTS.get(key)
    if env is None:
        env = lmdb.open(source, readonly=True, lock=False, readahead=False)
        _ENVIRONMENTS[key] = env
    return env


def datum_to_image(value, decode_color, what):
    """One serialized Datum as ``((C, H, W) image, label)``: raw bytes
    (uint8), ``float_data`` (float32) or an encoded image (uint8, decoded
    with ``decode_color`` as ``decode_image``'s ``color``)."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except DecodeError as exc:
        raise DataError(f"{what} is not a Caffe Datum: {exc}") from None
    if datum.encoded:
        return decode_image(datum.data, decode_color, what=what).transpose(2, 0, 1), datum.label
    shape = (datum.channels, datum.height, datum.width)
    count = int(np.prod(shape))
    if datum.data:
        pixels = np.frombuffer(datum.data, dtype=np.uint8)
    else:
        pixels = np.array(datum.float_data, dtype=np.float32)
    if count == 0 or pixels.size != count:
        raise DataError(f"{what}: a Datum of {datum.channels} x {datum.height} x "
                        f"{datum.width} (channels x height x width) holds {pixels.size} values")
    return pixels.reshape(shape), datum.label


@register("Data")
class DataLayer(HostBatchLayer):
    """Datum records read in key order from an LMDB, cyclically.

    data_param: source (the LMDB directory), batch_size, backend (LMDB;
    LEVELDB is refused with a message saying to convert the database),
    rand_skip (skip a random number, below it, of records at the start).
    transform_param: as Caffe's (layers/input_pipeline/caffe_transform.py);
    force_color / force_gray choose how encoded records decode (else each
    decodes with its own channels: grey stays grey, colour gives BGR).

    tops: data ``(N, C, h, w)`` (transformed), and optionally label
    ``(N,)``. A batch may end one pass over the database and start the
    next. Each batch's shape comes from its first record; the others must
    have its size unless cropped. ``position`` (records served so far, plus
    the skip) is the layer's random state, so a snapshot resumes with the
    same records, and each batch's random draws are keyed by it. The GPU
    path is the same host code, the batch copied into the tops' device. No
    backward.
    """

    random_state_attributes = ("position",)

    min_tops = 1
    max_tops = 2

    def layer_setup(self, bottoms, tops):
        p = self.param.data_param
        self.batch_size = int(p.batch_size)
        if self.batch_size < 1:
            raise self.definition_error(
                f"data_param batch_size must be positive, found {self.batch_size}")
        self.source = p.source
        if p.backend != caffe_pb2.DataParameter.LMDB:
            raise self.definition_error(
                f"data_param backend LEVELDB (the default when backend is not set) is not "
                f"supported; convert '{self.source}' to an LMDB (Caffe's convert_imageset "
                "-backend lmdb, or read it with plyvel and write it with the lmdb package) "
                "and set backend: LMDB")
        self.transform = CaffeTransform(self.param.transform_param, self.phase, self.where)
        self._open()
        self.position = int(self.rng(_SKIP_SALT).integers(p.rand_skip)) if p.rand_skip else 0
        (key, value), = self._read(self.position, 1)
        name = self._describe(self.position, key)
        image, _ = datum_to_image(value, self.transform.decode_color, f"{self.where}: {name}")
        self.transform.check(image.shape[0], [image.shape[1:]], lambda i: name)
        tops[0].reshape((self.batch_size,) + self.transform.output_shape(*image.shape))
        if len(tops) > 1:
            tops[1].reshape((self.batch_size,))

    def _open(self):
        lmdb = import_lmdb(self.where)
        try:
            self._env = open_lmdb(lmdb, self.source)
        except lmdb.Error as exc:
            raise DataError(f"{self.where}: cannot open the LMDB '{self.source}': {exc}") from None
        self.records = int(self._env.stat()["entries"])
        if not self.records:
            raise DataError(f"{self.where}: the LMDB '{self.source}' holds no records")
        self._txn = self._env.begin(buffers=False)
        self._reader = None
        self._reader_at = None

    def _cycle(self, start):
        """``(key, value)`` of every record from record ``start`` on, going
        round the database forever."""
        cursor = self._txn.cursor()
        cursor.first()
        items = cursor.iternext()
        # Skipping happens inside islice, without a Python step per record.
        items = itertools.islice(items, start, None)
        while True:
            yield from items
            cursor.first()
            items = cursor.iternext()

    def _read(self, position, count):
        """``count`` records from ``position`` (records served so far)."""
        if self._reader is None or self._reader_at != position:
            self._reader = self._cycle(position % self.records)
        batch = list(itertools.islice(self._reader, count))
        self._reader_at = position + count
        return batch

    def _describe(self, position, key):
        index = position % self.records
        return f"record {index} (key {key.decode(errors='replace')!r}) of LMDB '{self.source}'"

    def close(self):
        """Let go of the database (it reopens at the next forward); it
        closes when no other layer reads it."""
        self._reader = self._txn = self._env = None

    def next_batch(self):
        """The next batch as host arrays ``(data, labels)``, advancing."""
        if self._env is None:
            self._open()
        records = self._read(self.position, self.batch_size)
        names = [self._describe(self.position + i, key) for i, (key, _) in enumerate(records)]
        decoded = [datum_to_image(value, self.transform.decode_color, f"{self.where}: {name}")
                   for name, (_, value) in zip(names, records)]
        describe = names.__getitem__
        images, sizes = pad_images([image for image, _ in decoded], self.where, describe)
        self.transform.check(images.shape[1], sizes, describe)
        rng = np.random.default_rng([self.seed, _TRANSFORM_SALT, self.position])
        data = self.transform(images, rng, self.dtype, sizes)
        labels = np.array([label for _, label in decoded], dtype=self.dtype)
        self.position += self.batch_size
        return data, labels
