"""HDF5Data and HDF5Output: Caffe's layers that read batches from HDF5
files and write blobs to one."""
import os

import numpy as np

from layers.base import NoGradientLayer, register
from layers.host_batches import HostBatchLayer
from netdef.device import to_numpy
from netdef.errors import DataError, NetDefinitionError

# Salts of the layer's random streams (with its seed): the file order of a
# pass, the row order of one file in a pass.
_FILE_SALT, _ROW_SALT = 1, 2

#: The datasets HDF5Output writes its two bottoms to (Caffe's names).
OUTPUT_DATASETS = ("data", "label")


def import_h5py(where):
    """The ``h5py`` module (an optional extra), or a NetDefinitionError
    saying how to install it."""
    try:
        import h5py
    except ImportError:
        raise NetDefinitionError(
            f"{where}: HDF5 files need the h5py package, part of the data extra: "
            "pip install -e '.[data]'") from None
    return h5py


def read_file_list(source):
    """The HDF5 file names listed in ``source``, one per line (blank lines
    skipped)."""
    try:
        with open(source, encoding="utf-8") as handle:
            names = [line.strip() for line in handle]
    except OSError as exc:
        raise DataError(f"cannot read the HDF5 file list '{source}': "
                        f"{exc.strerror or exc}") from None
    names = [name for name in names if name]
    if not names:
        raise DataError(f"HDF5 file list '{source}' lists no files")
    return names


@register("HDF5Data")
class HDF5DataLayer(HostBatchLayer):
    """Rows of the datasets named by the tops, from the files of a list.

    hdf5_data_param: source (a text file naming one .h5 file per line),
    batch_size, shuffle (a fresh file order every pass over the list and a
    fresh row order every time a file is used). No transform_param: HDF5
    data are used as stored (Caffe refuses one too).

    tops: for each top, the dataset of that name in every file, ``(R, ...)``
    with R rows (the same R for all of a file's datasets, the same
    per-row shape in every file), any numeric type (converted to the net's
    dtype); each top is ``(batch_size, ...)``. As in Caffe one file is held
    in memory at a time and a batch runs on into the next file (and round
    to the first) when a file's rows run out. The position (``file_pass``,
    ``file_cursor``, ``row``) is the layer's random state, so a snapshot
    resumes where it stopped. The GPU path is the same host code, the batch
    copied into the tops' device. No backward.
    """

    random_state_attributes = ("file_pass", "file_cursor", "row")

    min_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.hdf5_data_param
        if self.param.HasField("transform_param"):
            raise self.definition_error(
                "HDF5Data does not transform data (no transform_param): store the data "
                "as the net should see them")
        self.batch_size = int(p.batch_size)
        if self.batch_size < 1:
            raise self.definition_error(
                f"hdf5_data_param batch_size must be positive, found {self.batch_size}")
        self.source = p.source
        self.shuffle = bool(p.shuffle)
        self.h5py = import_h5py(self.where)
        try:
            self.files = read_file_list(self.source)
        except DataError as exc:
            raise DataError(f"{self.where}: {exc}") from None
        self.names = [self.top_name(i) for i in range(len(tops))]
        self.file_pass, self.file_cursor, self.row = 0, 0, 0
        self._loaded = None          # (file index, arrays)
        self._row_shapes = None
        for top, array in zip(tops, self._current()[1]):
            top.reshape((self.batch_size,) + array.shape[1:])

    # -- the files -----------------------------------------------------------------
    def _file_index(self, file_pass, cursor):
        if not self.shuffle:
            return cursor
        order = np.random.default_rng([self.seed, _FILE_SALT, file_pass])
        return int(order.permutation(len(self.files))[cursor])

    def _load(self, index):
        """The arrays of file ``index``, one per top, checked."""
        path = self.files[index]
        where = f"{self.where}: HDF5 file '{path}' (line {index + 1} of '{self.source}')"
        try:
            with self.h5py.File(path, "r") as handle:
                missing = [name for name in self.names if name not in handle]
                if missing:
                    raise DataError(f"{where} has no dataset {missing[0]!r} (the top's name); "
                                    f"it has {sorted(handle.keys())}")
                arrays = [np.asarray(handle[name][()]) for name in self.names]
        except OSError as exc:
            raise DataError(f"{where}: cannot read it: {exc}") from None
        for name, array in zip(self.names, arrays):
            if array.ndim == 0 or array.dtype.kind not in "biuf":
                raise DataError(f"{where}: dataset {name!r} must be a numeric array with at "
                                f"least one axis, found {array.dtype} of shape {array.shape}")
            if array.shape[0] != arrays[0].shape[0] or array.shape[0] == 0:
                raise DataError(f"{where}: every dataset needs the same number of rows (at "
                                f"least 1): {self.names[0]!r} has {arrays[0].shape[0]}, "
                                f"{name!r} has {array.shape[0]}")
        shapes = [array.shape[1:] for array in arrays]
        if self._row_shapes is None:
            self._row_shapes = shapes
        elif shapes != self._row_shapes:
            raise DataError(f"{where}: rows of shapes {shapes} (one per top), the first file's "
                            f"are {self._row_shapes}")
        return [array.astype(self.dtype, copy=False) for array in arrays]

    def _current(self):
        """``(row order, arrays)`` of the file at the current position."""
        index = self._file_index(self.file_pass, self.file_cursor)
        if self._loaded is None or self._loaded[0] != index:
            self._loaded = (index, self._load(index))
        arrays = self._loaded[1]
        rows = len(arrays[0])
        if not self.shuffle:
            return np.arange(rows), arrays
        order = np.random.default_rng([self.seed, _ROW_SALT, self.file_pass, self.file_cursor])
        return order.permutation(rows), arrays

    def _advance_file(self):
        self.row = 0
        self.file_cursor += 1
        if self.file_cursor == len(self.files):
            self.file_cursor = 0
            self.file_pass += 1

    # -- running -------------------------------------------------------------------
    def next_batch(self):
        """The next batch: one host array per top, advancing."""
        parts = [[] for _ in self.names]
        filled = 0
        while filled < self.batch_size:   # one step per file the batch touches
            order, arrays = self._current()
            if self.row >= len(order):
                self._advance_file()
                continue
            take = order[self.row:self.row + self.batch_size - filled]
            for part, array in zip(parts, arrays):
                part.append(array[take])
            filled += len(take)
            self.row += len(take)
        return [np.concatenate(part) for part in parts]


@register("HDF5Output")
class HDF5OutputLayer(NoGradientLayer):
    """Writes its two bottoms to datasets "data" and "label" of an HDF5 file.

    hdf5_output_param: file_name. The file is created (replacing any old
    one) when the layer is set up, with both datasets empty; every forward
    appends the bottoms' rows: "data" grows to ``(total, ...)`` of bottom 0's
    per-row shape, "label" likewise for bottom 1. Caffe writes the datasets
    once and fails on a second forward; appending keeps every batch. Each
    append opens the file, writes and closes it, so between forwards the
    file is complete and readable; it is first written under a temporary
    name and renamed, so no half-made file ever carries the name. Values
    are written in the net's dtype. No tops; writing has no gradient, so a
    backward gives zero diffs to the bottoms it is asked for.
    """

    exact_bottoms = 2
    exact_tops = 0

    def layer_setup(self, bottoms, tops):
        self.file_name = self.param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.definition_error("hdf5_output_param needs a file_name")
        self.h5py = import_h5py(self.where)
        self._created = False

    def reshape(self, bottoms, tops):
        if bottoms[0].shape[:1] != bottoms[1].shape[:1] or not bottoms[0].shape:
            raise self.shape_error(
                1, f"as many rows as bottom '{self.bottom_name(0)}' {bottoms[0].shape}",
                bottoms[1].shape)
        shapes = [tuple(b.shape[1:]) for b in bottoms]
        if not self._created:
            self._create(shapes)
        elif shapes != self.row_shapes:
            i = int(shapes[0] == self.row_shapes[0])
            raise self.shape_error(
                i, f"rows of shape {self.row_shapes[i]}, as the dataset "
                f"'{OUTPUT_DATASETS[i]}' of '{self.file_name}' holds", bottoms[i].shape)

    def _create(self, shapes):
        temporary = f"{self.file_name}.partial"
        try:
            with self.h5py.File(temporary, "w") as handle:
                for name, shape in zip(OUTPUT_DATASETS, shapes):
                    handle.create_dataset(name, shape=(0,) + shape, maxshape=(None,) + shape,
                                          dtype=self.dtype, chunks=True)
            os.replace(temporary, self.file_name)
        except OSError as exc:
            raise DataError(f"{self.where}: cannot write '{self.file_name}': {exc}") from None
        self.row_shapes = shapes
        self._created = True

    def forward_cpu(self, bottoms, tops):
        with self.h5py.File(self.file_name, "r+") as handle:
            for name, bottom in zip(OUTPUT_DATASETS, bottoms):
                dataset = handle[name]
                start = dataset.shape[0]
                dataset.resize(start + bottom.shape[0], axis=0)
                dataset[start:] = to_numpy(bottom.data)

    # Writing needs the values on the host: the copy is the layer's purpose.
    forward_gpu = forward_cpu
