"""Copying weights into a Net by layer name: the one copy every caller uses.

    report = copy_layers(net, {"conv1": [w, b], ...}, "file.caffemodel")
    report = load_weights_into(net, "file.caffemodel")     # Net.copy_from
    share_layers(train_net, test_net, "solver.prototxt")   # train -> test net

Two file formats are read: Caffe's binary ``.caffemodel``
(``netdef.caffemodel``) and the native pickle-free snapshot
(``netdef.snapshot_format``), told apart by content (the native format is a
zip archive), not by file name. Whatever the source (a file, a solver
snapshot's weights, another Net), the arrays go through ``copy_layers``:
same-named layers with parameters get them, and a ``WeightsReport`` says
what was loaded, missing, unused or skipped.

Files are checked whole before any blob changes: array names
``<layer>/<index>`` with indices 0, 1, ... (native format), floating-point
values only (a bool or integer array is refused, not cast), every value
finite, and every layer fitting the net. A solver snapshot given as weights
is refused with how to use it instead.
"""
import dataclasses
import re
import zipfile

import numpy as np

from netdef.caffemodel import caffemodel_blobs, conform_blob, read_caffemodel
from netdef.device import to_numpy
from netdef.errors import WeightsError
from netdef.snapshot_format import load_arrays, save_arrays

__all__ = ["WeightsReport", "read_layer_arrays", "group_param_keys", "check_param_array",
           "range_problem", "copy_layers", "share_layers", "load_weights_into", "save_native"]

_INDEX = re.compile(r"[0-9]+")


@dataclasses.dataclass
class WeightsReport:
    """What a copy by layer name did, layer by layer."""
    path: str
    loaded: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)   # net layers with params, not in file
    unused: list = dataclasses.field(default_factory=list)    # file layers not in the net
    skipped: list = dataclasses.field(default_factory=list)   # (layer, reason) shape mismatches

    def summary(self):
        parts = [f"weights from {self.path}: {len(self.loaded)} layers loaded"]
        if self.missing:
            parts.append(f"{len(self.missing)} not in the file ({', '.join(self.missing)})")
        if self.unused:
            parts.append(f"{len(self.unused)} in the file but not in the net ({', '.join(self.unused)})")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped for shape mismatch "
                         f"({'; '.join(r for _, r in self.skipped)})")
        return "; ".join(parts)


def group_param_keys(arrays, source="the arrays"):
    """``{"<layer>/<i>": array}`` (the native format's keys) as ``{layer:
    [array 0, array 1, ...]}`` in index order. A key of another form, or a
    layer whose indices are not 0, 1, ..., raises WeightsError naming
    ``source``."""
    indexed = {}
    for key, array in arrays.items():
        name, _, index = key.rpartition("/")
        if not name or not _INDEX.fullmatch(index):
            raise WeightsError(
                f"{source}: array '{key}' is not named '<layer>/<index>' (e.g. 'conv1/0' for "
                f"the first parameter blob of layer conv1, as Net.save_weights writes)")
        indexed.setdefault(name, {})[int(index)] = array
    layers = {}
    for name in sorted(indexed):
        blobs = indexed[name]
        if sorted(blobs) != list(range(len(blobs))):
            raise WeightsError(f"{source}: layer '{name}' has parameter blobs "
                               f"{sorted(blobs)}; expected 0 to {len(blobs) - 1}")
        layers[name] = [blobs[i] for i in range(len(blobs))]
    return layers


def check_param_array(array, where):
    """Raise WeightsError (starting with ``where``) unless ``array`` holds
    finite floating-point values: a bool, integer or complex array is not
    silently cast (a bool bias would load as 1.0), NaN/Inf are refused."""
    if array.dtype.kind != "f":
        raise WeightsError(f"{where}: dtype {array.dtype}; parameter values must be "
                           f"floating point (float16, float32 or float64)")
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        first = tuple(int(i) for i in np.unravel_index(bad[0], array.shape))
        raise WeightsError(f"{where}: {bad.size} of {array.size} values are NaN or Inf "
                           f"(the first at index {first}: {array[first]}); non-finite "
                           f"weights are not loaded")


def _refuse_non_weights(path, meta):
    kind = meta.get("kind")
    if kind == "solverstate":
        export = meta.get("caffemodel") if isinstance(meta.get("caffemodel"), str) else ""
        raise WeightsError(
            f"{path} is a solver snapshot (.solverstate.npz: weights, solver history and "
            f"random state), not a weights file. To continue training from it use "
            f"'python -m solver.train ... --resume {path}' (Solver.restore); to test it, "
            f"'python -m solver.test ... --weights {path}'; to load its weights into a net, "
            f"copy_from the .caffemodel exported beside it"
            + (f" ({export})" if export else ""))
    if kind is not None:
        raise WeightsError(f"{path}: not a weights file (a {kind!r} file)")


def read_layer_arrays(path):
    """layer name -> list of NumPy arrays, from either format; names,
    dtypes and values checked (see the module docstring)."""
    path = str(path)
    if zipfile.is_zipfile(path):
        arrays, meta = load_arrays(path)
        _refuse_non_weights(path, meta)
        layers = group_param_keys(arrays, path)
    else:
        layers = caffemodel_blobs(read_caffemodel(path), path)
    for name, blobs in layers.items():
        for i, array in enumerate(blobs):
            check_param_array(array, f"{path}: layer '{name}' param {i}")
    return layers


def _mismatch(name, arrays, layer, exact, words):
    """Why ``arrays`` cannot go into ``layer`` (None when they can), and the
    arrays in the layer's blob shapes."""
    source_word, net_word = words
    if len(arrays) != len(layer.blobs):
        return (f"layer '{name}': {source_word} has {len(arrays)} blob(s), {net_word} has "
                f"{len(layer.blobs)}"), []
    if exact:
        for i, (array, blob) in enumerate(zip(arrays, layer.blobs)):
            if tuple(array.shape) != tuple(blob.shape):
                return (f"layer '{name}' param {i}: shape {tuple(array.shape)} in "
                        f"{source_word} but {tuple(blob.shape)} in {net_word}"), []
        return None, list(arrays)
    try:
        return None, [conform_blob(array, blob.shape, f"layer '{name}' param {i}")
                      for i, (array, blob) in enumerate(zip(arrays, layer.blobs))]
    except WeightsError as exc:
        return str(exc), []


def copy_layers(net, stored, source, *, skip_mismatched=False, exact=False,
                words=("the file", "the net"), hint=""):
    """Copy ``stored`` into the parameter blobs of same-named layers of ``net``.

    Args:
        stored: layer name -> list of arrays, one per parameter blob (NumPy
            arrays, or arrays on ``net``'s device; an array that already is
            the blob's storage is left alone).
        source: what the arrays come from, for the report and messages.
        skip_mismatched: a layer whose blob count or shapes do not fit is
            reported in ``skipped`` instead of raising WeightsError.
        exact: shapes must be equal; else Caffe's legacy 4-D shapes are
            accepted (``conform_blob``).
        words: how messages name the source and the net.
        hint: appended to the message of a mismatch that raises.

    Returns a WeightsReport: loaded, missing (net layers with parameters
    that ``stored`` lacks), unused (``stored`` layers the net lacks),
    skipped. Every layer is checked before any blob is written, so an error
    leaves the net as it was."""
    report = WeightsReport(str(source))
    planned = []
    for name, layer in net.layer_dict.items():
        if not layer.blobs:
            continue
        if name not in stored:
            report.missing.append(name)
            continue
        problem, conformed = _mismatch(name, stored[name], layer, exact, words)
        problem = problem or _out_of_range(name, conformed, layer, words[0])
        if problem:
            if not skip_mismatched:
                raise WeightsError(f"{source}: {problem}{hint}")
            report.skipped.append((name, problem))
            continue
        planned.append((name, layer, conformed))
    with net.device.context():
        for name, layer, conformed in planned:
            for array, blob in zip(conformed, layer.blobs):
                if array is not blob.data:
                    blob.data[...] = net.device.asarray(array, dtype=blob.dtype)
            report.loaded.append(name)
    report.unused = [name for name in stored if name not in net.layer_dict]
    return report


def _out_of_range(name, arrays, layer, source_word):
    """Why an array would overflow the layer's blob dtype, or None."""
    for i, (array, blob) in enumerate(zip(arrays, layer.blobs)):
        if isinstance(array, np.ndarray):
            problem = range_problem(array, blob.dtype, f"layer '{name}' param {i}: "
                                                       f"{source_word}")
            if problem:
                return problem
    return None


def range_problem(array, dtype, what):
    """``"<what> holds <x>, beyond the range of <dtype>"`` when the NumPy
    float ``array`` has values that would become Inf in the narrower float
    ``dtype`` (e.g. 1e300 in float64 into float32); else None."""
    if array.size and array.dtype.kind == "f" and array.dtype.itemsize > dtype.itemsize:
        largest = float(np.abs(array).max())
        if largest > float(np.finfo(dtype).max):
            return f"{what} holds {largest:g}, beyond the range of {dtype}"
    return None


def share_layers(source_net, target_net, source):
    """Copy ``source_net``'s parameters into same-named layers of
    ``target_net`` (Caffe's ShareTrainedLayersWith, as a copy: the train net
    into a test net); shapes must be equal. ``source`` names the pair in
    messages (e.g. the solver file). Returns the WeightsReport."""
    stored = {name: [blob.data for blob in layer.blobs]
              for name, layer in source_net.layer_dict.items() if layer.blobs}
    return copy_layers(target_net, stored, source, exact=True,
                       words=("the train net", "the test net"))


def load_weights_into(net, path, skip_mismatched=False):
    """Copy a weights file into ``net``'s parameter blobs by layer name;
    returns a WeightsReport."""
    return copy_layers(net, read_layer_arrays(path), path, skip_mismatched=skip_mismatched,
                       hint=" (pass skip_mismatched=True to skip it)")


def save_native(net, path, meta=None):
    """Write every layer's parameters in the native snapshot format."""
    with net.device.context():  # the copies to the host are ordered on the net's device
        arrays = {f"{name}/{i}": to_numpy(blob.data)
                  for name, layer in net.layer_dict.items()
                  for i, blob in enumerate(layer.blobs)}
    save_arrays(path, arrays, dict(meta or {}, net=net.name, phase=net.phase))
