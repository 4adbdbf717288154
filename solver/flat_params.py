"""The trained parameters as views into flat buffers, so that the solver's
work per iteration is a handful of whole-buffer array operations instead of
a handful per parameter blob.

For the parameters of one dtype (a Net has one device, so this is "one per
device and dtype"), ``FlatParams`` allocates

    data, diff        (N,)  N = the total count of the parameters
    history[k]        (N,)  one per history array of the update rule

and makes each parameter blob ``adopt`` its slices (``netdef.blob``): the
layers read and write the same memory as before, the solver sees it whole.
The parameters are laid out sorted by lr_mult and then decay_mult, so each
multiplier takes a few contiguous runs (``lr_runs``, ``decay_runs``:
``(slice, multiplier)``): a per-element multiplier is then a scalar
operation per run, with no multiplier arrays in memory, and every element
goes through the same scalar arithmetic as a per-parameter update.
"""
import itertools

import numpy as np

from netdef.device import array_module

__all__ = ["FlatParams", "flatten_params"]


class FlatParams:
    """Flat data, diff and history buffers of parameters of one dtype.

    FlatParams(params, history_count, device)

    params: LearnableParams (netdef.net) of one dtype on ``device``, each
        blob once. history_count: how many history buffers the rule keeps.
    Attributes: ``params`` (in buffer order), ``data``, ``diff``,
    ``history`` (tuple of (N,) arrays), ``lr_runs`` and ``decay_runs``
    (lists of ``(slice, multiplier)``; runs of decay_mult 0 are left out).
    """

    def __init__(self, params, history_count, device):
        self.params = _layout(params)
        self.device = device
        # The solver's sum of the earlier passes' gradients of an iteration
        # (iter_size > 1: solver.sgd.Solver._accumulate), None between them.
        self.pass_sum = None
        ends = list(itertools.accumulate(lp.blob.count for lp in self.params))
        self._slices = [slice(end - lp.blob.count, end) for lp, end in zip(self.params, ends)]
        total = ends[-1] if ends else 0
        with device.context():
            # zeros_like a parameter: the same kind of array (device, dtype).
            template = self.params[0].blob.data
            self.data, self.diff, *history = (
                device.xp.zeros_like(template, shape=(total,)) for _ in range(2 + history_count))
        self.history = tuple(history)
        self.lr_runs = _runs(self._slices, [lp.lr_mult for lp in self.params])
        self.decay_runs = [(where, m) for where, m in
                           _runs(self._slices, [lp.decay_mult for lp in self.params]) if m]
        self._index = {id(lp): i for i, lp in enumerate(self.params)}
        self._views = [(self._view(self.data, i), self._view(self.diff, i))
                       for i in range(len(self.params))]
        self.claim()

    def _view(self, buffer, i):
        return buffer[self._slices[i]].reshape(self.params[i].blob.shape)

    def history_views(self, lp):
        """The history arrays of parameter ``lp``: views of its shape."""
        i = self._index[id(lp)]
        return tuple(self._view(buffer, i) for buffer in self.history)

    def rates(self, lr):
        """``(slice, lr x lr_mult)`` runs: the rates of the update rule
        (solver.update_rules) for the policy's rate ``lr``."""
        return [(where, lr * mult) for where, mult in self.lr_runs]

    def add_weight_decay(self, weight_decay, l1):
        """Caffe's Regularize: diff += weight_decay x decay_mult x data (L2)
        or x sign(data) (L1), run by run."""
        xp, real = array_module(self.data), self.data.dtype.type
        for where, mult in self.decay_runs:
            decay = weight_decay * mult
            if decay:
                data = self.data[where]
                part = self.diff[where]   # a view, updated in place
                part += real(decay) * (xp.sign(data) if l1 else data)

    def claim(self):
        """Make every parameter blob keep its values in these buffers again
        (another solver on the same net may have taken them over since; its
        current values are copied in). No array work when nothing moved."""
        with self.device.context():
            for lp, (data, diff) in zip(self.params, self._views):
                if lp.blob.data is not data:
                    lp.blob.adopt(data, diff)

    def __repr__(self):
        return (f"FlatParams({len(self.params)} blobs, {self.data.size} values, "
                f"{self.data.dtype.name}, {len(self.lr_runs)} lr run(s), "
                f"{len(self.decay_runs)} decay run(s))")


def _layout(params):
    """``params`` sorted by lr_mult; within one lr_mult by decay_mult, the
    decay_mult the previous lr_mult ended with first, so that it continues
    that run (e.g. (1, 1), (2, 1), (2, 0): two lr runs and one decay run)."""
    ordered, last = [], None
    for _, group in itertools.groupby(sorted(params, key=lambda lp: lp.lr_mult),
                                      key=lambda lp: lp.lr_mult):
        group = sorted(group, key=lambda lp: (lp.decay_mult != last, lp.decay_mult))
        ordered += group
        last = group[-1].decay_mult
    return ordered


def _runs(slices, values):
    """Adjacent slices with equal values merged: [(slice, value)]."""
    runs = []
    for where, value in zip(slices, values):
        if runs and runs[-1][1] == value:
            runs[-1] = (slice(runs[-1][0].start, where.stop), value)
        else:
            runs.append((where, value))
    return runs


def flatten_params(params, history_count, device):
    """One FlatParams per dtype of ``params`` (in the order the dtypes first
    appear). A blob listed twice is an error: two slices cannot both be its
    storage."""
    by_dtype, seen = {}, set()
    for lp in params:
        if id(lp.blob) in seen:
            raise ValueError(f"parameter {lp.index} of layer '{lp.layer}' is listed twice "
                             f"among the parameters to update")
        seen.add(id(lp.blob))
        by_dtype.setdefault(np.dtype(lp.blob.dtype), []).append(lp)
    return [FlatParams(group, history_count, device) for group in by_dtype.values()]
