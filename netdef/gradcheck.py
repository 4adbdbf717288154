"""Finite-difference gradient checking of layers (and, through
``check_net``, whole nets).

The checked quantity is ``L = sum_k sum(w_k * top_k)`` with fixed random
weights ``w_k``: backward is run with ``top_k.diff = w_k`` and every element
of the checked bottoms and parameter blobs is compared with the float64
central difference ``(L(x + eps) - L(x - eps)) / (2 eps)``.

A point where the one-sided differences disagree lies on a kink (ReLU at 0,
max pooling ties, the |d| = 1/sigma^2 switch of smooth L1) and is skipped and
counted, as Caffe's checker does with its ``kink`` argument.

Usage::

    from netdef.gradcheck import check_layer
    result = check_layer('type: "ReLU"', [np.random.randn(2, 3, 4, 4)])
    assert result.passed, result.report()
"""
import dataclasses

import numpy as np

from netdef.blob import Blob
from netdef.device import CPU


@dataclasses.dataclass
class ElementCheck:
    """One compared element: blob label, flat index, both gradients."""
    blob: str
    index: tuple
    analytic: float
    numeric: float

    @property
    def error(self):
        scale = max(abs(self.analytic), abs(self.numeric), 1.0)
        return abs(self.analytic - self.numeric) / scale


@dataclasses.dataclass
class GradCheckResult:
    """What a check found: the worst element per blob and overall."""
    tolerance: float
    worst_per_blob: dict
    checked: int
    skipped_kinks: int

    @property
    def worst(self):
        candidates = [c for c in self.worst_per_blob.values() if c is not None]
        return max(candidates, key=lambda c: c.error) if candidates else None

    @property
    def passed(self):
        worst = self.worst
        return worst is None or worst.error <= self.tolerance

    def report(self):
        lines = [f"{'blob':<28} {'worst index':<18} {'analytic':>13} {'numeric':>13} {'rel err':>9}"]
        for label, c in self.worst_per_blob.items():
            if c is None:
                lines.append(f"{label:<28} (no element checked)")
                continue
            mark = "" if c.error <= self.tolerance else "  FAIL"
            lines.append(f"{label:<28} {str(c.index):<18} {c.analytic:>13.6g} "
                         f"{c.numeric:>13.6g} {c.error:>9.2e}{mark}")
        lines.append(f"{self.checked} elements checked, {self.skipped_kinks} skipped at kinks, "
                     f"tolerance {self.tolerance:g}: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def build_layer(spec, phase="TRAIN", device=CPU, dtype=np.float64, seed=0):
    """A Layer from prototxt text of one LayerParameter, a LayerParameter, or
    an existing Layer (returned as is)."""
    from layers.base import Layer, create_layer
    if isinstance(spec, Layer):
        return spec
    from netdef import caffe_pb2
    if isinstance(spec, str):
        from netdef.schema import parse_text
        spec = parse_text(spec, caffe_pb2.LayerParameter(), "<layer spec>")
    if not spec.name:
        spec.name = spec.type.lower() or "layer"
    return create_layer(spec, phase=phase, device=device, dtype=dtype, seed=seed)


def setup_layer(layer, bottom_arrays, num_tops=None):
    """Wrap arrays in Blobs, create top Blobs, run setup and reshape.

    Returns ``(bottoms, tops)``. The number of tops is the spec's ``top``
    count, or ``num_tops``, or the layer's exact/min top count.
    """
    xp = layer.device.xp
    bottoms = [Blob.from_array(xp.asarray(a)) for a in bottom_arrays]
    if num_tops is None:
        num_tops = len(layer.param.top) or layer.exact_tops or layer.min_tops or 1
    tops = [Blob((), dtype=layer.dtype, xp=xp) for _ in range(num_tops)]
    layer.setup(bottoms, tops)
    layer.reshape(bottoms, tops)
    return bottoms, tops


def check_layer(spec, bottom_arrays, *, check_bottoms=None, check_params=True,
                phase="TRAIN", eps=1e-6, tolerance=1e-5, seed=0, num_tops=None,
                max_per_blob=None):
    """Gradient-check one layer in float64 on the CPU.

    spec: prototxt text, LayerParameter or Layer (float64).
    bottom_arrays: the inputs; integer inputs (labels, RoIs) are never
        perturbed. check_bottoms: indices of bottoms to check (default: every
        bottom the layer can propagate to). check_params: check ``layer.blobs``.
    max_per_blob: check a random subset of that many elements per blob.
    Returns a ``GradCheckResult``.
    """
    layer = build_layer(spec, phase=phase, dtype=np.float64, seed=seed)
    arrays = [np.array(a, dtype=np.float64) if np.asarray(a).dtype.kind == "f" else np.array(a)
              for a in bottom_arrays]
    bottoms, tops = setup_layer(layer, arrays, num_tops)
    if check_bottoms is None:
        check_bottoms = [i for i, a in enumerate(arrays)
                         if a.dtype.kind == "f" and layer.allow_force_backward(i)]
    rng = np.random.default_rng(seed + 1)

    layer.forward(bottoms, tops)
    weights = [rng.standard_normal(t.shape) for t in tops]

    def objective():
        layer.reshape(bottoms, tops)
        layer.forward(bottoms, tops)
        return sum(float(np.sum(w * t.data)) for w, t in zip(weights, tops))

    # Analytic gradients.
    objective()
    for w, t in zip(weights, tops):
        t.diff[...] = w
    for b in bottoms:
        b.diff[...] = 0
    for p in layer.blobs:
        p.diff[...] = 0
    propagate = [i in check_bottoms for i in range(len(bottoms))]
    layer.backward(tops, propagate, bottoms)

    targets = [(f"bottom {i} '{layer.bottom_name(i)}'", bottoms[i]) for i in check_bottoms]
    if check_params:
        targets += [(f"param {j}", p) for j, p in enumerate(layer.blobs)]
    analytic = {label: blob.diff.copy() for label, blob in targets}

    worst, checked, skipped = {}, 0, 0
    for label, blob in targets:
        worst[label] = None
        flat = blob.data.reshape(-1)
        indices = np.arange(flat.size)
        if max_per_blob is not None and flat.size > max_per_blob:
            indices = np.sort(rng.choice(flat.size, max_per_blob, replace=False))
        for k in indices:
            original = flat[k]
            base = objective()
            flat[k] = original + eps
            plus = objective()
            flat[k] = original - eps
            minus = objective()
            flat[k] = original
            forward_slope, backward_slope = (plus - base) / eps, (base - minus) / eps
            if abs(forward_slope - backward_slope) > 1e-3 * max(1.0, abs(forward_slope), abs(backward_slope)):
                skipped += 1
                continue
            check = ElementCheck(label, np.unravel_index(k, blob.shape),
                                 float(analytic[label].reshape(-1)[k]),
                                 (plus - minus) / (2 * eps))
            checked += 1
            if worst[label] is None or check.error > worst[label].error:
                worst[label] = check
    objective()
    return GradCheckResult(tolerance, worst, checked, skipped)
