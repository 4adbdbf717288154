"""Caffe's update rules: what a solver does with one parameter's gradient
once it is clipped, normalized and regularized (``ComputeUpdateValue`` of
Caffe's sgd_solver.cpp, nesterov_solver.cpp, adagrad_solver.cpp,
rmsprop_solver.cpp, adadelta_solver.cpp and adam_solver.cpp).

The solver file picks one by ``type`` (or the legacy ``solver_type`` enum,
which netdef.schema turns into ``type``)::

    type        history per parameter        update value (g: the gradient,
                                             r: lr x lr_mult, t = iter + 1)
    SGD         v (momentum)                 v = momentum v + r g;  u = v
    Nesterov    v (momentum)                 v' = momentum v + r g;
                                             u = (1 + momentum) v' - momentum v
    AdaGrad     s (sum of g^2)               s += g^2;  u = r g / (sqrt(s) + delta)
    RMSProp     s (mean of g^2)              s = rms_decay s + (1 - rms_decay) g^2;
                                             u = r g / (sqrt(s) + delta)
    AdaDelta    s (mean of g^2),             s = momentum s + (1 - momentum) g^2;
                d (mean of dx^2)             dx = g sqrt((d + delta) / (s + delta));
                                             d = momentum d + (1 - momentum) dx^2;
                                             u = r dx
    Adam        m, v (moments)               m = momentum m + (1 - momentum) g;
                                             v = momentum2 v + (1 - momentum2) g^2;
                                             u = r sqrt(1 - momentum2^t) /
                                                 (1 - momentum^t) m / (sqrt(v) + delta)

and the solver then does ``data -= u`` (Caffe's ``Net::Update``), ``u`` being
left in the parameter's diff as in Caffe. AdaDelta and Adam use ``base_lr``
and ``lr_mult`` like the others (Caffe's AdaDelta examples set base_lr 1.0).

History arrays have the parameter's shape and live in the solver's
``history`` dict under ``"<layer>/<i>"`` + the rule's suffix: ``""`` for the
momentum of SGD and Nesterov (the key snapshots always used), ``"/m"``,
``"/v"`` for Adam and so on (``UpdateRule.suffixes``), so a snapshot says
which kind of history it holds.
"""
import difflib
import math

from netdef.device import array_module
from netdef.errors import NetDefinitionError

__all__ = ["UpdateRule", "SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam",
           "RULES", "create_rule"]


class UpdateRule:
    """One solver type: the fields it reads, its history and its update.

    UpdateRule(param, source): ``param`` a SolverParameter, ``source`` the
    solver file's name for error messages. Invalid fields raise
    NetDefinitionError naming the file, the type and the field.
    """
    #: Caffe's ``type`` string.
    type = ""
    #: One suffix per history array kept for each parameter.
    suffixes = ()

    def __init__(self, param, source):
        self.source = source
        # Python floats of the float32 fields, as Caffe reads them.
        self.momentum = float(param.momentum)
        self.momentum2 = float(param.momentum2)
        self.delta = float(param.delta)
        self.rms_decay = float(param.rms_decay)
        self.validate()

    def validate(self):
        """Check the fields this rule needs (subclasses)."""

    def _check(self, field, ok, expected):
        if not ok:
            raise NetDefinitionError(
                f"{self.source}: solver type '{self.type}' needs {field} {expected}, "
                f"found {getattr(self, field):g}")

    def _check_decay(self, field):
        value = getattr(self, field)
        self._check(field, 0 <= value < 1, "in [0, 1)")

    def _check_delta(self):
        # delta keeps the division finite where a history is still zero.
        self._check("delta", self.delta > 0, "> 0")

    def history_keys(self, key):
        """The ``history`` keys of the parameter keyed ``key`` ("<layer>/<i>")."""
        return [key + suffix for suffix in self.suffixes]

    def compute_update_value(self, diff, history, rate, it):
        """Turn ``diff`` into the update value, in place.

        diff: the parameter's gradient array (any shape; clipped, normalized
            and regularized already); on return the value the solver
            subtracts from the data.
        history: tuple of this parameter's history arrays (``diff``'s shape
            and dtype, one per suffix), updated in place.
        rate: the learning rate times the parameter's ``lr_mult``: a float
            for the whole array, or for a flat buffer of several parameters
            (solver.flat_params) a list of ``(slice, float)`` runs covering
            it, each run scaled by its own rate.
        it: the iteration being applied (0-based; Adam's t is it + 1).
        """
        # The base class is abstract: each of the six rules defines this.
        raise NotImplementedError(f"{type(self).__name__} defines no update formula")

    def __repr__(self):
        return f"{type(self).__name__}()"


class SGD(UpdateRule):
    """Momentum SGD (Caffe's SGDSolver): v = momentum v + r g; u = v."""
    type = "SGD"
    suffixes = ("",)

    def validate(self):
        self._check_decay("momentum")

    def compute_update_value(self, diff, history, rate, it):
        (v,) = history
        real = diff.dtype.type
        # The order of operations is that of the original SGDSolver, so
        # default runs stay bit-identical.
        _scale(diff, rate)
        v *= real(self.momentum)
        v += diff
        diff[...] = v


class Nesterov(UpdateRule):
    """Nesterov's accelerated gradient (Caffe's NesterovSolver): the new
    momentum v', then a step back along the old one:
    u = (1 + momentum) v' - momentum v."""
    type = "Nesterov"
    suffixes = ("",)

    def validate(self):
        self._check_decay("momentum")

    def compute_update_value(self, diff, history, rate, it):
        (v,) = history
        real, m = diff.dtype.type, self.momentum
        previous = v.copy()                  # Caffe's update_ buffer
        _scale(diff, rate)
        v *= real(m)
        v += diff
        previous *= real(-m)
        previous += real(1 + m) * v
        diff[...] = previous


class AdaGrad(UpdateRule):
    """AdaGrad (Caffe's AdaGradSolver): s += g^2; u = r g / (sqrt(s) + delta).
    Caffe refuses momentum with it."""
    type = "AdaGrad"
    suffixes = ("/grad_sq_sum",)

    def validate(self):
        self._check("momentum", self.momentum == 0, "0 (momentum cannot be used with AdaGrad)")
        self._check_delta()

    def compute_update_value(self, diff, history, rate, it):
        (s,) = history
        s += diff * diff
        _scaled_by_rms(diff, s, self.delta, rate)


class RMSProp(UpdateRule):
    """RMSProp (Caffe's RMSPropSolver): s = rms_decay s + (1 - rms_decay) g^2;
    u = r g / (sqrt(s) + delta). Caffe refuses momentum with it."""
    type = "RMSProp"
    suffixes = ("/grad_sq_mean",)

    def validate(self):
        self._check("momentum", self.momentum == 0, "0 (momentum cannot be used with RMSProp)")
        self._check_decay("rms_decay")
        self._check_delta()

    def compute_update_value(self, diff, history, rate, it):
        (s,) = history
        _decayed_mean(s, diff * diff, self.rms_decay)
        _scaled_by_rms(diff, s, self.delta, rate)


class AdaDelta(UpdateRule):
    """AdaDelta (Caffe's AdaDeltaSolver, ``momentum`` is the decay):
    s = momentum s + (1 - momentum) g^2; dx = g sqrt((d + delta) / (s + delta));
    d = momentum d + (1 - momentum) dx^2; u = r dx."""
    type = "AdaDelta"
    suffixes = ("/grad_sq_mean", "/update_sq_mean")

    def validate(self):
        self._check_decay("momentum")
        self._check_delta()

    def compute_update_value(self, diff, history, rate, it):
        s, d = history
        real = diff.dtype.type
        _decayed_mean(s, diff * diff, self.momentum)
        # delta is added to both histories (not to the ratio), as in Caffe.
        ratio = d + real(self.delta)
        ratio /= s + real(self.delta)
        diff *= _sqrt(ratio)
        _decayed_mean(d, diff * diff, self.momentum)
        _scale(diff, rate)


class Adam(UpdateRule):
    """Adam (Caffe's AdamSolver; beta1 = momentum, beta2 = momentum2,
    epsilon = delta, added outside the square root): the bias correction is
    folded into the rate, r sqrt(1 - beta2^t) / (1 - beta1^t), t = iter + 1."""
    type = "Adam"
    suffixes = ("/m", "/v")

    def validate(self):
        self._check_decay("momentum")
        self._check_decay("momentum2")
        self._check_delta()

    def compute_update_value(self, diff, history, rate, it):
        m, v = history
        real = diff.dtype.type
        t = it + 1
        correction = math.sqrt(1 - self.momentum2 ** t) / (1 - self.momentum ** t)
        _decayed_mean(m, diff, self.momentum)
        _decayed_mean(v, diff * diff, self.momentum2)
        denominator = _sqrt(v)
        denominator += real(self.delta)
        array_module(diff).divide(m, denominator, out=diff)
        # Caffe rounds the local rate and the correction to the data type.
        _scale(diff, rate, real(correction))


def _decayed_mean(mean, value, decay):
    """mean = decay mean + (1 - decay) value, in place (Caffe's axpby)."""
    real = mean.dtype.type
    mean *= real(decay)
    mean += real(1 - decay) * value


def _sqrt(array):
    """The element-wise square root, on the array's device."""
    return array_module(array).sqrt(array)


def _scaled_by_rms(diff, sum_sq, delta, rate):
    """diff = rate diff / (sqrt(sum_sq) + delta), in place."""
    real = diff.dtype.type
    denominator = _sqrt(sum_sq)
    denominator += real(delta)
    diff /= denominator
    _scale(diff, rate)


def _scale(array, rate, factor=None):
    """array *= rate (x factor), in place; ``rate`` a float or ``(slice,
    float)`` runs (see UpdateRule.compute_update_value). The rate is rounded
    to the array's dtype first, as Caffe's local rate is; ``factor`` is a
    scalar of that dtype multiplied into it."""
    real = array.dtype.type
    runs = rate if isinstance(rate, (list, tuple)) else [(None, rate)]
    for where, value in runs:
        scale = real(value) if factor is None else real(value) * factor
        # A view, scaled in place (``array[where] *= s`` would copy it back).
        part = array if where is None else array[where]
        part *= scale


#: type string -> rule class, in Caffe's order.
RULES = {rule.type: rule for rule in (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)}


def create_rule(param, source):
    """The update rule named by ``param.type`` (Caffe's SolverRegistry):
    an unknown type is a NetDefinitionError naming ``source`` and listing
    the known types (and the close matches)."""
    name = param.type or "SGD"
    rule = RULES.get(name)
    if rule is None:
        close = difflib.get_close_matches(name, RULES, n=2, cutoff=0.5) or \
            [t for t in RULES if t.lower() == name.lower()]
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise NetDefinitionError(
            f"{source}: unknown solver type '{name}' (known: {', '.join(RULES)}){hint}")
    return rule(param, source)
