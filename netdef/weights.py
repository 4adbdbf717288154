"""Copying weights between files and a Net, by layer name.

Two formats are read: Caffe's binary ``.caffemodel`` (``netdef.caffemodel``)
and the native pickle-free snapshot (``netdef.snapshot_format``), told apart
by content (the native format is a zip archive), not by file name.
"""
import dataclasses
import zipfile

from netdef.caffemodel import conform_blob
from netdef.device import to_numpy
from netdef.errors import WeightsError


@dataclasses.dataclass
class WeightsReport:
    """What ``Net.copy_from`` did, layer by layer."""
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


def read_layer_arrays(path):
    """layer name -> list of arrays, from either format."""
    path = str(path)
    if zipfile.is_zipfile(path):
        from netdef.snapshot_format import load_arrays
        arrays, _ = load_arrays(path)
        layers = {}
        for key in sorted(arrays, key=_param_key_order):
            name, index = key.rsplit("/", 1)
            layers.setdefault(name, []).append(arrays[key])
        return layers
    from netdef.caffemodel import caffemodel_blobs, read_caffemodel
    return caffemodel_blobs(read_caffemodel(path))


def _param_key_order(key):
    name, index = key.rsplit("/", 1)
    return (name, int(index))


def load_weights_into(net, path, skip_mismatched=False):
    """Copy arrays into ``net``'s parameter blobs; returns a WeightsReport."""
    stored = read_layer_arrays(path)
    report = WeightsReport(str(path))
    for name, layer in net.layer_dict.items():
        if not layer.blobs:
            continue
        if name not in stored:
            report.missing.append(name)
            continue
        arrays = stored[name]
        problem, conformed = None, []
        if len(arrays) != len(layer.blobs):
            problem = (f"layer '{name}': the file has {len(arrays)} blob(s), "
                       f"the net has {len(layer.blobs)}")
        else:
            try:
                conformed = [conform_blob(array, blob.shape, f"layer '{name}' param {i}")
                             for i, (array, blob) in enumerate(zip(arrays, layer.blobs))]
            except WeightsError as exc:
                problem = str(exc)
        if problem:
            if not skip_mismatched:
                raise WeightsError(f"{path}: {problem} (pass skip_mismatched=True to skip it)")
            report.skipped.append((name, problem))
            continue
        for array, blob in zip(conformed, layer.blobs):
            blob.data[...] = net.device.asarray(array, dtype=blob.dtype)
        report.loaded.append(name)
    report.unused = [name for name in stored if name not in net.layer_dict]
    return report


def save_native(net, path, meta=None):
    """Write every layer's parameters in the native snapshot format."""
    from netdef.snapshot_format import save_arrays
    arrays = {f"{name}/{i}": to_numpy(blob.data)
              for name, layer in net.layer_dict.items() for i, blob in enumerate(layer.blobs)}
    save_arrays(path, arrays, dict(meta or {}, net=net.name, phase=net.phase))
