"""The cases of the fuzz test and campaign: which input a case mutates, how
it is run, and what counts as an escape.

A case is named by its kind and index (``"prototxt:17"``, ``"binary:4"``)
and, with the campaign's seed, is the same mutant on every machine:

    case = make_case(seed=0, kind="prototxt", index=17, sources=PROTOTXT_FILES)
    outcome = run_case(case, folder)       # folder: a temporary folder
    outcome.result                         # "works", "error" or "escape"

- ``prototxt`` cases mutate one of the project's own files in prototxt/ (a
  net, a solver or a staged schedule; small files are drawn more often) with
  tools/fuzz_mutations.py, and run what a user would: a net is built
  (``Net``, TRAIN or TEST) and, when its inputs are all Input blobs, run
  forward (and backward in TRAIN), or given to ``python -m netdef.inspect``
  (which must exit 0, or 2 with a one-line error); a solver is constructed next to copies of
  the nets it names; a schedule is read and checked.
- ``binary`` cases mutate a ``.caffemodel``, a ``.weights`` or a
  ``.solverstate.npz`` made from a tiny net, or a ``.proposals.npz`` of
  three images (raw bytes, or structure-aware with tools/fuzz_binary.py),
  and load it: ``Net.copy_from`` for weights, ``SGDSolver.restore`` for the
  snapshot, ``Proposals.load`` for proposals (each file sometimes given to
  another of these loaders).

Every case must either work or raise a project error (``EngineError``).
An escape is anything else: another exception (MemoryError, RecursionError,
ValueError, ...), a failed load that changed the net's weights or the
solver's state, a load that accepted non-finite weights, or (in the campaign)
a case over its time limit or a crash of its process.
"""
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import random
import shutil
import signal
import time
import traceback
import warnings

import numpy as np

from detection.proposals import Proposals
from netdef.errors import EngineError
from netdef.inspect import main as inspect_main
from netdef.net import Net
from solver.schedule_file import Schedule
from solver.sgd import SGDSolver
from tools.fuzz_binary import mutate_caffemodel, mutate_npz, npz_members, write_npz
from tools.fuzz_mutations import mutate_bytes, mutate_text

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTOTXT_DIR = ROOT / "prototxt"
#: The project's prototxt files, smallest first.
PROTOTXT_FILES = tuple(sorted((p.name for p in PROTOTXT_DIR.glob("*.prototxt")),
                              key=lambda name: (PROTOTXT_DIR / name).stat().st_size))
#: The small ones (tiny nets, solvers, schedules): what tests/test_fuzz.py
#: mutates (a case of a ResNet-101 takes seconds; the campaign runs those).
SMALL_PROTOTXT = tuple(name for name in PROTOTXT_FILES if "tiny" in name or "schedule" in name)
#: The binary seeds: name -> file suffix.
BINARY_SEEDS = {"caffemodel": ".caffemodel", "weights": ".weights",
                "solverstate": ".solverstate.npz", "proposals": ".proposals.npz"}
#: How each seed is read (a case sometimes gives it to another loader).
LOADERS = {"caffemodel": "copy_from", "weights": "copy_from", "solverstate": "restore",
           "proposals": "load_proposals"}
#: Layer types that read a dataset: nets with one are built but not run.
DATA_TYPES = {"RoIData", "Data", "ImageData", "HDF5Data", "WindowData", "MemoryData", "Python"}
#: Source folders whose frames say where an escape surfaced.
PROJECT_PACKAGES = ("netdef", "layers", "solver", "detection", "prototxt")

TINY_NET = """
name: "fuzz"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } shape { dim: 2 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "uniform" min: 0 max: 2.99 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""

TINY_SOLVER = """
net: "net.prototxt"
base_lr: 0.01
momentum: 0.9
lr_policy: "fixed"
max_iter: 10
snapshot: 0
snapshot_prefix: "snap/fuzz"
random_seed: 1
"""


@dataclasses.dataclass
class Case:
    """One mutant: ``name`` ("kind:index"), the ``source`` it mutates, the
    ``steps`` of the mutation, its ``payload`` (text or bytes) and its
    ``action``: the phase a net is built in ("TRAIN"/"TEST") or, for binary
    cases, the loader that reads it ("copy_from", "restore",
    "load_proposals")."""
    name: str
    source: str
    steps: list
    payload: object
    action: str = ""


@dataclasses.dataclass
class Outcome:
    """What a case did: ``result`` "works", "error" or "escape"; ``detail``
    the error's class and first line (or the escape's); ``where`` the
    project file and function an escape surfaced in; ``named`` False for a
    binary case's error that does not name the file."""
    case: str
    source: str
    steps: list
    result: str
    detail: str = ""
    where: str = ""
    seconds: float = 0.0
    named: bool = True
    traceback: str = ""


class CaseTimeout(BaseException):
    """Raised in a case that ran past its time limit (not an Exception, so
    that no ``except Exception`` in the engine swallows it)."""


class CommandRefused(EngineError):
    """A command refused a mutant the documented way: exit status 2 and an
    ``error: ...`` line (a clean error, as a raised EngineError is)."""


class Escape(Exception):
    """A case that broke a promise without raising (changed state, accepted
    non-finite weights)."""


@contextlib.contextmanager
def time_limit(seconds):
    """Raise CaseTimeout in the main thread after ``seconds`` (checked
    between Python bytecodes, so a single long NumPy call runs to its end)."""
    def expire(signum, frame):
        raise CaseTimeout(f"over {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- making cases ---------------------------------------------------------------------------

def _case_rng(seed, name):
    return random.Random(f"{seed}:{name}")


def make_case(seed, kind, index, sources=PROTOTXT_FILES, seeds=None):
    """The case ``kind:index`` of campaign ``seed``. ``sources``: the prototxt
    files to draw from (the smaller, the likelier: weight 1/rank); ``seeds``:
    the binary seed files (name -> bytes, see ``make_binary_seeds``)."""
    name = f"{kind}:{index}"
    rng = _case_rng(seed, name)
    if kind == "prototxt":
        source = rng.choices(sources, weights=[1 / (i + 1) for i in range(len(sources))])[0]
        text, steps = mutate_text(rng, (PROTOTXT_DIR / source).read_text())
        return Case(name, source, steps, text, rng.choice(("TRAIN", "TEST", "TEST", "inspect")))
    source = rng.choice(sorted(BINARY_SEEDS))
    data = seeds[source]
    if rng.random() < 0.3:
        payload, steps = mutate_bytes(rng, data)
    elif source == "caffemodel":
        payload, steps = mutate_caffemodel(rng, data)
    else:
        members, steps = mutate_npz(rng, npz_members(data))
        payload = write_npz(members)
    action = LOADERS[source]
    if rng.random() < 0.1:
        action = rng.choice(sorted(set(LOADERS.values()) - {action}))
        steps.append(f"given to {action}")
    return Case(name, source, steps, payload, action)


def _tiny_solver(folder):
    """A fresh solver of TINY_NET with its files in ``folder``."""
    folder = pathlib.Path(folder)
    if not (folder / "solver.prototxt").exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "net.prototxt").write_text(TINY_NET)
        (folder / "solver.prototxt").write_text(TINY_SOLVER)
    return SGDSolver(str(folder / "solver.prototxt"), stream=None, dtype=np.float64,
                     handle_sigint=False)


def make_binary_seeds(folder):
    """The unmutated binary files (name -> bytes), made in ``folder`` (a
    temporary folder): the weights and snapshot of a tiny net trained two
    iterations, and a proposals file of three images."""
    solver = _tiny_solver(folder)
    solver.step(2)
    state_path = solver.snapshot()
    weights_path = os.path.join(folder, "fuzz.weights")
    solver.net.save_weights(weights_path)
    proposals_path = os.path.join(folder, "fuzz.proposals.npz")
    rng = np.random.default_rng(0)
    boxes = [np.sort(rng.random((n, 4)) * 50, axis=1)[:, [0, 2, 1, 3]] for n in (3, 0, 5)]
    Proposals(["img1", "img2", "img3"], boxes, [rng.random(len(b)) for b in boxes],
              {"dataset": "fuzz", "key": "0" * 16}).save(proposals_path)
    paths = {"solverstate": state_path, "weights": weights_path, "proposals": proposals_path,
             "caffemodel": state_path.replace(".solverstate.npz", ".caffemodel")}
    seeds = {name: pathlib.Path(path).read_bytes() for name, path in paths.items()}
    return {name: data if name == "caffemodel" else _stable_npz(data)
            for name, data in seeds.items()}


def _stable_npz(data):
    """``data`` (an .npz) with no time or place in it: the snapshot's
    ``time`` and ``solver`` fields and the members' zip dates fixed, so that
    a case's bytes are the same on every run (a reproducer's byte offsets
    stay valid)."""
    members = npz_members(data)
    for member in members:
        if member[0] == "__meta__.npy":
            header = json.loads(np.lib.format.read_array(io.BytesIO(member[1])).tobytes())
            for key, value in (("time", 1.0), ("solver", "solver.prototxt")):
                if key in header["meta"]:
                    header["meta"][key] = value
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.frombuffer(json.dumps(header, sort_keys=True)
                                                            .encode("utf-8"), dtype=np.uint8))
            member[1] = buffer.getvalue()
    return write_npz(members)


def copy_prototxt_files(folder):
    """Copies of prototxt/*.prototxt in ``folder``, so that a mutated solver
    or schedule finds the nets it names next to it."""
    for name in PROTOTXT_FILES:
        shutil.copyfile(PROTOTXT_DIR / name, os.path.join(folder, name))


# -- running cases --------------------------------------------------------------------------

def mutant_path(case, folder):
    """Where ``case``'s mutant is written: in ``folder``, named after its
    source (a prototxt keeps its name's suffix, a binary file its type's)."""
    if case.name.startswith("prototxt:"):
        return os.path.join(folder, "mutant_" + case.source)
    return os.path.join(folder, "mutant" + BINARY_SEEDS[case.source])


def _net_inputs(net):
    """Arrays for the net's Input blobs: uniform noise, and an ``im_info``
    of ``[height, width, 1]`` when the net has a 4-d ``data`` input."""
    rng = np.random.default_rng(0)
    arrays = {name: rng.random(net.blobs[name].shape, dtype=np.float32) for name in net.inputs}
    data, info = arrays.get("data"), arrays.get("im_info")
    if data is not None and info is not None and data.ndim == 4 and info.shape[-1:] == (3,):
        info[...] = [data.shape[2], data.shape[3], 1.0]
    return arrays


def _run_net(case):
    net = Net(case.payload, case.action)
    if {lp.type for lp in net.layer_params} & DATA_TYPES:
        return                              # needs a dataset: built is enough
    net.forward(**_net_inputs(net))
    if case.action == "TRAIN":
        net.backward()


def _run_prototxt(case, folder):
    path = mutant_path(case, folder)
    if "solver" in case.source:
        pathlib.Path(path).write_text(case.payload)
        solver = SGDSolver(path, stream=None, handle_sigint=False)
        solver.learning_rate(0)
        solver.learning_rate(max(int(solver.param.max_iter), 0))
    elif "schedule" in case.source:
        pathlib.Path(path).write_text(case.payload)
        Schedule(path)
    elif case.action == "inspect":
        pathlib.Path(path).write_text(case.payload)
        _run_inspect(path)
    else:
        _run_net(case)


def _run_inspect(path):
    """``python -m netdef.inspect`` on the mutant: exit status 0, or 2 with
    a one-line message (CommandRefused); a traceback is an escape."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = inspect_main([path])
    if status == 2 and err.getvalue().startswith("error: "):
        raise CommandRefused(err.getvalue().strip().split("\n")[0])
    if status != 0:
        raise Escape(f"netdef.inspect exited {status}: {err.getvalue()[:300]}")


def _params(net):
    return {f"{name}/{i}": np.array(blob.data, copy=True)
            for name, layer in net.layer_dict.items() for i, blob in enumerate(layer.blobs)}


def _unchanged(before, after, what):
    """Raise Escape when two dicts of arrays (or values) differ."""
    same = before.keys() == after.keys() and all(
        np.array_equal(before[k], after[k], equal_nan=True) if isinstance(before[k], np.ndarray)
        else before[k] == after[k] for k in before)
    if not same:
        raise Escape(what)


def _finite(params, what):
    bad = [key for key, array in params.items() if not np.all(np.isfinite(array))]
    if bad:
        raise Escape(f"{what} accepted non-finite values in {', '.join(bad)}")


def _solver_state(solver):
    state = {f"weights/{k}": v for k, v in _params(solver.net).items()}
    state.update({f"history/{k}": np.array(v, copy=True) for k, v in solver.history.items()})
    state.update(iter=solver.iter, loss_window=list(solver.loss_window),
                 rng=repr(solver.rng.bit_generator.state), metadata=repr(solver.metadata))
    return state


def _load_weights(path):
    net = Net(TINY_NET, "TEST", dtype=np.float64)
    before = _params(net)
    try:
        net.copy_from(path)
    except EngineError as exc:
        _unchanged(before, _params(net), f"copy_from failed ({_first_line(exc)}) "
                                         f"but changed the weights")
        raise
    _finite(_params(net), "copy_from")
    net.forward()


def _load_proposals(path):
    proposals = Proposals.load(path)
    arrays = {f"boxes/{i}": boxes for i, boxes in enumerate(proposals.boxes)}
    arrays.update({f"scores/{i}": scores for i, scores in enumerate(proposals.scores or ())})
    _finite(arrays, "Proposals.load")


def _restore(path, folder):
    solver = _tiny_solver(os.path.join(folder, "solver"))
    before = _solver_state(solver)
    try:
        solver.restore(path)
    except EngineError as exc:
        _unchanged(before, _solver_state(solver), f"restore failed ({_first_line(exc)}) "
                                                  f"but changed the solver's state")
        raise
    _finite(_params(solver.net), "restore")
    solver.step(1)


def _run_binary(case, folder):
    path = mutant_path(case, folder)
    pathlib.Path(path).write_bytes(case.payload)
    if case.action == "copy_from":
        _load_weights(path)
    elif case.action == "load_proposals":
        _load_proposals(path)
    else:
        _restore(path, folder)


def _first_line(exc):
    text = str(exc).strip().split("\n")[0]
    return f"{type(exc).__name__}: {text[:300]}"


def escape_site(exc):
    """``"path:function"`` of the deepest project frame of ``exc``'s traceback
    (where the escape surfaced), else of its deepest frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, Escape) or not frames:
        return "tools/fuzz_cases.py:" + (frames[-1].name if frames else "?")
    inside = [f for f in frames if _project_file(f.filename)]
    frame = (inside or frames)[-1]
    return f"{_relative(frame.filename)}:{frame.name}"


def _project_file(filename):
    relative = _relative(filename)
    return relative.split("/")[0] in PROJECT_PACKAGES


def _relative(filename):
    try:
        return pathlib.Path(filename).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return filename


def run_case(case, folder, limit=None):
    """Run ``case`` in ``folder`` (a temporary folder; for prototxt cases it
    must hold ``copy_prototxt_files``), within ``limit`` seconds if given;
    return its Outcome. Never raises for what the case does."""
    outcome = Outcome(case.name, case.source, case.steps, "works")
    start = time.perf_counter()
    run = _run_prototxt if case.name.startswith("prototxt:") else _run_binary
    try:
        with warnings.catch_warnings(), \
                (time_limit(limit) if limit else contextlib.nullcontext()):
            warnings.simplefilter("ignore")
            run(case, folder)
    except EngineError as exc:
        outcome.result, outcome.detail = "error", _first_line(exc)
        if run is _run_binary:
            outcome.named = os.path.basename(mutant_path(case, folder)) in str(exc)
    except CaseTimeout as exc:
        outcome.result, outcome.detail = "escape", f"timeout: {exc}"
        outcome.where = escape_site(exc)
    except (Exception, SystemExit) as exc:  # what the fuzz test is looking for
        outcome.result, outcome.detail = "escape", _first_line(exc)
        outcome.where = escape_site(exc)
        outcome.traceback = traceback.format_exc()
    outcome.seconds = time.perf_counter() - start
    return outcome
