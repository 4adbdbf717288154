"""The solver's NaN/Inf guard: finding the first non-finite blob of a net
and the error that names it.

Training stops with a NumericalError whose message names the first
offending blob and the layer that made it (design section 7); the error
carries ``iter``, ``blob``, ``layer`` and ``last_snapshot`` for callers.
The per-pass check is ``sum_of_squares`` of the flat gradient buffers (one
reduction, one host sync); the search for the offending blob runs only once
it fails.
"""
import collections

import numpy as np

from netdef.device import array_module
from netdef.errors import NumericalError

__all__ = ["finite_all", "sum_of_squares", "non_finite_kind", "locate_non_finite",
           "locate_non_finite_weights", "numerical_error"]


def finite_all(arrays):
    """True when every element of every array is finite (one device sync)."""
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return True
    xp = array_module(arrays[0])
    return bool(xp.stack([xp.isfinite(a).all() for a in arrays]).all())


def non_finite_kind(array):
    """"nan", "inf" or "nan and inf" for an array with non-finite values, else None."""
    xp = array_module(array)
    nan, inf = bool(xp.isnan(array).any()), bool(xp.isinf(array).any())
    return " and ".join(k for k, v in (("nan", nan), ("inf", inf)) if v) or None


def numerical_error(message, it, blob, layer, last_snapshot):
    """A NumericalError carrying where it happened."""
    error = NumericalError(message)
    error.iter, error.blob, error.layer = it, blob, layer
    error.last_snapshot = last_snapshot
    return error


def _writers(net):
    """id(blob) -> [(layer name, type)] of the layers writing it, in order."""
    writers = collections.defaultdict(list)
    for lp, tops in zip(net.layer_params, net.top_blobs):
        for top in tops:
            writers[id(top)].append((lp.name, lp.type))
    return writers


def locate_non_finite(net):
    """``(description, blob, layer)`` of the first non-finite values after a
    forward + backward: the first top (in forward order) whose data is not
    finite; else the first layer in backward order whose parameter or
    bottom gradients are not finite; ``(None, None, None)`` when none is.
    Under a lean memory plan (``Net.lean_memory``) only the blobs whose
    storage was not given back are looked at."""
    writers = _writers(net)

    def in_place(blob, layer_name):
        others = [f"'{n}' ({t})" for n, t in writers[id(blob)] if n != layer_name]
        return f"; layers working in place on it: {', '.join(others)}" if others else ""

    for lp, tops in zip(net.layer_params, net.top_blobs):
        for name, top in zip(lp.top, tops):
            if writers[id(top)][0][0] != lp.name or top.is_released:
                continue  # an in-place top (reported with its producer), or given back
            kind = non_finite_kind(top.data)
            if kind:
                return (f"non-finite values ({kind}) in blob '{name}', the output of layer "
                        f"'{lp.name}' (type {lp.type}){in_place(top, lp.name)}", name, lp.name)
    for i in reversed(range(len(net.layers))):
        lp, layer = net.layer_params[i], net.layers[i]
        if not net.layer_need_backward[i]:
            continue
        for k, blob in enumerate(layer.blobs):
            kind = non_finite_kind(blob.diff)
            if kind:
                return (f"non-finite values ({kind}) in the gradient of parameter {k} of "
                        f"layer '{lp.name}' (type {lp.type})", f"{lp.name}/{k}", lp.name)
        for name, bottom, needs in zip(lp.bottom, net.bottom_blobs[i],
                                       net.bottom_need_backward[i]):
            kind = needs and bottom.has_diff and non_finite_kind(bottom.diff)
            if kind:
                return (f"non-finite values ({kind}) in the gradient of blob '{name}', "
                        f"computed by the backward of layer '{lp.name}' (type {lp.type})"
                        f"{in_place(bottom, lp.name)}", name, lp.name)
    return None, None, None


def locate_non_finite_weights(net):
    """``(layer param, index, kind)`` of the first parameter blob of ``net``
    holding non-finite data, or None when all are finite."""
    if finite_all([blob.data for layer in net.layers for blob in layer.blobs]):
        return None
    for lp, layer in zip(net.layer_params, net.layers):
        for k, blob in enumerate(layer.blobs):
            kind = non_finite_kind(blob.data)
            if kind:
                return lp, k, kind
    return None


def sum_of_squares(arrays):
    """The sum of the squares of every element of the 1-D ``arrays``, as a
    Python float: one reduction per array (a dot product, no temporary) and
    one host sync. It is finite exactly when every element is, unless the
    sum overflowed (``finite_all`` tells the two apart)."""
    sums = [array_module(a).dot(a, a) for a in arrays if a.size]
    if not sums:
        return 0.0
    if len(sums) == 1:
        return float(sums[0])
    return float(sum(s.astype(np.float64) for s in sums))
