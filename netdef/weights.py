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
"""
import dataclasses
import zipfile

from netdef.caffemodel import caffemodel_blobs, conform_blob, read_caffemodel
from netdef.device import to_numpy
from netdef.errors import WeightsError
from netdef.snapshot_format import load_arrays, save_arrays

__all__ = ["WeightsReport", "read_layer_arrays", "group_param_keys", "copy_layers",
           "share_layers", "load_weights_into", "save_native"]


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


def group_param_keys(arrays):
    """``{"<layer>/<i>": array}`` (the native format's keys) as ``{layer:
    [array 0, array 1, ...]}`` in index order."""
    layers = {}
    for key in sorted(arrays, key=_param_key_order):
        name, _ = key.rsplit("/", 1)
        layers.setdefault(name, []).append(arrays[key])
    return layers


def _param_key_order(key):
    name, index = key.rsplit("/", 1)
    return (name, int(index))


def read_layer_arrays(path):
    """layer name -> list of NumPy arrays, from either format."""
    path = str(path)
    if zipfile.is_zipfile(path):
        arrays, _ = load_arrays(path)
        return group_param_keys(arrays)
    return caffemodel_blobs(read_caffemodel(path))


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
    skipped."""
    report = WeightsReport(str(source))
    with net.device.context():
        for name, layer in net.layer_dict.items():
            if not layer.blobs:
                continue
            if name not in stored:
                report.missing.append(name)
                continue
            problem, conformed = _mismatch(name, stored[name], layer, exact, words)
            if problem:
                if not skip_mismatched:
                    raise WeightsError(f"{source}: {problem}{hint}")
                report.skipped.append((name, problem))
                continue
            for array, blob in zip(conformed, layer.blobs):
                if array is not blob.data:
                    blob.data[...] = net.device.asarray(array, dtype=blob.dtype)
            report.loaded.append(name)
    report.unused = [name for name in stored if name not in net.layer_dict]
    return report


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
