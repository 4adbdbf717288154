"""Snapshots of the Solver (a mixin of solver.sgd.Solver): writing the
``.solverstate.npz`` + ``.caffemodel`` pair, the snapshot after Ctrl-C or a
data error, the Ctrl-C handler, and restoring.

In a data-parallel run (solver.world) only rank 0 writes files; every rank
knows the path (``snapshot_paths``), so the messages agree. A snapshot
records the world size and iter_size, which ``restore`` checks (the images
per iteration, ranks x iter_size, must be unchanged).
"""
import contextlib
import os
import signal
import threading

from netdef.device import to_numpy
from netdef.errors import NetDefinitionError, WeightsError
from solver.nan_guard import locate_non_finite_weights
from solver.resume import check_snapshot, restore_history, set_providers, set_state
from solver.snapshot import SolverState, snapshot_paths, write_export

__all__ = ["SnapshotMixin", "check_world_resume"]


class SnapshotMixin:
    """The snapshot half of the Solver (see solver.sgd)."""

    def snapshot(self):
        """Write the snapshot of the current iteration (``.solverstate.npz``
        and ``.caffemodel``, see solver.snapshot); returns the state path.
        Weights that are not finite are refused (NumericalError), so the last
        good snapshot stays the latest one."""
        with self.device.context():
            return self._write_snapshot(self._capture_state())

    def _write_snapshot(self, state):
        if self.snapshot_prefix is None:
            raise NetDefinitionError(
                f"{self.source}: no snapshot_prefix: set it in the solver or pass "
                f"snapshot_prefix= to the solver")
        self._check_weights_finite()
        state_path, model_path = snapshot_paths(self.snapshot_prefix, self.iter)
        if not self.world.is_root:
            # Every rank holds the same weights; rank 0 writes them.
            self.last_snapshot, self._last_snapshot_iter = state_path, self.iter
            return state_path
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
            solver=self.file.path or "", world_size=self.world.size,
            iter_size=int(self.param.iter_size), **state)
        solver_state.meta()  # fail on bad metadata before writing anything
        write_export(model_path, self.net, self.export_transform)
        solver_state.save(state_path)
        self.last_snapshot, self._last_snapshot_iter = state_path, self.iter
        self.progress.event("snapshot", f"snapshot of iteration {self.iter}: {state_path} "
                            f"(weights also in {model_path})", iter=self.iter,
                            path=state_path, caffemodel=model_path)
        return state_path

    def _check_weights_finite(self):
        found = locate_non_finite_weights(self.net)
        if found is None:
            return
        lp, k, kind = found
        message = (f"{self.source}: iteration {self.iter}: parameter {k} of layer "
                   f"'{lp.name}' (type {lp.type}) holds non-finite values ({kind}) "
                   f"(is the learning rate too high?); the snapshot was not "
                   f"written. {self._last_good()}")
        self._stop(message, f"{lp.name}/{k}", lp.name)

    def _snapshot_on_interrupt(self, why):
        """The snapshot of the last completed iteration, after Ctrl-C (or a
        data error). Another rank than 0 writes none and names none: after
        an agreed stop rank 0 writes it; after this rank's own error rank 0
        may be waiting in a collective and never write it."""
        if not self.world.is_root:
            return None
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
        """Resume from a ``.solverstate.npz``: weights, the rule's history,
        iteration, loss window, random states of every layer, the solver's
        RNG, the state providers' states and the metadata (which replaces
        ``self.metadata`` and is returned). The snapshot must be well formed
        and fit the solver (solver.resume.check_snapshot); otherwise
        WeightsError, with nothing changed: all is checked before anything
        is written."""
        path = os.fspath(path)
        state = SolverState.load(path)
        world_note = check_world_resume(state, self.world.size, int(self.param.iter_size), path)
        expected = check_snapshot(state, self.net, self.history, self.state_providers, path,
                                  self._nets(), self.rng)
        set_providers(self.state_providers, state.providers, path)  # undone if one refuses
        with self.device.context():
            for key, blob in expected.items():
                blob.data[...] = self.device.asarray(state.weights[key], dtype=blob.dtype)
            notes = restore_history(self.history, state.history, self.device, self.rule.type)
        self.iter = int(state.iter)
        self.seed = int(state.seed)
        self.loss_window.clear()
        self.loss_window.extend(float(v) for v in state.loss_window)
        set_state(self._nets(), self.rng, {}, {"random_states": state.random_states,
                                               "solver_rng": state.solver_rng}, notes)
        self.metadata = state.metadata
        self.last_snapshot, self._last_snapshot_iter = path, self.iter
        self.progress.reset_speed()
        text = f"restored iteration {self.iter} from {path}"
        if world_note:
            text += f"; {world_note}"
        if notes:
            text += " (not exact: " + "; ".join(notes) + ")"
        self.progress.event("restore", text, iter=self.iter, path=path, notes=notes)
        return self.metadata



def check_world_resume(state, size, iter_size, path):
    """Whether a run of ``size`` ranks x ``iter_size`` may resume the
    SolverState ``state`` (read from ``path``): the same shape resumes
    exactly (returns None); another shape with the same images per
    iteration (ranks x iter_size) continues (returns a note saying so);
    anything else raises WeightsError saying why. A snapshot without the
    record (older than data-parallel training) resumes in one process."""
    saved_size, saved_iter_size = int(state.world_size), int(state.iter_size)
    if saved_size == 0:
        if size == 1:
            return None
        raise WeightsError(
            f"{path}: this snapshot does not record how many ranks wrote it (it is older "
            f"than data-parallel training); resume it in one process (without mpiexec), "
            f"then continue from that run's snapshots with {size} ranks")
    if (saved_size, saved_iter_size) == (size, iter_size):
        return None
    if saved_size * saved_iter_size == size * iter_size:
        return (f"written by {saved_size} rank(s) x iter_size {saved_iter_size}, continued by "
                f"{size} rank(s) x iter_size {iter_size}: the same {size * iter_size} images "
                f"per iteration in the same order, so the run continues as it would have")
    raise WeightsError(
        f"{path}: cannot resume: the snapshot was written by {saved_size} rank(s) x iter_size "
        f"{saved_iter_size} = {saved_size * saved_iter_size} images per iteration, this run "
        f"has {size} rank(s) x iter_size {iter_size} = {size * iter_size}; an iteration's "
        f"images, draws and update would change. Resume with ranks x iter_size = "
        f"{saved_size * saved_iter_size} (set iter_size in the solver file to "
        f"{saved_size * saved_iter_size} / ranks)")
