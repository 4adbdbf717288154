"""Solver snapshots: everything needed to resume a run exactly, in one
pickle-free file, plus a Caffe ``.caffemodel`` export of the weights.

A snapshot at iteration N with prefix P is two files::

    P_iter_N.caffemodel          the train net's weights (Caffe's format, for
                                 testing, fine-tuning or Caffe itself), after
                                 the caller's export_transform if any
    P_iter_N.solverstate.npz     the resumable state (netdef.snapshot_format:
                                 an .npz of arrays plus a JSON "__meta__")

The ``.solverstate.npz`` holds

arrays:
    weights/<layer>/<i>   every parameter blob of the train net, untransformed
                          (also the non-learned ones, e.g. BatchNorm statistics)
    history/<layer>/<i>[/<kind>]  the update rule's history of each learnable
                          parameter (keyed by the layer that owns a shared
                          parameter): SGD's and Nesterov's momentum under the
                          bare key, the other rules' under a suffix
                          (grad_sq_sum, grad_sq_mean, update_sq_mean, m, v)
meta (JSON):
    kind "solverstate", version, iter, net (name), dtype, seed (the nets' seed),
    loss_window (the latest losses, oldest first, for the smoothed loss),
    solver_rng (the solver's NumPy bit-generator state),
    random_states {"train": {layer: {"seed": s, "state": {...}}},
                   "test/0": {...}, ...}  (layers with random state only),
    providers {name: state} (the caller's state providers),
    metadata {...} (the caller's metadata, e.g. box-target means/stds),
    caffemodel (file name of the export, in the same folder), solver (the
    solver file), time (seconds since the epoch), world_size and iter_size
    (ranks x iter_size images per iteration, checked by a resume; 0: not
    recorded, a snapshot older than data-parallel training).

Both files are written to a temporary file and renamed (``atomic_writer``),
the ``.caffemodel`` first: a crash or an error midway never touches an earlier
snapshot, and a ``.solverstate.npz`` only exists once its snapshot is whole.
"""
import dataclasses
import json
import os
import time

import numpy as np

from netdef.caffemodel import write_caffemodel
from netdef.device import to_numpy
from netdef.errors import WeightsError
from netdef.snapshot_format import load_arrays, save_arrays
from solver.snapshot_checks import check_arrays, check_meta

__all__ = ["SolverState", "snapshot_paths", "write_export", "STATE_SUFFIX", "MODEL_SUFFIX"]

STATE_SUFFIX = ".solverstate.npz"
MODEL_SUFFIX = ".caffemodel"
KIND = "solverstate"
VERSION = 1


def snapshot_paths(prefix, it):
    """``(solverstate path, caffemodel path)`` of the snapshot at ``it``."""
    base = f"{os.fspath(prefix)}_iter_{int(it)}"
    return base + STATE_SUFFIX, base + MODEL_SUFFIX


@dataclasses.dataclass
class SolverState:
    """The resumable state of a solver (see the module docstring).

    weights / history: dict ``"<layer>/<i>"`` -> NumPy array.
    The remaining fields are JSON-serialisable.
    """
    iter: int
    weights: dict
    history: dict
    net: str = ""
    dtype: str = "float32"
    seed: int = 0
    loss_window: list = dataclasses.field(default_factory=list)
    solver_rng: dict = dataclasses.field(default_factory=dict)
    random_states: dict = dataclasses.field(default_factory=dict)
    providers: dict = dataclasses.field(default_factory=dict)
    metadata: dict = dataclasses.field(default_factory=dict)
    caffemodel: str = ""
    solver: str = ""
    time: float = 0.0
    # The data-parallel shape of the run that wrote it (solver.world): ranks
    # and iter_size; 0 in snapshots older than these fields (unknown).
    world_size: int = 0
    iter_size: int = 0

    _JSON_FIELDS = ("iter", "net", "dtype", "seed", "loss_window", "solver_rng",
                    "random_states", "providers", "metadata", "caffemodel", "solver", "time",
                    "world_size", "iter_size")

    def meta(self):
        """The JSON part, checked to be serialisable (errors name the field)."""
        meta = {"kind": KIND, "version": VERSION}
        for name in self._JSON_FIELDS:
            value = getattr(self, name)
            try:
                json.dumps(value)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"snapshot field '{name}' is not JSON-serialisable: {exc}") from None
            meta[name] = value
        return meta

    def save(self, path):
        """Write the state to ``path`` atomically."""
        arrays = {f"weights/{k}": v for k, v in self.weights.items()}
        arrays.update({f"history/{k}": v for k, v in self.history.items()})
        meta = self.meta()
        meta["time"] = meta["time"] or time.time()
        save_arrays(path, arrays, meta)

    @classmethod
    def load(cls, path):
        """Read a ``.solverstate.npz``; a foreign, damaged or malformed file
        (metadata of the wrong type, arrays that are not finite floating
        point: solver.snapshot_checks) raises WeightsError naming it."""
        arrays, meta = load_arrays(path)
        if meta.get("kind") != KIND:
            raise WeightsError(
                f"{path}: not a solver snapshot (kind {meta.get('kind')!r}); a weights "
                f"file is loaded with Net.copy_from, a solver state with restore")
        if meta.get("version") != VERSION:
            raise WeightsError(f"{path}: solver snapshot version {meta.get('version')!r} is "
                               f"not supported (this solver reads version {VERSION})")
        check_meta(meta, path)
        weights, history = {}, {}
        for key, array in arrays.items():
            group, _, name = key.partition("/")
            if group == "weights":
                weights[name] = array
            elif group == "history":
                history[name] = array
            else:
                raise WeightsError(f"{path}: unexpected array '{key}' in a solver snapshot")
        check_arrays(weights, history, path)
        fields = {name: meta[name] for name in cls._JSON_FIELDS if name in meta}
        return cls(weights=weights, history=history, **fields)


def write_export(path, net, export_transform=None):
    """Write ``net``'s weights as a ``.caffemodel`` (atomically).

    ``export_transform(layer_name, arrays) -> arrays`` (optional) may change
    a layer's arrays on the way out (e.g. fold a normalization into them); it
    gets NumPy copies and must return as many arrays of the same shapes.
    """
    def layers():
        for lp, layer in zip(net.layer_params, net.layers):
            if not layer.blobs:
                continue
            arrays = [np.array(to_numpy(b.data)) for b in layer.blobs]
            if export_transform is not None:
                shapes = [a.shape for a in arrays]
                arrays = [np.asarray(a) for a in export_transform(lp.name, arrays)]
                if [a.shape for a in arrays] != shapes:
                    raise ValueError(
                        f"export_transform changed the arrays of layer '{lp.name}': "
                        f"expected shapes {shapes}, got {[a.shape for a in arrays]}")
            yield lp.name, lp.type, arrays

    write_caffemodel(path, layers(), name=net.name or None)
