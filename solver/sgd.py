"""SGDSolver: Caffe's SGD solver (momentum, weight decay, lr policies,
iter_size, gradient clipping), with exact snapshots, a NaN/Inf guard and
Ctrl-C handling.

    solver = SGDSolver("prototxt/solver.prototxt", log="train_log.jsonl")
    solver.solve()                       # or solver.step(100); solver.snapshot()
    solver.restore("out/net_iter_100.solverstate.npz")

One iteration, in Caffe's order (``Solver::Step`` and ``SGDSolver::ApplyUpdate``):

1. clear the parameter diffs; test first when ``iter % test_interval == 0``
   (at iteration 0 only with ``test_initialization``);
2. ``iter_size`` times forward + backward, gradients accumulating in the
   diffs; the loss is the mean of the ``iter_size`` losses (the NaN/Inf guard
   runs after each backward);
3. smoothed loss: the mean of the latest ``average_loss`` losses; every
   ``display`` iterations a progress line and a "train" log record;
4. the update with ``lr`` = the policy's rate at ``iter``:
   clip (when ``clip_gradients`` >= 0 and the global L2 norm of all
   gradients exceeds it, every gradient is scaled by clip / norm) ->
   normalize (divide by ``iter_size``) -> regularize (L2: diff +=
   weight_decay * decay_mult * data; L1: the same with sign(data)) ->
   momentum (history = momentum * history + lr * lr_mult * diff; diff =
   history) -> data -= diff;
5. ``iter += 1``; a snapshot when ``iter % snapshot == 0``.

Parameters with ``lr_mult`` 0 are left out of all of this (Caffe computes no
gradient for them, so their update is zero and they add nothing to the
clipping norm).

Paths in a solver file (net, train_net, test_net, weights) are looked up
relative to the solver file's folder first, then relative to the current
directory (Caffe's rule). A relative ``snapshot_prefix`` goes under the solver
file's folder when its folder exists there, else under the current directory
when it exists there (Caffe's rule), else under the solver file's folder
(created); ``snapshot_prefix=`` overrides it, used as given. When empty it is
the solver file's path without its extension.
``solver_mode`` and ``device_id`` are ignored: the device is chosen by the
caller (``device=``).
"""
import collections
import contextlib
import json
import math
import os
import secrets
import signal
import sys
import threading
import time

import numpy as np

from netdef.device import array_module, default_device, to_numpy
from netdef.errors import DeviceError, NetDefinitionError, NumericalError, WeightsError
from netdef.net import Net, normalize_phase
from solver.lr_policy import LRPolicy
from solver.progress import Progress
from solver.snapshot import SolverState, snapshot_paths, write_export

__all__ = ["SGDSolver", "TestResult"]


class TestResult(dict):
    """``test()``'s result for one test net: output blob name -> mean over the
    test iterations (a float for one-element outputs, else a NumPy array),
    plus ``.loss``, the mean weighted loss."""
    loss = 0.0


def _finite_all(arrays):
    """True when every element of every array is finite (one device sync)."""
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return True
    xp = array_module(arrays[0])
    return bool(xp.stack([xp.isfinite(a).all() for a in arrays]).all())


def _non_finite_kind(array):
    """"nan", "inf" or "nan and inf" for an array with non-finite values, else None."""
    xp = array_module(array)
    nan, inf = bool(xp.isnan(array).any()), bool(xp.isinf(array).any())
    return " and ".join(k for k, v in (("nan", nan), ("inf", inf)) if v) or None


def _json_copy(value, what):
    """A deep copy of JSON-serialisable ``value``; errors name ``what``."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} is not JSON-serialisable: {exc}") from None


class SGDSolver:
    """Caffe's SGD solver.

    SGDSolver(solver, *, device=None, net=None, test_nets=None, log=None,
              stream=sys.stdout, seed=None, dtype=np.float32,
              snapshot_prefix=None, metadata=None, state_providers=None,
              export_transform=None, handle_sigint=True, base_dir=None,
              allow_python_modules=())

    solver: a solver prototxt path, prototxt text, or a SolverParameter.
    device: where the nets are built (default: netdef's default device; the
        device of ``net`` when one is given).
    net: an already-built TRAIN Net to train instead of the solver's net
        (e.g. one whose data layer the caller has attached a dataset to).
    test_nets: already-built test Nets instead of the solver's (one
        ``test_iter`` each).
    log: path of the JSON-lines log (appended to), an open text file, a
        ``solver.progress.Progress``, or None; stream: progress lines.
    seed: overrides ``random_seed``; with neither, a seed is drawn and
        logged (``random_seed: -1`` in Caffe draws one too).
    metadata: JSON-serialisable dict stored in every snapshot (e.g. the
        box-target normalization, the dataset's name and classes); ``restore``
        replaces it with the snapshot's and returns it.
    state_providers: dict name -> object with ``get_state()`` (returning
        JSON-serialisable data, a copy: it is captured at the start of every
        iteration) and ``set_state(state)``; saved in snapshots and restored,
        so their state resumes exactly too (e.g. a data sampler's position).
    export_transform: ``f(layer_name, arrays) -> arrays`` applied to the
        weights written to the snapshot's ``.caffemodel`` only.
    handle_sigint: during ``step``, a first Ctrl-C finishes the iteration,
        writes a snapshot and raises KeyboardInterrupt; a second one stops at
        once (still with a snapshot of the last completed iteration).

    Attributes: ``net``, ``test_nets``, ``iter``, ``param`` (the
    SolverParameter), ``lr_policy``, ``history`` ("<layer>/<i>" -> momentum
    array), ``rng`` (the solver's own NumPy Generator, saved in snapshots,
    free for the caller's use), ``seed``, ``last_snapshot`` (the path of the
    latest ``.solverstate.npz`` written or restored), ``progress``.
    """

    def __init__(self, solver, *, device=None, net=None, test_nets=None, log=None,
                 stream=sys.stdout, seed=None, dtype=np.float32, snapshot_prefix=None,
                 metadata=None, state_providers=None, export_transform=None,
                 handle_sigint=True, base_dir=None, allow_python_modules=()):
        self.param, self.source, self.base_dir = self._read(solver, base_dir)
        p = self.param
        self._validate()
        self.progress = log if isinstance(log, Progress) else Progress(log, stream=stream)
        self.lr_policy = LRPolicy.from_solver(p, self.source)
        self.allow_python_modules = tuple(allow_python_modules)

        if seed is not None:
            self.seed = int(seed)
        elif p.random_seed >= 0:
            self.seed = int(p.random_seed)
        else:
            self.seed = secrets.randbits(31)
            self.progress.event("info", f"random_seed not set: using {self.seed}", seed=self.seed)
        self.rng = np.random.default_rng(self.seed)

        if net is not None:
            if normalize_phase(net.phase) != "TRAIN":
                raise NetDefinitionError(
                    f"{self.source}: the net given to train must be built in phase TRAIN, "
                    f"found {net.phase}")
            if device is not None and device != net.device:
                raise DeviceError(f"{self.source}: device {device} was asked for but the given "
                                  f"net lives on {net.device}")
            self.device, self.dtype = net.device, net.dtype
            self.net = net
        else:
            self.device = device if device is not None else default_device()
            self.dtype = np.dtype(dtype)
            self.net = self._build_train_net()
        self.test_nets, self.test_iter = self._build_test_nets(test_nets)
        for path in p.weights:
            report = self.net.copy_from(self._resolve(path, "weights"))
            self.progress.event("info", report.summary())

        self.snapshot_prefix = self._snapshot_prefix(snapshot_prefix)
        if p.snapshot and self.snapshot_prefix is None:
            raise NetDefinitionError(
                f"{self.source}: snapshot is {p.snapshot} but there is no snapshot_prefix; "
                f"set it in the solver or pass snapshot_prefix= to SGDSolver")
        self.metadata = _json_copy(dict(metadata or {}), "metadata")
        self.state_providers = dict(state_providers or {})
        self.export_transform = export_transform
        self.handle_sigint = handle_sigint

        self.iter = 0
        self.loss_window = collections.deque(maxlen=p.average_loss)
        # Learnable parameters that get updated, and their momentum history.
        self._updated = [lp for lp in self.net.learnable_params if lp.lr_mult != 0]
        with self.device.context():
            self.history = {self._key(lp): self.device.xp.zeros_like(lp.blob.data)
                            for lp in self._updated}
        self.last_snapshot = None
        self._last_snapshot_iter = None
        self.interrupt_snapshot = None
        self._phase = None
        self._stop_requested = False
        self._started = time.perf_counter()

    # -- reading the solver file ---------------------------------------------------------
    @staticmethod
    def _read(solver, base_dir):
        from netdef.schema import read_solver, upgrade_solver
        if hasattr(solver, "lr_policy"):  # a SolverParameter
            source = "<SolverParameter>"
            param = upgrade_solver(solver, source)
        else:
            param = read_solver(solver)
            text = isinstance(solver, str) and ("\n" in solver or "{" in solver)
            source = "<string>" if text else os.fspath(solver)
            if base_dir is None and not text:
                base_dir = os.path.dirname(os.path.abspath(source))
        return param, source, base_dir

    def _validate(self):
        p, src = self.param, self.source
        if p.type != "SGD":
            raise NetDefinitionError(
                f"{src}: solver type '{p.type}' is not supported; this engine implements "
                f"only SGD (with momentum), so set type: \"SGD\"")
        if p.regularization_type not in ("L2", "L1"):
            raise NetDefinitionError(
                f"{src}: unknown regularization_type '{p.regularization_type}' "
                f"(known: L2, L1)")
        for name, low in (("iter_size", 1), ("average_loss", 1), ("display", 0),
                          ("snapshot", 0), ("max_iter", 0), ("test_interval", 0)):
            value = getattr(p, name)
            if value < low:
                raise NetDefinitionError(f"{src}: {name} must be >= {low}, found {value}")
        for i, n in enumerate(p.test_iter):
            if n <= 0:
                raise NetDefinitionError(f"{src}: test_iter[{i}] must be > 0, found {n}")

    def _resolve(self, path, field):
        """An input path from the solver file: the solver's folder first,
        then the current directory."""
        candidates = [path] if os.path.isabs(path) else \
            ([os.path.join(self.base_dir, path)] if self.base_dir else []) + [path]
        for candidate in candidates:
            if os.path.exists(candidate):
                return candidate
        looked = " and ".join(f"'{os.path.abspath(c)}'" for c in candidates)
        raise NetDefinitionError(f"{self.source}: {field} '{path}' not found (looked for {looked})")

    def _net_sources(self):
        """``(train source or None, generic source or None)``: a NetParameter
        or a resolved path each."""
        p = self.param
        given = [name for name in ("net", "net_param", "train_net", "train_net_param")
                 if p.HasField(name)]
        if len(given) > 1:
            raise NetDefinitionError(
                f"{self.source}: give exactly one train net, found {' and '.join(given)}")
        generic = None
        if p.HasField("net"):
            generic = self._resolve(p.net, "net")
        elif p.HasField("net_param"):
            generic = p.net_param
        if p.HasField("train_net"):
            return self._resolve(p.train_net, "train_net"), generic
        if p.HasField("train_net_param"):
            return p.train_net_param, generic
        return generic, generic

    def _build_train_net(self):
        train, _ = self._net_sources()
        if train is None:
            raise NetDefinitionError(
                f"{self.source}: no train net: give one of net, net_param, train_net or "
                f"train_net_param (or pass net= to SGDSolver)")
        state = self.param.train_state
        return Net(train, "TRAIN", device=self.device, dtype=self.dtype,
                   stages=tuple(state.stage), level=state.level, seed=self.seed,
                   allow_python_modules=self.allow_python_modules)

    def _build_test_nets(self, given):
        """Caffe's InitTestNets: test_net_param entries, then test_net files,
        then one instance of the generic net per remaining test_iter."""
        p, src = self.param, self.source
        test_iter = list(p.test_iter)
        if given is not None:
            given = list(given)
            if len(test_iter) != len(given):
                raise NetDefinitionError(
                    f"{src}: {len(given)} test net(s) given but test_iter has "
                    f"{len(test_iter)} value(s); give one test_iter per test net")
            nets = given
        else:
            if self.param.HasField("net") or self.param.HasField("net_param"):
                _, generic = self._net_sources()
            else:
                generic = None
            sources = list(p.test_net_param) + [self._resolve(f, "test_net") for f in p.test_net]
            if generic is not None:
                if len(test_iter) < len(sources):
                    raise NetDefinitionError(
                        f"{src}: test_iter must be given for each test net ({len(sources)} "
                        f"test net(s), {len(test_iter)} test_iter value(s))")
                sources += [generic] * (len(test_iter) - len(sources))
            elif len(test_iter) != len(sources):
                raise NetDefinitionError(
                    f"{src}: test_iter must be given once per test net ({len(sources)} "
                    f"test net(s), {len(test_iter)} test_iter value(s))")
            if p.test_state and len(p.test_state) != len(sources):
                raise NetDefinitionError(
                    f"{src}: test_state must be unset or given once per test net "
                    f"({len(sources)} test net(s), {len(p.test_state)} test_state entries)")
            nets = []
            for i, source in enumerate(sources):
                state = p.test_state[i] if p.test_state else None
                nets.append(Net(source, "TEST", device=self.device, dtype=self.dtype,
                                stages=tuple(state.stage) if state else (),
                                level=state.level if state else 0, seed=self.seed + i + 1,
                                allow_python_modules=self.allow_python_modules))
        if nets and p.test_interval <= 0:
            raise NetDefinitionError(
                f"{src}: {len(nets)} test net(s) are defined, so test_interval must be > 0 "
                f"(found {p.test_interval})")
        return nets, test_iter

    def _snapshot_prefix(self, override):
        """The snapshot prefix: ``override`` as given; else the solver's
        ``snapshot_prefix`` (a relative one is placed like the input paths:
        under the solver file's folder when its folder exists there, else
        under the current directory when it exists there, else under the
        solver file's folder, created when needed); else the solver file's
        path without its extension."""
        if override is not None:
            return os.fspath(override)
        prefix = self.param.snapshot_prefix
        if not prefix:
            return None if self.source.startswith("<") else os.path.splitext(self.source)[0]
        if os.path.isabs(prefix) or not self.base_dir:
            return prefix
        under_solver = os.path.join(self.base_dir, prefix)
        if not os.path.isdir(os.path.dirname(os.path.abspath(under_solver))) \
                and os.path.isdir(os.path.dirname(os.path.abspath(prefix))):
            return prefix
        return under_solver

    @staticmethod
    def _key(learnable):
        return f"{learnable.layer}/{learnable.index}"

    # -- training --------------------------------------------------------------------------
    def learning_rate(self, it=None):
        """The policy's rate at ``it`` (default: the current iteration)."""
        return self.lr_policy(self.iter if it is None else it)

    def solve(self, resume=None):
        """Train up to ``max_iter`` (after restoring ``resume`` if given),
        then, as Caffe, snapshot unless one was just written
        (``snapshot_after_train``) and test when ``max_iter`` is a test
        iteration. Returns the path of the latest snapshot (or None)."""
        p = self.param
        if resume is not None:
            self.restore(resume)
        self.step(max(p.max_iter - self.iter, 0))
        if p.snapshot_after_train and self._last_snapshot_iter != self.iter \
                and self.snapshot_prefix is not None:
            self.snapshot()
        if self.test_nets and p.test_interval and self.iter % p.test_interval == 0:
            self._test_all()
        self.progress.event("info", f"optimization done at iteration {self.iter}",
                            iter=self.iter)
        return self.last_snapshot

    def step(self, iters):
        """Run ``iters`` iterations (see the module docstring for one).

        Raises NumericalError when a loss or gradient turns NaN/Inf: nothing
        is written and the solver is left at the start of the failing
        iteration (weights, momentum and random state). Raises
        KeyboardInterrupt on Ctrl-C after writing a snapshot of the last
        completed iteration (its path in ``interrupt_snapshot``).
        """
        iters = int(iters)
        if iters < 0:
            raise ValueError(f"step needs a non-negative number of iterations, found {iters}")
        stop = self.iter + iters
        self.interrupt_snapshot = None
        with self._sigint_handler():
            self.progress.reset_speed()
            while self.iter < stop:
                self._iteration(stop)
                if self._stop_requested:
                    self._snapshot_on_interrupt("Ctrl-C")
                    raise KeyboardInterrupt

    def _iteration(self, stop):
        p = self.param
        start_state = self._capture_state()
        self._phase = "iteration"
        try:
            self.net.clear_param_diffs()
            if self.test_nets and p.test_interval and self.iter % p.test_interval == 0 \
                    and (self.iter > 0 or p.test_initialization):
                self._test_all()
            loss = 0.0
            for _ in range(p.iter_size):
                outputs = self.net.forward()
                self.net.backward()
                self._guard(outputs.loss)
                loss += outputs.loss
            loss /= p.iter_size

            self._phase = "update"
            self.loss_window.append(loss)
            lr = self.lr_policy(self.iter)
            norm = self._clip_gradients()
            if p.display and self.iter % p.display == 0:
                self._display(stop, loss, lr, outputs, norm)
            self._apply_update(lr)
            self.iter += 1
            self._phase = None
        except NumericalError:
            # The weights are those of the iteration's start; rewind the
            # random draws and data position too, so the solver is left
            # consistent (e.g. to lower the learning rate and step again).
            self._phase = None
            self._set_state(start_state)
            raise
        except KeyboardInterrupt:
            phase, self._phase = self._phase, None
            if phase == "iteration":
                # Nothing was updated yet: go back to the iteration's start
                # (random draws, data position) and save that.
                self._set_state(start_state)
                self._snapshot_on_interrupt("interrupted")
            else:
                self.progress.event(
                    "interrupt", f"interrupted while the update of iteration {self.iter} was "
                    f"being applied: the weights are partly updated, so no snapshot was "
                    f"written; {self._last_good()}", iter=self.iter)
            raise
        finally:
            self._phase = None
        if p.snapshot and self.iter % p.snapshot == 0:
            try:
                self.snapshot()
            except KeyboardInterrupt:
                # The iteration is complete: save it (the interrupted write
                # left no file behind).
                self._snapshot_on_interrupt("interrupted")
                raise

    @property
    def smoothed_loss(self):
        """The mean of the latest ``average_loss`` losses (Caffe's smoothed loss)."""
        return sum(self.loss_window) / len(self.loss_window) if self.loss_window else float("nan")

    def _display(self, stop, loss, lr, outputs, norm):
        report = {}
        for name, value in outputs.items():
            value = to_numpy(value)
            if value.size == 1:
                report[name] = float(value.reshape(()))
            elif value.size <= 16:
                report[name] = value.astype(float).ravel().tolist()
        extra = {}
        if norm is not None:
            extra = {"grad_norm": norm, "clipped": norm > self.param.clip_gradients}
        self.progress.train(iter=self.iter, target=max(stop, self.param.max_iter), loss=loss,
                            smoothed_loss=self.smoothed_loss, lr=lr, outputs=report,
                            elapsed_s=round(time.perf_counter() - self._started, 3), **extra)

    def _clip_gradients(self):
        """Scale all gradients by clip / norm when their global L2 norm
        exceeds ``clip_gradients``; returns the norm (None when off)."""
        clip = self.param.clip_gradients
        if clip < 0 or not self._updated:
            return None
        sumsq = sum(float(array_module(d).vdot(d.ravel(), d.ravel()))
                    for d in (lp.blob.diff for lp in self._updated))
        norm = math.sqrt(sumsq)
        if norm > clip:
            scale = clip / norm
            for lp in self._updated:
                lp.blob.diff *= lp.blob.diff.dtype.type(scale)
        return norm

    def _apply_update(self, lr):
        """Normalize, regularize and the momentum update, per parameter
        (Caffe's Normalize, Regularize, ComputeUpdateValue and Net::Update)."""
        p = self.param
        l1 = p.regularization_type == "L1"
        with self.device.context():
            for lp in self._updated:
                data, diff = lp.blob.data, lp.blob.diff
                xp, real = array_module(data), data.dtype.type
                history = self.history[self._key(lp)]
                if p.iter_size > 1:
                    diff *= real(1.0 / p.iter_size)
                decay = p.weight_decay * lp.decay_mult
                if decay:
                    diff += real(decay) * (xp.sign(data) if l1 else data)
                # history = momentum * history + lr * lr_mult * diff; diff = history
                diff *= real(lr * lp.lr_mult)
                history *= real(p.momentum)
                history += diff
                diff[...] = history
                data -= diff

    # -- the NaN / Inf guard ------------------------------------------------------------------
    def _guard(self, loss):
        """After a forward + backward: stop when the loss or a gradient is
        not finite, naming the first offending blob and layer."""
        if math.isfinite(loss) and _finite_all([lp.blob.diff for lp in self._updated]):
            return
        what, blob, layer = self._locate_non_finite()
        if what is None:
            what = f"the loss is {loss}"
        message = (f"{self.source}: iteration {self.iter}: {what}; training stopped and "
                   f"nothing was written for this iteration. {self._last_good()}")
        self.progress.record("error", iter=self.iter, message=message, blob=blob, layer=layer)
        error = NumericalError(message)
        error.iter, error.blob, error.layer = self.iter, blob, layer
        error.last_snapshot = self.last_snapshot
        raise error

    def _locate_non_finite(self):
        """``(description, blob, layer)`` of the first non-finite values:
        the first top (in forward order) whose data is not finite; else the
        first layer in backward order whose parameter or bottom gradients
        are not finite."""
        net = self.net
        writers = collections.defaultdict(list)  # id(blob) -> [(layer, type)] in order
        for lp, tops in zip(net.layer_params, net.top_blobs):
            for top in tops:
                writers[id(top)].append((lp.name, lp.type))

        def in_place(blob, layer_name):
            others = [f"'{n}' ({t})" for n, t in writers[id(blob)] if n != layer_name]
            return f"; layers working in place on it: {', '.join(others)}" if others else ""

        for lp, tops in zip(net.layer_params, net.top_blobs):
            for name, top in zip(lp.top, tops):
                if writers[id(top)][0][0] != lp.name:
                    continue  # an in-place top: reported with its producer
                kind = _non_finite_kind(top.data)
                if kind:
                    return (f"non-finite values ({kind}) in blob '{name}', the output of layer "
                            f"'{lp.name}' (type {lp.type}){in_place(top, lp.name)}", name, lp.name)
        for i in reversed(range(len(net.layers))):
            lp, layer = net.layer_params[i], net.layers[i]
            if not net.layer_need_backward[i]:
                continue
            for k, blob in enumerate(layer.blobs):
                kind = _non_finite_kind(blob.diff)
                if kind:
                    return (f"non-finite values ({kind}) in the gradient of parameter {k} of "
                            f"layer '{lp.name}' (type {lp.type})", f"{lp.name}/{k}", lp.name)
            for name, bottom, needs in zip(lp.bottom, net.bottom_blobs[i],
                                           net.bottom_need_backward[i]):
                kind = needs and _non_finite_kind(bottom.diff)
                if kind:
                    return (f"non-finite values ({kind}) in the gradient of blob '{name}', "
                            f"computed by the backward of layer '{lp.name}' (type {lp.type})"
                            f"{in_place(bottom, lp.name)}", name, lp.name)
        return None, None, None

    def _last_good(self):
        if self.last_snapshot is None:
            return "No snapshot was written or restored in this run."
        return (f"The last good snapshot is {self.last_snapshot} "
                f"(iteration {self._last_snapshot_iter}).")

    # -- testing ------------------------------------------------------------------------------
    def test(self, index=None):
        """Run test net ``index`` (default: all) for its ``test_iter``
        iterations with the current weights; returns its TestResult (a list
        of them when ``index`` is None)."""
        if index is None:
            return [self.test(i) for i in range(len(self.test_nets))]
        if not 0 <= index < len(self.test_nets):
            raise IndexError(f"{self.source}: no test net {index} "
                             f"({len(self.test_nets)} test net(s))")
        net, iters = self.test_nets[index], self.test_iter[index]
        self._share_weights(net)
        sums, loss = {}, 0.0
        for _ in range(iters):
            outputs = net.forward()
            loss += outputs.loss
            for name, value in outputs.items():
                value = to_numpy(value).astype(np.float64)
                sums[name] = sums[name] + value if name in sums else value
        result = TestResult((name, float(total.reshape(())) / iters if total.size == 1
                             else total / iters) for name, total in sums.items())
        result.loss = loss / iters
        return result

    def _test_all(self):
        for i in range(len(self.test_nets)):
            result = self.test(i)
            scalars = {k: v for k, v in result.items() if isinstance(v, float)}
            text = ", ".join(f"{k} = {v:.4g}" for k, v in scalars.items())
            self.progress.message(f"test net #{i} at iter {self.iter}: "
                                  f"{text or 'no scalar outputs'} (loss {result.loss:.4g})")
            self.progress.record("test", iter=self.iter, net=i, loss=result.loss,
                                 outputs={k: (v if isinstance(v, float) else v.tolist())
                                          for k, v in result.items()
                                          if isinstance(v, float) or v.size <= 16})
        self.progress.reset_speed()  # testing time is not training speed

    def _share_weights(self, test_net):
        """Copy the train net's parameters into same-named layers of
        ``test_net`` (Caffe's ShareTrainedLayersWith, as a copy)."""
        train = self.net.layer_dict
        with self.device.context():
            for name, layer in test_net.layer_dict.items():
                source = train.get(name)
                if source is None or not layer.blobs:
                    continue
                if len(source.blobs) != len(layer.blobs):
                    raise NetDefinitionError(
                        f"{self.source}: layer '{name}' has {len(source.blobs)} parameter "
                        f"blob(s) in the train net but {len(layer.blobs)} in the test net")
                for i, (src, dst) in enumerate(zip(source.blobs, layer.blobs)):
                    if src.shape != dst.shape:
                        raise NetDefinitionError(
                            f"{self.source}: layer '{name}' parameter {i} has shape {src.shape} "
                            f"in the train net but {dst.shape} in the test net")
                    if src is not dst:
                        dst.data[...] = src.data

    # -- random state -------------------------------------------------------------------------
    def _nets(self):
        return [("train", self.net)] + [(f"test/{i}", n) for i, n in enumerate(self.test_nets)]

    def _capture_state(self):
        """Everything random or positional that an iteration advances: each
        layer's random state (with its seed), the solver's RNG, the state
        providers'. JSON data, copied."""
        layers = {}
        for key, net in self._nets():
            layers[key] = {name: {"seed": layer.seed, "state": layer.random_state()}
                           for name, layer in net.layer_dict.items()
                           if layer.random_state_attributes}
        providers = {}
        for name, provider in self.state_providers.items():
            providers[name] = _json_copy(provider.get_state(), f"the state of provider '{name}'")
        return {"random_states": _json_copy(layers, "a layer's random state"),
                "solver_rng": _json_copy(self.rng.bit_generator.state, "the solver's RNG state"),
                "providers": providers}

    def _set_state(self, state, notes=None):
        """Put back what ``_capture_state`` returned (layers missing on either
        side are listed in ``notes``)."""
        notes = [] if notes is None else notes
        nets = dict(self._nets())
        for key, layers in state["random_states"].items():
            net = nets.get(key)
            if net is None:
                notes.append(f"the snapshot has random state for net '{key}', which this "
                             f"solver does not have")
                continue
            for name, entry in layers.items():
                layer = net.layer_dict.get(name)
                if layer is None or set(entry["state"]) != set(layer.random_state_attributes):
                    notes.append(f"{key} layer '{name}': random state not restored (the layer "
                                 f"is missing or of another kind)")
                    continue
                layer.seed = int(entry["seed"])
                layer.set_random_state(entry["state"])
            for name, layer in net.layer_dict.items():
                if layer.random_state_attributes and name not in layers:
                    notes.append(f"{key} layer '{name}': no random state in the snapshot")
        self.rng.bit_generator.state = state["solver_rng"]
        for name, provider in self.state_providers.items():
            provider.set_state(state["providers"][name])
        return notes

    # -- snapshots ------------------------------------------------------------------------------
    def snapshot(self):
        """Write the snapshot of the current iteration (``.solverstate.npz``
        and ``.caffemodel``, see solver.snapshot); returns the state path.
        Weights that are not finite are refused (NumericalError), so the last
        good snapshot stays the latest one."""
        return self._write_snapshot(self._capture_state())

    def _write_snapshot(self, state):
        if self.snapshot_prefix is None:
            raise NetDefinitionError(
                f"{self.source}: no snapshot_prefix: set it in the solver or pass "
                f"snapshot_prefix= to SGDSolver")
        self._check_weights_finite()
        state_path, model_path = snapshot_paths(self.snapshot_prefix, self.iter)
        folder = os.path.dirname(os.path.abspath(state_path))
        os.makedirs(folder, exist_ok=True)
        weights = {f"{name}/{i}": to_numpy(blob.data)
                   for name, layer in self.net.layer_dict.items()
                   for i, blob in enumerate(layer.blobs)}
        history = {key: to_numpy(array) for key, array in self.history.items()}
        solver_state = SolverState(
            iter=self.iter, weights=weights, history=history, net=self.net.name,
            dtype=self.dtype.name, seed=self.seed, loss_window=list(self.loss_window),
            metadata=self.metadata, caffemodel=os.path.basename(model_path),
            solver=self.source if not self.source.startswith("<") else "",
            **state)
        solver_state.meta()  # fail on bad metadata before writing anything
        write_export(model_path, self.net, self.export_transform)
        solver_state.save(state_path)
        self.last_snapshot, self._last_snapshot_iter = state_path, self.iter
        self.progress.event("snapshot", f"snapshot of iteration {self.iter}: {state_path} "
                            f"(weights also in {model_path})", iter=self.iter,
                            path=state_path, caffemodel=model_path)
        return state_path

    def _check_weights_finite(self):
        arrays = [blob.data for layer in self.net.layers for blob in layer.blobs]
        if _finite_all(arrays):
            return
        for lp, layer in zip(self.net.layer_params, self.net.layers):
            for k, blob in enumerate(layer.blobs):
                kind = _non_finite_kind(blob.data)
                if kind:
                    message = (f"{self.source}: iteration {self.iter}: parameter {k} of layer "
                               f"'{lp.name}' (type {lp.type}) holds non-finite values ({kind}) "
                               f"(is the learning rate too high?); the snapshot was not "
                               f"written. {self._last_good()}")
                    self.progress.record("error", iter=self.iter, message=message,
                                         blob=f"{lp.name}/{k}", layer=lp.name)
                    error = NumericalError(message)
                    error.iter, error.blob, error.layer = self.iter, f"{lp.name}/{k}", lp.name
                    error.last_snapshot = self.last_snapshot
                    raise error

    def _snapshot_on_interrupt(self, why):
        """The snapshot of the last completed iteration, after Ctrl-C."""
        try:
            if self._last_snapshot_iter == self.iter and self.last_snapshot:
                path = self.last_snapshot
            else:
                path = self._write_snapshot(self._capture_state())
        except Exception as exc:  # report, and still stop as asked
            self.progress.event("interrupt", f"{why} at iteration {self.iter}: the snapshot "
                                f"could not be written ({exc}); {self._last_good()}",
                                iter=self.iter)
            return None
        self.interrupt_snapshot = path
        self.progress.event("interrupt", f"{why}: the snapshot of iteration {self.iter} (the "
                            f"last completed one) is {path}; resume with "
                            f"restore('{path}')", iter=self.iter, path=path)
        return path

    @contextlib.contextmanager
    def _sigint_handler(self):
        """During step: a first Ctrl-C asks to stop after the iteration; a
        second one stops at once (except during the update, which is
        finished first so the weights stay consistent)."""
        self._stop_requested = False
        if not self.handle_sigint or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if not self._stop_requested:
                self._stop_requested = True
                self.progress.message("Ctrl-C: stopping after this iteration with a snapshot "
                                      "(press Ctrl-C again to stop at once)")
            elif self._phase != "update":
                raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous if previous is not None
                          else signal.default_int_handler)
            self._stop_requested = False

    def restore(self, path):
        """Resume from a ``.solverstate.npz``: weights, momentum, iteration,
        loss window, random states of every layer, the solver's RNG, the
        state providers' states and the metadata (which replaces
        ``self.metadata`` and is returned). The snapshot must fit the net
        (same parameter layers and shapes) and name the same state providers;
        otherwise WeightsError, with nothing changed."""
        path = os.fspath(path)
        state = SolverState.load(path)
        problems = []
        layers = {name: layer for name, layer in self.net.layer_dict.items() if layer.blobs}
        expected = {f"{name}/{i}": blob for name, layer in layers.items()
                    for i, blob in enumerate(layer.blobs)}
        for key, blob in expected.items():
            if key not in state.weights:
                problems.append(f"no weights for layer '{key.rsplit('/', 1)[0]}' "
                                f"parameter {key.rsplit('/', 1)[1]}")
            elif tuple(state.weights[key].shape) != blob.shape:
                problems.append(f"layer '{key.rsplit('/', 1)[0]}' parameter "
                                f"{key.rsplit('/', 1)[1]}: the snapshot has shape "
                                f"{tuple(state.weights[key].shape)}, the net {blob.shape}")
        extra = sorted({k.rsplit("/", 1)[0] for k in state.weights if k not in expected})
        if extra:
            problems.append(f"weights for layers the net does not have: {', '.join(extra)}")
        for key, array in state.history.items():
            if key in self.history and tuple(array.shape) != self.history[key].shape:
                problems.append(f"momentum history of '{key}' has shape {tuple(array.shape)}, "
                                f"the parameter {self.history[key].shape}")
        stored, registered = set(state.providers), set(self.state_providers)
        if stored != registered:
            if stored - registered:
                problems.append(f"state of provider(s) {', '.join(sorted(stored - registered))} "
                                f"but none registered under that name")
            if registered - stored:
                problems.append(f"no state for the registered provider(s) "
                                f"{', '.join(sorted(registered - stored))}")
        if problems:
            raise WeightsError(f"{path}: cannot resume net '{self.net.name}' from this "
                               f"snapshot: " + "; ".join(problems))

        notes = []
        with self.device.context():
            for key, blob in expected.items():
                blob.data[...] = self.device.asarray(state.weights[key], dtype=blob.dtype)
            for key, history in self.history.items():
                if key in state.history:
                    history[...] = self.device.asarray(state.history[key], dtype=history.dtype)
                else:
                    history.fill(0)
                    notes.append(f"no momentum history for '{key}' (starts at 0)")
            unused = sorted(set(state.history) - set(self.history))
            if unused:
                notes.append(f"momentum history of {', '.join(unused)} not used (lr_mult 0 here)")
        self.iter = int(state.iter)
        self.seed = int(state.seed)
        self.loss_window.clear()
        self.loss_window.extend(float(v) for v in state.loss_window)
        self._set_state({"random_states": state.random_states, "solver_rng": state.solver_rng,
                         "providers": state.providers}, notes)
        self.metadata = state.metadata
        self.last_snapshot, self._last_snapshot_iter = path, self.iter
        self.progress.reset_speed()
        text = f"restored iteration {self.iter} from {path}"
        if notes:
            text += " (not exact: " + "; ".join(notes) + ")"
        self.progress.event("restore", text, iter=self.iter, path=path, notes=notes)
        return self.metadata

    def __repr__(self):
        return (f"SGDSolver({self.source!r}, iter={self.iter}, net={self.net.name!r}, "
                f"{len(self.test_nets)} test net(s))")
