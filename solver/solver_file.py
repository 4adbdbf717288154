"""A solver file read and checked, with Caffe's rules for the paths in it
and the nets it names.

    sf = SolverFile("prototxt/solver.prototxt")
    sf.param                      # the SolverParameter (solver_type upgraded)
    sf.resolve("net.prototxt", "net")
    net = sf.train_net(device, np.float32, seed=0)

Paths in a solver file (net, train_net, test_net, weights) are looked up
relative to the solver file's folder first, then relative to the current
directory (Caffe's rule). A relative ``snapshot_prefix`` goes under the solver
file's folder when its folder exists there, else under the current directory
when it exists there (Caffe's rule), else under the solver file's folder
(created); an override is used as given. When empty it is the solver file's
path without its extension.
"""
import os

from netdef.errors import NetDefinitionError
from netdef.net import Net
from netdef.schema import read_solver, upgrade_solver

__all__ = ["SolverFile", "resolve_input"]


def resolve_input(path, base_dir, source, field, *, current_dir=True, note=""):
    """The file ``path`` names, found by Caffe's rule for the paths in a
    solver file: relative to ``base_dir`` first (the folder of the file that
    names it; None: none), then, with ``current_dir``, relative to the
    current directory; absolute paths as they are. NetDefinitionError
    "SOURCE: FIELD 'PATH' not found (looked for ...NOTE)" when none exists."""
    candidates = [path] if os.path.isabs(path) else \
        ([os.path.join(base_dir, path)] if base_dir else []) + ([path] if current_dir else [])
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    looked = " and ".join(f"'{os.path.abspath(c)}'" for c in candidates)
    raise NetDefinitionError(f"{source}: {field} '{path}' not found (looked for {looked}{note})")


class SolverFile:
    """SolverFile(solver, base_dir=None, source=None)

    solver: a solver prototxt path, prototxt text, or a SolverParameter.
    base_dir: the folder relative paths start from (default: the solver
        file's folder; none for text or a message).
    source: the name used in error messages (default: the path,
        "<string>" or "<SolverParameter>"); e.g. the file a SolverParameter
        was read from.

    Attributes: ``param``, ``source``, ``base_dir``, ``path`` (the file
    read, or None). The loop's own fields
    are checked here; the update rule checks its own (solver.update_rules).
    """

    def __init__(self, solver, base_dir=None, source=None):
        if hasattr(solver, "lr_policy"):  # a SolverParameter
            name = "<SolverParameter>"
            self.param = upgrade_solver(solver, source or name)
        else:
            self.param = read_solver(solver)
            text = isinstance(solver, str) and ("\n" in solver or "{" in solver)
            name = "<string>" if text else os.fspath(solver)
            if base_dir is None and not text:
                base_dir = os.path.dirname(os.path.abspath(name))
        self.path = None if name.startswith("<") else name
        self.source = source or name
        self.base_dir = base_dir
        self._validate()

    def _validate(self):
        p, src = self.param, self.source
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
        # Caffe-SSD's evaluation settings: checked, so that a misspelling is
        # an error, not a silently different metric.
        for name, known in (("eval_type", ("classification", "detection")),
                            ("ap_version", ("11point", "MaxIntegral", "Integral"))):
            if getattr(p, name) not in known:
                raise NetDefinitionError(f"{src}: unknown {name} '{getattr(p, name)}' (known: "
                                         f"{', '.join(known)})")

    def resolve(self, path, field):
        """An input path from the solver file: the solver's folder first,
        then the current directory; NetDefinitionError naming both when
        neither has it."""
        return resolve_input(path, self.base_dir, self.source, field)

    def net_sources(self):
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
            generic = self.resolve(p.net, "net")
        elif p.HasField("net_param"):
            generic = p.net_param
        if p.HasField("train_net"):
            return self.resolve(p.train_net, "train_net"), generic
        if p.HasField("train_net_param"):
            return p.train_net_param, generic
        return generic, generic

    def train_net(self, device, dtype, seed, allow_python_modules=()):
        """The TRAIN Net the file names, in its ``train_state``."""
        train, _ = self.net_sources()
        if train is None:
            raise NetDefinitionError(
                f"{self.source}: no train net: give one of net, net_param, train_net or "
                f"train_net_param (or pass net= to the solver)")
        state = self.param.train_state
        return Net(train, "TRAIN", device=device, dtype=dtype, stages=tuple(state.stage),
                   level=state.level, seed=seed, allow_python_modules=allow_python_modules)

    def test_nets(self, given, device, dtype, seed, allow_python_modules=()):
        """``(test nets, test_iter)``: ``given`` (one test_iter each), else
        Caffe's InitTestNets: test_net_param entries, then test_net files,
        then one instance of the generic net per remaining test_iter (net
        ``i`` seeded ``seed + i + 1``)."""
        p, src = self.param, self.source
        test_iter = list(p.test_iter)
        if given is not None:
            nets = list(given)
            if len(test_iter) != len(nets):
                raise NetDefinitionError(
                    f"{src}: {len(nets)} test net(s) given but test_iter has "
                    f"{len(test_iter)} value(s); give one test_iter per test net")
        else:
            sources = self._test_sources(test_iter)
            nets = []
            for i, source in enumerate(sources):
                state = p.test_state[i] if p.test_state else None
                nets.append(Net(source, "TEST", device=device, dtype=dtype,
                                stages=tuple(state.stage) if state else (),
                                level=state.level if state else 0, seed=seed + i + 1,
                                allow_python_modules=allow_python_modules))
        if nets and p.test_interval <= 0:
            raise NetDefinitionError(
                f"{src}: {len(nets)} test net(s) are defined, so test_interval must be > 0 "
                f"(found {p.test_interval})")
        return nets, test_iter

    def _test_sources(self, test_iter):
        p, src = self.param, self.source
        generic = self.net_sources()[1] if p.HasField("net") or p.HasField("net_param") \
            else None
        sources = list(p.test_net_param) + [self.resolve(f, "test_net") for f in p.test_net]
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
        return sources

    def snapshot_prefix(self, override=None):
        """The snapshot prefix (see the module docstring), or None when there
        is none (no field, and no file to derive it from)."""
        if override is not None:
            return os.fspath(override)
        prefix = self.param.snapshot_prefix
        if not prefix:
            return None if self.path is None else os.path.splitext(self.path)[0]
        if os.path.isabs(prefix) or not self.base_dir:
            return prefix
        under_solver = os.path.join(self.base_dir, prefix)
        if not os.path.isdir(os.path.dirname(os.path.abspath(under_solver))) \
                and os.path.isdir(os.path.dirname(os.path.abspath(prefix))):
            return prefix
        return under_solver
