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
import argparse
import dataclasses
import sys

import numpy as np

from layers.base import Layer, create_layer
from netdef import caffe_pb2
from netdef.blob import Blob
from netdef.device import CPU
from netdef.errors import EngineError
from netdef.net import Net
from netdef.schema import parse_text


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
    """What a check found: the worst element per blob and overall.

    ``worst_per_blob`` maps each checked blob's label to its worst
    ``ElementCheck`` (None when none of its elements was compared: all at
    kinks, or the blob is empty); ``blob_sizes`` maps the labels to their
    element counts.
    """
    tolerance: float
    worst_per_blob: dict
    checked: int
    skipped_kinks: int
    blob_sizes: dict = dataclasses.field(default_factory=dict)

    @property
    def worst(self):
        candidates = [c for c in self.worst_per_blob.values() if c is not None]
        return max(candidates, key=lambda c: c.error) if candidates else None

    @property
    def unchecked_blobs(self):
        """Labels of non-empty blobs none of whose elements was compared: a
        check of such a blob proves nothing (every element sat on a kink)."""
        return [label for label, c in self.worst_per_blob.items()
                if c is None and self.blob_sizes.get(label, 1) > 0]

    @property
    def passed(self):
        """At least one element compared in all, and in every non-empty
        blob, and every compared element within the tolerance: a check that
        compared nothing has not passed."""
        if self.checked == 0 or self.unchecked_blobs:
            return False
        return self.worst.error <= self.tolerance

    def report(self):
        lines = [f"{'blob':<28} {'worst index':<18} {'analytic':>13} {'numeric':>13} {'rel err':>9}"]
        for label, c in self.worst_per_blob.items():
            if c is None:
                empty = self.blob_sizes.get(label, 1) == 0
                lines.append(f"{label:<28} " + ("(empty)" if empty else "(no element checked)  FAIL"))
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
    if isinstance(spec, Layer):
        return spec
    if isinstance(spec, str):
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
        if layer.param.top:
            num_tops = len(layer.param.top)
        elif layer.exact_tops is not None:
            num_tops = layer.exact_tops
        else:
            num_tops = layer.min_tops or 1
    tops = [Blob((), dtype=layer.dtype, xp=xp) for _ in range(num_tops)]
    layer.setup(bottoms, tops)
    layer.reshape(bottoms, tops)
    return bottoms, tops


def check_layer(spec, bottom_arrays, *, check_bottoms=None, check_params=True,
                phase="TRAIN", eps=1e-6, tolerance=1e-5, seed=0, num_tops=None,
                max_per_blob=None, param_arrays=None):
    """Gradient-check one layer in float64 on the CPU.

    spec: prototxt text, LayerParameter or Layer (float64).
    bottom_arrays: the inputs; integer inputs (labels, RoIs) are never
        perturbed. check_bottoms: indices of bottoms to check (default: every
        bottom the layer can propagate to). check_params: check ``layer.blobs``.
    max_per_blob: check a random subset of that many elements per blob.
    param_arrays: values for ``layer.blobs`` after setup (default: fillers).
    Returns a ``GradCheckResult``.
    """
    layer = build_layer(spec, phase=phase, dtype=np.float64, seed=seed)
    arrays = [np.array(a, dtype=np.float64) if np.asarray(a).dtype.kind == "f" else np.array(a)
              for a in bottom_arrays]
    bottoms, tops = setup_layer(layer, arrays, num_tops)
    for blob, values in zip(layer.blobs, param_arrays or []):
        blob.data[...] = np.reshape(values, blob.shape)
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
    return GradCheckResult(tolerance, worst, checked, skipped,
                           {label: int(blob.data.size) for label, blob in targets})


# -- whole nets ------------------------------------------------------------------

@dataclasses.dataclass
class LayerCheckRow:
    """One line of a net check: the layer and its result (None = nothing to check)."""
    layer: str
    type: str
    result: GradCheckResult = None
    note: str = ""


def random_inputs(net, rng):
    """Random inputs: Gaussian for blobs that take gradients, zeros for blobs
    only read as labels/indices (every consumer, seen through Split layers,
    refuses a gradient there)."""
    consumers = {}
    for lp, layer in zip(net.layer_params, net.layers):
        for j, bottom in enumerate(lp.bottom):
            consumers.setdefault(bottom, []).append((lp, layer, j))

    def label_like(name):
        for lp, layer, j in consumers.get(name, []):
            if lp.type == "Split":
                if not all(label_like(top) for top in lp.top):
                    return False
            elif layer.allow_force_backward(j):
                return False
        return True

    return {name: np.zeros(net.blobs[name].shape) if label_like(name)
            else rng.standard_normal(net.blobs[name].shape) for name in net.inputs}


def check_net(model, *, phase="TRAIN", inputs=None, seed=0, max_per_blob=20,
              tolerance=1e-4, stages=(), level=0):
    """Gradient-check every layer of a net at the inputs it really sees.

    model: prototxt path or text (or a NetParameter). The net is built in
    float64 on the CPU; ``inputs`` (name -> array) default to random values
    (see ``random_inputs``). Each layer is checked with the bottoms it
    received during one forward pass and the net's own parameter values.
    Returns a list of ``LayerCheckRow``.
    """
    net = Net(model, phase, device=CPU, dtype=np.float64, stages=stages, level=level, seed=seed)
    rng = np.random.default_rng(seed)
    values = inputs if inputs is not None else random_inputs(net, rng)
    net.set_input_arrays(**values)
    rows = []
    for i, (lp, layer) in enumerate(zip(net.layer_params, net.layers)):
        bottoms, tops = net.bottom_blobs[i], net.top_blobs[i]
        layer.reshape(bottoms, tops)
        captured = [b.data.copy() for b in bottoms]
        layer.forward(bottoms, tops)
        checkable = [j for j, a in enumerate(captured) if layer.allow_force_backward(j)]
        if not checkable and not layer.blobs:
            rows.append(LayerCheckRow(lp.name, lp.type, note="no gradient to check"))
            continue
        if getattr(layer, "random_forward", False) and phase == "TRAIN":
            rows.append(LayerCheckRow(lp.name, lp.type, note="random forward in TRAIN: not checkable"))
            continue
        spec = type(lp)()
        spec.CopyFrom(lp)
        result = check_layer(spec, captured, check_bottoms=checkable, phase=net.phase,
                             seed=seed, num_tops=len(tops), max_per_blob=max_per_blob,
                             tolerance=tolerance, param_arrays=[b.data for b in layer.blobs])
        rows.append(LayerCheckRow(lp.name, lp.type, result))
    return rows


def format_net_check(rows):
    lines = [f"{'layer':<28} {'type':<18} {'checked':>8} {'kinks':>6} {'worst blob':<24} "
             f"{'rel err':>9}  status"]
    for row in rows:
        if row.result is None:
            lines.append(f"{row.layer:<28} {row.type:<18} {'-':>8} {'-':>6} {'':<24} {'':>9}  {row.note}")
            continue
        worst = row.result.worst
        lines.append(f"{row.layer:<28} {row.type:<18} {row.result.checked:>8} "
                     f"{row.result.skipped_kinks:>6} {(worst.blob if worst else '-'):<24} "
                     f"{(worst.error if worst else 0):>9.2e}  "
                     f"{'ok' if row.result.passed else 'FAIL'}")
    failed = sum(1 for r in rows if r.result is not None and not r.result.passed)
    lines.append(f"{len(rows)} layers, {failed} failed")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m netdef.gradcheck",
        description="Finite-difference gradient check of every layer of a network "
                    "(float64, CPU, random inputs).")
    parser.add_argument("prototxt")
    parser.add_argument("--phase", choices=("TRAIN", "TEST"), default="TRAIN")
    parser.add_argument("--stage", action="append", default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-per-blob", type=int, default=20,
                        help="elements checked per blob (random subset)")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    try:
        rows = check_net(args.prototxt, phase=args.phase, seed=args.seed, stages=args.stage,
                         max_per_blob=args.max_per_blob, tolerance=args.tolerance)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_net_check(rows))
    return 1 if any(r.result is not None and not r.result.passed for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
