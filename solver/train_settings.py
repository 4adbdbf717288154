"""What ``solver.train``'s first argument is, and the solver settings and
nets it names (see solver/train.py's docstring for the rules).

    kind = classify_file(path)               # "net", "solver" or "schedule"
    settings = train_settings(args, kind)    # TrainSettings: param, nets, weights
"""
import dataclasses
import os
import re

from netdef import caffe_pb2
from netdef.errors import NetDefinitionError, ParseError
from netdef.schema import _read_source, parse_text, read_solver
from solver.defaults import reference_solver
from solver.solver_file import resolve_input

__all__ = ["is_schedule", "classify_file", "TrainSettings",
           "train_settings"]

_SCHEDULE_RE = re.compile(r"^\s*stage\s*\{", re.MULTILINE)

# Solver fields solver.train sets itself: the nets, evaluation (detection on
# the test split instead of test nets), initial weights, snapshots, the seed.
_OWNED_FIELDS = ("test_iter", "test_interval", "test_net", "test_net_param", "test_state",
                 "weights", "net", "train_net", "net_param", "train_net_param",
                 "snapshot_prefix", "random_seed")


def is_schedule(text):
    """True for a staged schedule file: one with top-level ``stage { ... }``
    blocks (neither a NetParameter nor a SolverParameter has that field)."""
    return bool(_SCHEDULE_RE.search(text))


def classify_file(path):
    """"net", "solver" or "schedule" for the file at ``path``."""
    text, filename = _read_source(os.fspath(path))
    if is_schedule(text):
        return "schedule"
    try:
        parse_text(text, caffe_pb2.NetParameter(), filename)
        return "net"
    except ParseError as net_error:
        try:
            parse_text(text, caffe_pb2.SolverParameter(), filename)
            return "solver"
        except ParseError:
            raise net_error from None


@dataclasses.dataclass
class TrainSettings:
    """The solver settings of one ``solver.train`` run.

    param: the SolverParameter, with the fields solver.train owns cleared
    and ``--iters`` applied; source: where it came from (for messages);
    base_dir: the folder its paths are relative to (None: the reference
    settings); net_path / test_net: the nets (test_net None: found from the
    net file); weights: initial weights files, resolved; eval_interval:
    iterations between evaluations (0: only at the end); seed: the solver
    file's random_seed (None when unset)."""
    param: object
    source: str
    base_dir: str
    net_path: str
    test_net: str
    weights: list
    eval_interval: int
    seed: int

    def describe(self):
        p = self.param
        return (f"solver settings from {self.source}: base_lr {p.base_lr:g}, lr_policy "
                f"{p.lr_policy}, max_iter {p.max_iter}, iter_size {p.iter_size}, "
                f"momentum {p.momentum:g}, weight_decay {p.weight_decay:g}")


def _from_solver_file(args):
    """(param, source, base_dir, net path, test net) of a solver file."""
    if args.solver:
        raise NetDefinitionError(
            f"{args.prototxt} is a solver file already; --solver is for net files")
    param = read_solver(args.prototxt)
    base = os.path.dirname(os.path.abspath(args.prototxt))
    given = [f for f in ("net", "train_net") if param.HasField(f)]
    if len(given) != 1:
        raise NetDefinitionError(
            f"{args.prototxt}: give the net to train as exactly one of net: or "
            f"train_net: (found {', '.join(given) or 'neither'}); inline net_param is "
            f"not supported by solver.train")
    net_path = resolve_input(getattr(param, given[0]), base, args.prototxt, given[0])
    test_net = resolve_input(param.test_net[0], base, args.prototxt, "test_net") \
        if param.test_net else None
    return param, f"solver file {args.prototxt}", base, net_path, test_net


def _for_net_file(args):
    """(param, source, base_dir, net path, test net) of a net file: --solver,
    else the solver file beside the net, else the reference settings."""
    net_path = args.prototxt
    beside = os.path.splitext(net_path)[0] + "_solver.prototxt"
    if args.solver:
        param, source = read_solver(args.solver), f"--solver {args.solver}"
        base = os.path.dirname(os.path.abspath(args.solver))
    elif os.path.isfile(beside):
        param, source = read_solver(beside), f"{beside} (beside the net)"
        base = os.path.dirname(os.path.abspath(beside))
    else:
        param = reference_solver()
        source, base = "the reference R-FCN settings (solver/defaults.py)", None
    test_net = None
    if param.test_net and args.solver:
        test_net = resolve_input(param.test_net[0], base, args.solver, "test_net")
    return param, source, base, net_path, test_net


def train_settings(args, kind):
    """The TrainSettings for ``solver.train``'s parsed ``args`` when its
    first argument is of ``kind`` ("net" or "solver")."""
    param, source, base, net_path, test_net = \
        (_from_solver_file if kind == "solver" else _for_net_file)(args)
    param.type = param.type or "SGD"
    if args.iters is not None:
        if args.iters < 0:
            raise NetDefinitionError(f"--iters must be >= 0, found {args.iters}")
        param.max_iter = args.iters
    eval_interval = args.eval_interval if args.eval_interval is not None \
        else int(param.test_interval)
    weights = [resolve_input(w, base, source, "weights") for w in param.weights]
    seed = int(param.random_seed) if param.random_seed >= 0 else None
    for field in _OWNED_FIELDS:
        param.ClearField(field)
    return TrainSettings(param, source, base, net_path, test_net, weights, eval_interval, seed)
