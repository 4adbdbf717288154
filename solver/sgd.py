"""The Solver: Caffe's solver loop (iterations, iter_size, lr policies,
gradient clipping, test nets, display, snapshots, the NaN/Inf guard and
Ctrl-C), with the update rule the solver file names (solver.update_rules:
SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam).

    solver = Solver("prototxt/solver.prototxt", log="train_log.jsonl")
    solver.solve()                       # or solver.step(100); solver.snapshot()
    solver.restore("out/net_iter_100.solverstate.npz")

``SGDSolver`` is the same class under its historical name (it, too, follows
the file's ``type``; "SGD" when unset); ``create_solver`` is Caffe's
``SolverRegistry::CreateSolver``.

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
   the rule's update value with rate ``lr * lr_mult`` (SGD: history =
   momentum * history + rate * diff; diff = history) -> data -= diff;
5. ``iter += 1``; a snapshot when ``iter % snapshot == 0``.

Parameters with ``lr_mult`` 0 are left out of all of this (Caffe computes no
gradient for them, so their update is zero and they add nothing to the
clipping norm).

The trained parameters' data, diffs and history live in flat buffers
(solver.flat_params): an iteration costs a dozen whole-buffer operations
however many parameter blobs there are, and one host sync per forward +
backward (the sum of squared gradients: the guard's check and the clipping
norm), all inside the device's context.

Data parallelism (solver.data_parallel, solver.world): under ``mpiexec -n
N`` each rank runs its iter_size passes at image positions r, r + N, ...,
the flat gradients are all-reduced once per iteration and the update equals
one process with iter_size N x iter_size; rank 0 writes snapshots.

Paths in the solver file follow Caffe's rules (solver.solver_file).
``solver_mode`` and ``device_id`` are ignored: the device is chosen by the
caller (``device=``).
"""
import collections
import math
import secrets
import sys
import time

import numpy as np

from netdef.device import default_device, to_numpy
from netdef.errors import DataError, DeviceError, NetDefinitionError, NumericalError
from netdef.net import normalize_phase
from netdef.weights import share_layers
from solver.data_parallel import LRScaling, agree, check_parallel_net, data_layers, \
    position, skip_minibatches
from solver.flat_params import flatten_params
from solver.lr_policy import LRPolicy
from solver.nan_guard import finite_all, locate_non_finite, numerical_error, sum_of_squares
from solver.progress import Progress
from solver.resume import capture_state, json_copy, set_state
from solver.solver_file import SolverFile
from solver.solver_snapshots import SnapshotMixin
from solver.update_rules import create_rule
from solver.world import current_world

__all__ = ["Solver", "SGDSolver", "create_solver", "TestResult"]


class TestResult(dict):
    """``test()``'s result for one test net: output blob name -> mean over the
    test iterations (a float for one-element outputs, else a NumPy array),
    plus ``.loss``, the mean weighted loss."""
    loss = 0.0


class Solver(SnapshotMixin):
    """Caffe's solver loop with the update rule of the solver file's ``type``.

    Solver(solver, *, device=None, net=None, test_nets=None, log=None,
           stream=sys.stdout, seed=None, dtype=np.float32,
           snapshot_prefix=None, metadata=None, state_providers=None,
           export_transform=None, handle_sigint=True, base_dir=None,
           allow_python_modules=(), source=None)

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
    source: the name errors give the solver settings (default: the file's
        path; e.g. the file a SolverParameter was read from).

    Attributes: ``net``, ``test_nets``, ``iter``, ``param`` (the
    SolverParameter), ``rule`` (the solver.update_rules rule), ``lr_policy``,
    ``history`` ("<layer>/<i>" + the rule's suffix -> array of the
    parameter's shape, a view into the flat history buffer: SGD's momentum
    under "<layer>/<i>"), ``rng`` (the
    solver's own NumPy Generator, saved in snapshots, free for the caller's
    use), ``seed``, ``last_snapshot`` (the path of the latest
    ``.solverstate.npz`` written or restored), ``progress``.
    """

    def __init__(self, solver, *, device=None, net=None, test_nets=None, log=None,
                 stream=sys.stdout, seed=None, dtype=np.float32, snapshot_prefix=None,
                 metadata=None, state_providers=None, export_transform=None,
                 handle_sigint=True, base_dir=None, allow_python_modules=(), source=None,
                 world=None):
        self.world = current_world() if world is None else world
        self.file = SolverFile(solver, base_dir, source)
        self.param, self.source, self.base_dir = self.file.param, self.file.source, \
            self.file.base_dir
        p = self.param
        self.rule = create_rule(p, self.source)
        self.progress = log if isinstance(log, Progress) else Progress(log, stream=stream)
        self.lr_policy = LRPolicy.from_solver(p, self.source)
        self.allow_python_modules = tuple(allow_python_modules)
        self.seed = self._choose_seed(seed)
        self.rng = np.random.default_rng(self.seed)
        self._set_up_nets(net, test_nets, device, dtype)
        check_parallel_net(self.net, self.world, self.source)
        self._data_layers = data_layers(self.net) if self.world.size > 1 else []
        self.lr_scaling = LRScaling(ranks=self.world.size)

        self.snapshot_prefix = self.file.snapshot_prefix(snapshot_prefix)
        if p.snapshot and self.snapshot_prefix is None:
            raise NetDefinitionError(
                f"{self.source}: snapshot is {p.snapshot} but there is no snapshot_prefix; "
                f"set it in the solver or pass snapshot_prefix= to the solver")
        self.metadata = json_copy(dict(metadata or {}), "metadata")
        self.state_providers = dict(state_providers or {})
        self.export_transform = export_transform
        self.handle_sigint = handle_sigint

        self.iter = 0
        self.loss_window = collections.deque(maxlen=p.average_loss)
        self._set_up_history()
        self.last_snapshot = None
        self._last_snapshot_iter = None
        self.interrupt_snapshot = None
        self._phase = None
        self._stop_requested = False
        self._stop_agreed = False   # the ranks' Ctrl-C decision of this iteration
        self._started = time.perf_counter()

    def _choose_seed(self, seed):
        if seed is not None:
            return int(seed)
        if self.param.random_seed >= 0:
            return int(self.param.random_seed)
        seed = secrets.randbits(31)
        self.progress.event("info", f"random_seed not set: using {seed}", seed=seed)
        return seed

    def _set_up_nets(self, net, test_nets, device, dtype):
        """The train net (given or built), the test nets, the initial weights."""
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
            self.net = self.file.train_net(self.device, self.dtype, self.seed,
                                           self.allow_python_modules)
        self.test_nets, self.test_iter = self.file.test_nets(
            test_nets, self.device, self.dtype, self.seed, self.allow_python_modules)
        for path in self.param.weights:
            report = self.net.copy_from(self.file.resolve(path, "weights"))
            self.progress.event("info", report.summary())

    def _set_up_history(self):
        """The learnable parameters that get updated (lr_mult != 0), their
        data and diff moved into flat buffers (solver.flat_params), and the
        rule's history arrays of each: views of the parameter's shape into
        the flat history buffers, zeros at first."""
        learnable = self.net.learnable_params
        self._updated = [lp for lp in learnable if lp.lr_mult != 0]
        self._frozen = [lp for lp in learnable if lp.lr_mult == 0]
        self._flat = flatten_params(self._updated, len(self.rule.suffixes), self.device)
        views = {id(lp): flat.history_views(lp) for flat in self._flat for lp in flat.params}
        self.history = {}
        for lp in self._updated:
            keys = self.rule.history_keys(f"{lp.layer}/{lp.index}")
            self.history.update(zip(keys, views[id(lp)]))

    # -- training --------------------------------------------------------------------------
    def learning_rate(self, it=None):
        """The policy's rate at ``it`` (default: the current iteration), times
        the data-parallel factor (``lr_scaling``: solver.data_parallel)."""
        it = self.iter if it is None else it
        return self.lr_policy(it) * self.lr_scaling.factor(it)

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
        iteration (weights, history and random state). Raises
        KeyboardInterrupt on Ctrl-C after writing a snapshot of the last
        completed iteration (its path in ``interrupt_snapshot``).
        """
        iters = int(iters)
        if iters < 0:
            raise ValueError(f"step needs a non-negative number of iterations, found {iters}")
        stop = self.iter + iters
        self.interrupt_snapshot = None
        # Every array operation of the solver runs on its device.
        with self._sigint_handler(), self.device.context():
            for flat in self._flat:
                flat.claim()   # after another solver on this net, take the blobs back
            self.progress.reset_speed()
            while self.iter < stop:
                self._iteration(stop)
                # Several ranks stop after the iteration in which they agreed
                # to (data_parallel.agree): a Ctrl-C reaching one rank after
                # that exchange waits for the next, or the ranks would part.
                if self._stop_agreed if self.world.size > 1 else self._stop_requested:
                    self._snapshot_on_interrupt("Ctrl-C")
                    raise KeyboardInterrupt

    def _iteration(self, stop):
        p = self.param
        start_state = self._capture_state()
        self._phase = "iteration"
        try:
            self._clear_param_diffs()
            if self.test_nets and p.test_interval and self.iter % p.test_interval == 0 \
                    and (self.iter > 0 or p.test_initialization):
                self._test_all()
            loss, sumsq, outputs = self._passes()
            self._phase = "update"
            self.loss_window.append(loss)
            lr = self.learning_rate()
            norm = self._clip_gradients(sumsq)
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
        except (KeyboardInterrupt, DataError):   # a bad input stops the run as Ctrl-C does
            self._interrupted(start_state)
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

    def _passes(self):
        """This rank's ``iter_size`` forward + backward passes (their
        draws keyed by the iteration and image position, the other ranks'
        minibatches skipped: solver.data_parallel), then the gradients and
        losses summed over the ranks. Returns ``(mean loss, sum of squared
        gradients, the last pass's outputs)``."""
        p, world = self.param, self.world
        loss, failure, sumsq = 0.0, None, 0.0
        try:
            for s in range(p.iter_size):
                skip_minibatches(self._data_layers, world.rank if s == 0 else world.size - 1)
                self.net.set_draw_key(self.iter, position(world, s))
                outputs = self.net.forward()
                self.net.backward()
                if s < p.iter_size - 1:
                    self._guard(outputs.loss)
                    self._accumulate(s)
                else:   # the guard's sum of squares is then that of the whole gradient
                    self._accumulate(s)
                    sumsq = self._guard(outputs.loss)
                loss += outputs.loss
            skip_minibatches(self._data_layers, world.size - 1 - world.rank)
        except NumericalError as exc:
            failure = exc
        loss = agree(self, loss, failure)
        if world.size > 1:
            for flat in self._flat:
                world.allreduce_sum(flat.diff)
        if world.size > 1 and p.clip_gradients >= 0:
            sumsq = sum_of_squares([flat.diff for flat in self._flat])
        return loss / (p.iter_size * world.size), sumsq, outputs

    def _accumulate(self, s):
        """With iter_size > 1, each pass's gradient starts from zero and is
        added whole to the sum of the earlier ones (kept aside), so the
        iteration's gradient is a sum of per-pass gradients: the same
        float32 sum whether the passes ran in one process or on two ranks."""
        last = self.param.iter_size - 1
        for flat in self._flat if last else ():
            if s == 0:
                flat.pass_sum = flat.diff.copy()
            elif s < last:
                flat.pass_sum += flat.diff
            else:
                flat.diff += flat.pass_sum
                flat.pass_sum = None
            if s < last:
                flat.diff.fill(0)

    def _interrupted(self, start_state):
        """KeyboardInterrupt inside an iteration: before the update, go back
        to its start and save that; during the update, say why nothing is
        saved."""
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

    def _clear_param_diffs(self):
        """Caffe's ClearParamDiffs (lr_mult 0 diffs are rarely allocated)."""
        for flat in self._flat:
            flat.diff.fill(0)
        for lp in self._frozen:
            lp.blob.zero_diff()

    def _clip_gradients(self, sumsq):
        """Scale all gradients by clip / norm when their global L2 norm (the
        square root of ``sumsq``, the guard's sum of squared gradients)
        exceeds ``clip_gradients``; returns the norm (None when off)."""
        clip = self.param.clip_gradients
        if clip < 0 or not self._updated:
            return None
        norm = math.sqrt(sumsq)
        if norm > clip:
            scale = clip / norm
            for flat in self._flat:
                flat.diff *= flat.diff.dtype.type(scale)
        return norm

    def _apply_update(self, lr):
        """Caffe's Normalize, Regularize, ComputeUpdateValue and Net::Update
        on the flat buffers (multipliers per run: solver.flat_params); ``lr``
        is the policy's rate (before ``lr_mult``)."""
        p = self.param
        with self.device.context():
            for flat in self._flat:
                # Caffe's normalization by iter_size, of all ranks' passes.
                if p.iter_size * self.world.size > 1:
                    flat.diff *= flat.diff.dtype.type(1.0 / (p.iter_size * self.world.size))
                flat.add_weight_decay(p.weight_decay, p.regularization_type == "L1")
                self.rule.compute_update_value(flat.diff, flat.history, flat.rates(lr),
                                               self.iter)
                flat.data -= flat.diff

    # -- the NaN / Inf guard ------------------------------------------------------------------
    def _guard(self, loss):
        """After a forward + backward: stop when the loss or a gradient is
        not finite, naming the first offending blob and layer. Returns the
        sum of the squared gradients (one sync; not finite also when it
        overflowed, which alone costs the element-wise check)."""
        diffs = [flat.diff for flat in self._flat]
        sumsq = sum_of_squares(diffs)
        if math.isfinite(loss) and (math.isfinite(sumsq) or finite_all(diffs)):
            return sumsq
        what, blob, layer = locate_non_finite(self.net)
        if what is None:
            what = f"the loss is {loss}"
        message = (f"{self.source}: iteration {self.iter}: {what}; training stopped and "
                   f"nothing was written for this iteration. {self._last_good()}")
        self._stop(message, blob, layer)

    def _stop(self, message, blob, layer):
        """Log ``message`` as an error and raise it as a NumericalError."""
        self.progress.record("error", iter=self.iter, message=message, blob=blob, layer=layer)
        raise numerical_error(message, self.iter, blob, layer, self.last_snapshot)

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
        sums, loss = {}, 0.0
        with self.device.context():
            self._share_weights(net)
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
        share_layers(self.net, test_net, self.source)

    # -- random state -------------------------------------------------------------------------
    def _nets(self):
        return [("train", self.net)] + [(f"test/{i}", n) for i, n in enumerate(self.test_nets)]

    def _capture_state(self):
        """Everything random or positional that an iteration advances (see
        solver.resume)."""
        return capture_state(self._nets(), self.rng, self.state_providers)

    def _set_state(self, state, notes=None):
        return set_state(self._nets(), self.rng, self.state_providers, state, notes)


    def __repr__(self):
        return (f"{type(self).__name__}({self.source!r}, type={self.rule.type!r}, "
                f"iter={self.iter}, net={self.net.name!r}, {len(self.test_nets)} test net(s))")


#: The historical name: the same solver (its rule, too, is the file's type).
SGDSolver = Solver


def create_solver(solver, **kwargs):
    """A Solver for ``solver`` (path, text or SolverParameter) with the
    update rule its ``type`` names (Caffe's SolverRegistry::CreateSolver);
    ``kwargs`` as for Solver."""
    return Solver(solver, **kwargs)
