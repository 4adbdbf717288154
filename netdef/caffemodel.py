"""Reading and writing Caffe's binary weight files (``.caffemodel``).

A ``.caffemodel`` is a serialized ``NetParameter`` whose layers carry their
parameter blobs. :func:`read_caffemodel` parses and upgrades one (V1 files
become the current form), :func:`caffemodel_blobs` turns its blobs into NumPy
arrays, :func:`write_caffemodel` writes one. For a byte-exact round trip use
:func:`load_net_param` with ``upgrade=False``: parsing and re-serializing the
raw message gives the file's bytes back.
"""
import collections
import logging
import math
import os

import numpy as np
from google.protobuf.message import DecodeError

from netdef import caffe_pb2
from netdef.errors import DataError, ParseError, WeightsError
from netdef.schema import upgrade_net
from netdef.snapshot_format import atomic_writer

__all__ = [
    "load_net_param",
    "read_caffemodel",
    "caffemodel_blobs",
    "blob_to_array",
    "read_blob_proto",
    "conform_blob",
    "write_caffemodel",
]

log = logging.getLogger(__name__)

_LEGACY_DIMS = ("num", "channels", "height", "width")
#: Caffe's limits on a blob: kMaxBlobAxes axes, INT_MAX values.
_MAX_AXES = 32
_MAX_COUNT = 2**31 - 1
_DATA_FIELD = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["data"].number
_DOUBLE_DATA_FIELD = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["double_data"].number
_LAYER_FIELD = caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layer"].number


def _not_a_caffemodel(path, why):
    return WeightsError(f"{path}: not a Caffe binary NetParameter (.caffemodel): {why}")


def _looks_like_text(raw):
    head = raw[:256]
    return bool(head) and all(32 <= b < 127 or b in b"\t\r\n" for b in head)


def load_net_param(path, upgrade=True):
    """Parse the binary NetParameter in ``path``.

    With ``upgrade=False`` the message is returned exactly as stored (its
    ``SerializeToString()`` reproduces a canonically written file byte for
    byte); with ``upgrade=True`` it goes through :func:`netdef.schema.upgrade_net`
    (V1 layers and legacy inputs converted). Corrupt, truncated or foreign
    files, files without layers, and blobs whose value count does not match
    their shape raise WeightsError naming the file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: is a directory, not a .caffemodel file") from None
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read the file: {exc.strerror}") from None

    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(raw)
    except DecodeError as exc:
        hint = ("; it looks like prototxt text, which netdef.schema.read_net reads"
                if _looks_like_text(raw) else "")
        raise _not_a_caffemodel(path, f"the data do not decode ({exc}){hint}") from None
    layers = list(net.layer) or list(net.layers)
    if not layers:
        why = "the file is empty" if not raw else "it decodes but holds no layers"
        if raw and _looks_like_text(raw):
            why += "; it looks like prototxt text, which netdef.schema.read_net reads"
        raise _not_a_caffemodel(path, why)
    if not any(layer.name for layer in layers):
        raise _not_a_caffemodel(
            path, f"it decodes but none of its {len(layers)} layers has a name")
    for index, layer in enumerate(layers):
        for field in ("name", "type"):
            if isinstance(getattr(layer, field), bytes):
                # protobuf hands back bytes for a string field that is not UTF-8
                raise _not_a_caffemodel(path, f"layer {index}: its {field} "
                                              f"{getattr(layer, field)!r} is not UTF-8 text")
        for blob_index, blob in enumerate(layer.blobs):
            _blob_layout(blob, _where(path, layer, index), blob_index)

    if not upgrade:
        return net
    try:
        return upgrade_net(net, path)
    except ParseError as exc:
        raise WeightsError(str(exc)) from None


def read_caffemodel(path):
    """The upgraded NetParameter of a ``.caffemodel`` file (see
    :func:`load_net_param`)."""
    return load_net_param(path, upgrade=True)


def _where(filename, layer, index):
    label = f"layer '{layer.name}'" if layer.name else f"layer {index} (unnamed)"
    return f"{filename}: {label}" if filename else label


def _blob_layout(blob, where, blob_index):
    """``(shape, field)`` of a BlobProto, checked against its value count.

    The shape follows Caffe's Blob::FromProto: the legacy 4-D
    (num, channels, height, width) when any of those is set, else ``shape``;
    a blob with neither is 1-D. Values come from ``double_data`` when it is
    non-empty, else from ``data``.
    """
    field = "double_data" if len(blob.double_data) else "data"
    count = len(getattr(blob, field))
    if any(blob.HasField(name) for name in _LEGACY_DIMS):
        shape = tuple(getattr(blob, name) for name in _LEGACY_DIMS)
    elif blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:
        shape = (count,)
    if any(d < 0 for d in shape):
        raise WeightsError(f"{where}: blob {blob_index} has a negative dimension "
                           f"in its shape {shape}")
    if len(shape) > _MAX_AXES:
        raise WeightsError(f"{where}: blob {blob_index} has {len(shape)} axes; a blob has "
                           f"at most {_MAX_AXES}")
    if math.prod(d for d in shape if d) > _MAX_COUNT:
        # Caffe's Blob::Reshape refuses it too; NumPy could not even form the
        # shape when a zero dimension makes the count 0, e.g. (2^31, 2^31, 2^31, 0).
        raise WeightsError(f"{where}: blob {blob_index} has shape {shape}, beyond Caffe's "
                           f"limit of {_MAX_COUNT} values per blob")
    expected = math.prod(shape)
    if expected != count:
        raise WeightsError(
            f"{where}: blob {blob_index} has shape {shape} ({expected} values) "
            f"but its {field} holds {count} values")
    return shape, field


def blob_to_array(blob, where="blob", blob_index=0):
    """A BlobProto's values as a new NumPy array of its shape: float32 from
    ``data``, float64 from ``double_data``. ``where`` and ``blob_index`` name
    the blob in error messages."""
    shape, field = _blob_layout(blob, where, blob_index)
    dtype = np.float64 if field == "double_data" else np.float32
    return np.array(getattr(blob, field), dtype=dtype).reshape(shape)



def read_blob_proto(path, where):
    """The one BlobProto of a ``.binaryproto`` file (a mean image, an
    infogain matrix) as a NumPy array of its shape. ``where`` names what
    reads it (e.g. "layer 'loss' (InfogainLoss): infogain_loss_param.source
    'H.binaryproto'"); a missing, unreadable, undecodable, malformed or empty
    file is a DataError starting with it."""
    try:
        with open(os.fspath(path), "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise DataError(f"{where}: no such file") from None
    except OSError as exc:
        raise DataError(f"{where}: cannot read the file: {exc.strerror or exc}") from None
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(raw)
        array = blob_to_array(blob, where=where)
    except DecodeError as exc:
        raise DataError(f"{where}: not a binary BlobProto (.binaryproto): {exc}") from None
    except WeightsError as exc:
        raise DataError(f"{exc} (a malformed BlobProto)") from None
    if array.size == 0:
        raise DataError(f"{where}: the BlobProto holds no values")
    return array

def caffemodel_blobs(net_param, filename=None):
    """OrderedDict layer name -> list of NumPy arrays, for every layer (new
    style or V1) that has blobs, in file order.

    Legacy blobs come out 4-D (num, channels, height, width), as Caffe reads
    them; :func:`conform_blob` applies Caffe's rule for fitting them into a
    parameter with fewer axes. When a name repeats, the later layer wins, as
    in Caffe's weight copying (a warning is logged).
    """
    if net_param.layer and net_param.layers:
        raise WeightsError(
            f"{filename or 'net'}: mixes new-style 'layer' and V1 'layers' entries")
    blobs = collections.OrderedDict()
    for index, layer in enumerate(net_param.layer or net_param.layers):
        if not layer.blobs:
            continue
        where = _where(filename, layer, index)
        arrays = [blob_to_array(blob, where, i) for i, blob in enumerate(layer.blobs)]
        if layer.name in blobs:
            log.warning("%s: layer name '%s' repeats; the later layer's blobs are used",
                        filename or "net", layer.name)
            del blobs[layer.name]
        blobs[layer.name] = arrays
    return blobs


def conform_blob(array, target_shape, where="blob"):
    """``array`` reshaped to ``target_shape`` if Caffe would accept it there.

    Accepted: equal shapes, or a 4-D array whose shape equals the target
    padded on the left with 1s to four axes (Caffe's rule for legacy
    (num, channels, height, width) blobs, e.g. an InnerProduct weight stored
    as (1, 1, M, N) for an (M, N) parameter). Anything else raises
    WeightsError naming ``where`` with both shapes.
    """
    target_shape = tuple(int(d) for d in target_shape)
    if array.shape == target_shape:
        return array
    if (array.ndim == 4 and len(target_shape) <= 4
            and (1,) * (4 - len(target_shape)) + target_shape == array.shape):
        return array.reshape(target_shape)
    raise WeightsError(
        f"{where}: the weights have shape {array.shape} but the net expects "
        f"{target_shape}")


def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_LAYER_TAG = _varint(_LAYER_FIELD << 3 | 2)


def _fill_blob(blob, value, where):
    """Store ``value`` in ``blob`` with a ``shape``: float64 in double_data,
    everything else as float32 in data."""
    if hasattr(value, "__cuda_array_interface__") and hasattr(value, "get"):
        value = value.get()
    array = np.asarray(value)
    if array.dtype.hasobject or array.dtype.kind not in "biuf":
        raise TypeError(f"{where}: cannot store an array of dtype {array.dtype}")
    blob.shape.dim.extend(array.shape)
    if array.dtype == np.float64:
        field, payload = _DOUBLE_DATA_FIELD, np.ascontiguousarray(array, "<f8").tobytes()
    else:
        field, payload = _DATA_FIELD, np.ascontiguousarray(array, "<f4").tobytes()
    if payload:
        # The packed field's wire encoding, merged in one step: far faster
        # than appending values one by one.
        blob.MergeFromString(_varint(field << 3 | 2) + _varint(len(payload)) + payload)


def write_caffemodel(path, layers, name=None):
    """Write a ``.caffemodel`` atomically (temporary file, then rename).

    ``layers`` is an iterable of ``(layer_name, layer_type, arrays)``; each
    becomes a ``layer`` entry whose blobs hold the arrays with their shapes
    (float64 arrays in ``double_data``, others as float32 in ``data``).
    ``name`` optionally sets the net's name. Layers are encoded and written
    one at a time, so memory holds one layer's message, not the whole file.
    """
    with atomic_writer(path) as handle:
        if name is not None:
            handle.write(caffe_pb2.NetParameter(name=name).SerializeToString())
        for entry in layers:
            try:
                layer_name, layer_type, arrays = entry
            except (TypeError, ValueError):
                raise TypeError(
                    "each layer must be a (layer_name, layer_type, arrays) tuple, "
                    f"got {entry!r}") from None
            layer = caffe_pb2.LayerParameter(name=layer_name, type=layer_type)
            for i, value in enumerate(arrays):
                _fill_blob(layer.blobs.add(), value, f"layer '{layer_name}' blob {i}")
            encoded = layer.SerializeToString()
            # One `layer` entry of NetParameter, as its serializer would write it.
            handle.write(_LAYER_TAG + _varint(len(encoded)))
            handle.write(encoded)
