"""``solver.train`` for plain Caffe nets, as ``caffe train --solver`` runs them.

A net whose TRAIN phase reads its own data (Data from LMDB, ImageData,
HDF5Data, MemoryData, DummyData ...) and has no detection data layer
(RoIData) trains with its solver file's own settings, Caffe's way: the test
nets of the solver file (``test_net``, or the net's TEST phase once per
``test_iter``) run every ``test_interval`` iterations and print their mean
outputs (accuracy, loss); there is no detection dataset and no mAP.
solver.train's options keep their meaning: ``--iters`` (max_iter),
``--eval-interval`` (test_interval), ``--weights``, ``--resume``,
``--seed``, ``--out`` (snapshots ``OUT/<net stem>_iter_N.*`` and the log).
"""
import os

from netdef.errors import NetDefinitionError
from netdef.schema import read_solver
from layers.roi_data import RoIDataLayer
from solver.sgd import SGDSolver

__all__ = ["is_plain_caffe_net", "PlainCaffeTraining"]

#: Fields solver.train sets itself in a plain Caffe run.
_SET_HERE = ("net", "train_net", "net_param", "train_net_param", "snapshot_prefix",
             "random_seed", "weights")


def is_plain_caffe_net(net):
    """True when ``net`` has no detection data layer to feed a dataset to."""
    return not any(isinstance(layer, RoIDataLayer) for layer in net.layers)


def _solver_file(args, kind, net_path):
    """``(path, SolverParameter)`` of the solver file a plain net trains with."""
    if kind == "solver":
        return args.prototxt, read_solver(args.prototxt)
    beside = os.path.splitext(net_path)[0] + "_solver.prototxt"
    path = args.solver or (beside if os.path.isfile(beside) else None)
    if path is None:
        raise NetDefinitionError(
            f"{net_path}: the net has no detection data layer (RoIData), so it trains as "
            f"Caffe trains it, with a solver file: give --solver FILE or put one at {beside}")
    return path, read_solver(path)


class PlainCaffeTraining:
    """One plain Caffe run inside ``solver.train.Training`` (which owns the
    arguments, the output folder, the progress log and the TRAIN net)."""

    def __init__(self, training, settings, net, seed, stem):
        self.training, self.settings, self.net = training, settings, net
        self.seed, self.stem = seed, stem

    def _solver(self):
        args = self.training.args
        path, param = _solver_file(args, self.training.kind, self.settings.net_path)
        for field in _SET_HERE:
            param.ClearField(field)
        if args.iters is not None:
            param.max_iter = self.settings.param.max_iter
        if args.eval_interval is not None:
            param.test_interval = args.eval_interval
        param.net = os.path.abspath(self.settings.net_path)
        return SGDSolver(param, net=self.net, log=self.training.progress, seed=self.seed,
                         snapshot_prefix=os.path.join(self.training.out, self.stem),
                         base_dir=os.path.dirname(os.path.abspath(path)),
                         source=f"solver file {path}")

    def run(self):
        """Train to max_iter; returns the exit status (130 on Ctrl-C)."""
        say, args = self.training.say, self.training.args
        for path in self.settings.weights + ([args.weights] if args.weights else []):
            say(f"initial {self.net.copy_from(path).summary()}")
        solver = self._solver()
        say(f"plain Caffe net (no RoIData layer): trained as `caffe train` does, "
            f"{len(solver.test_nets)} test net(s) every {solver.param.test_interval} "
            f"iterations")
        if args.resume:
            solver.restore(args.resume)
        try:
            state_path = solver.solve()
        except KeyboardInterrupt:
            where = solver.interrupt_snapshot
            print(f"interrupted: resume with python -m solver.train {args.prototxt} --resume "
                  f"{where}" if where else "interrupted", file=self.training.stream)
            return 130
        say(f"done: {solver.iter} iterations; snapshot {state_path}")
        return 0
