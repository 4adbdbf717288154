"""Caffe's learning-rate policies.

The rate at iteration ``it`` (Caffe's ``SGDSolver::GetLearningRate``)::

    fixed      base_lr
    step       base_lr * gamma ^ floor(it / stepsize)
    exp        base_lr * gamma ^ it
    inv        base_lr * (1 + gamma * it) ^ (-power)
    multistep  base_lr * gamma ^ k,  k = how many of the leading stepvalues
               are <= it (Caffe walks the list in order and stops at the
               first value not reached, so an unsorted list stops early)
    poly       base_lr * (1 - it / max_iter) ^ power   (0 past max_iter)
    sigmoid    base_lr * 1 / (1 + exp(-gamma * (it - stepsize)))

The rate is a function of the iteration alone: Caffe's multistep keeps a
``current_step_`` counter, but on a run whose iteration only grows it always
equals the k above, so nothing needs saving in a snapshot.

    policy = LRPolicy.from_solver(solver_param, "solver.prototxt")
    rate = policy(1000)
"""
import difflib
import math

from netdef.errors import NetDefinitionError

__all__ = ["LRPolicy", "POLICIES"]

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


class LRPolicy:
    """One learning-rate schedule; call it with an iteration to get the rate.

    LRPolicy(policy, base_lr, *, gamma=0.0, power=0.0, stepsize=0,
             stepvalue=(), max_iter=0, source="<solver>")

    Settings a policy needs are checked here (``step`` needs stepsize > 0,
    ``poly`` needs max_iter > 0); errors raise NetDefinitionError naming
    ``source`` (the solver file).
    """

    def __init__(self, policy, base_lr, *, gamma=0.0, power=0.0, stepsize=0, stepvalue=(),
                 max_iter=0, source="<solver>"):
        self.source = source
        if not policy:
            raise NetDefinitionError(
                f"{source}: lr_policy is not set; give one of {', '.join(POLICIES)}")
        if policy not in POLICIES:
            close = difflib.get_close_matches(policy, POLICIES, n=2, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise NetDefinitionError(
                f"{source}: unknown lr_policy {policy!r} (known: {', '.join(POLICIES)}){hint}")
        self.policy = policy
        self.base_lr = float(base_lr)
        self.gamma = float(gamma)
        self.power = float(power)
        self.stepsize = int(stepsize)
        self.stepvalue = tuple(int(v) for v in stepvalue)
        self.max_iter = int(max_iter)
        if policy == "step" and self.stepsize <= 0:
            raise NetDefinitionError(
                f"{source}: lr_policy 'step' needs stepsize > 0, found {self.stepsize}")
        if policy == "poly" and self.max_iter <= 0:
            raise NetDefinitionError(
                f"{source}: lr_policy 'poly' needs max_iter > 0, found {self.max_iter}")

    @classmethod
    def from_solver(cls, param, source="<solver>"):
        """The policy a SolverParameter describes."""
        return cls(param.lr_policy, param.base_lr, gamma=param.gamma, power=param.power,
                   stepsize=param.stepsize, stepvalue=list(param.stepvalue),
                   max_iter=param.max_iter, source=source)

    def current_step(self, it):
        """Caffe's ``current_step_`` at iteration ``it`` (step / multistep)."""
        if self.policy == "step":
            return it // self.stepsize
        if self.policy == "multistep":
            k = 0
            while k < len(self.stepvalue) and it >= self.stepvalue[k]:
                k += 1
            return k
        return 0

    def __call__(self, it):
        """The learning rate at iteration ``it`` (a Python float)."""
        it = int(it)
        p = self.policy
        if p == "fixed":
            return self.base_lr
        if p in ("step", "multistep"):
            return self.base_lr * self.gamma ** self.current_step(it)
        if p == "exp":
            return self.base_lr * self.gamma ** it
        if p == "inv":
            return self.base_lr * (1.0 + self.gamma * it) ** (-self.power)
        if p == "poly":
            # Past max_iter Caffe's pow() gives NaN; the rate stays 0 instead.
            return self.base_lr * max(1.0 - it / self.max_iter, 0.0) ** self.power
        # sigmoid; exp overflows for very negative arguments, where the rate is 0.
        z = -self.gamma * (it - self.stepsize)
        return 0.0 if z > 700 else self.base_lr / (1.0 + math.exp(z))

    def __repr__(self):
        return f"LRPolicy({self.policy!r}, base_lr={self.base_lr:g})"
