"""Staged training schedules: Faster R-CNN's alternating optimization (RPN;
the detector on that RPN's proposals; the RPN again with the shared
convolutions frozen; the detector with them frozen), declared in a prototxt
file of this engine's own schema and run, and resumed, stage by stage.

    python -m solver.schedule prototxt/tiny_staged_schedule.prototxt
    python -m solver.schedule SCHEDULE.prototxt [--data DIR] [--weights FILE] [--out DIR]
                              [--cpu | --gpu N] [--resume [OUT_DIR]] [--iters N] [--seed N]
                              [--test-images N] [--blas-threads N] [--no-eval]
    python -m solver.train SCHEDULE.prototxt ...        # the same (solver.train hands it here)

The schema (netdef/proto/caffe.proto: ScheduleParameter, StageParameter;
paths relative to the schedule file's folder)::

    name: "tiny staged"
    pretrained: "ResNet-101-model.caffemodel"    # optional; --weights overrides
    train_split: "trainval"  test_split: "test"  random_seed: 0
    stage {                                      # a training stage
      name: "stage1_rpn"
      net: "rfcn_tiny_staged_rpn_train.prototxt"
      solver { base_lr: 0.01 lr_policy: "step" stepsize: 300 max_iter: 400 ... }
      init_from: "pretrained"                    # or "random", or "stage:<name>"; repeatable
      frozen_layer: "conv1"                      # names or patterns ("res4*"); repeatable
    }
    stage {                                      # proposals of a trained RPN
      name: "stage1_proposals"
      generate_proposals { rpn_net: "rfcn_tiny_staged_rpn_test.prototxt"
                           from_stage: "stage1_rpn" }
    }
    stage {                                      # the detector on those proposals
      name: "stage1_fast_rcnn"  net: "..._staged_detector_train.prototxt"
      proposals_from: "stage1_proposals"  solver { ... }  init_from: "pretrained"
    }
    ...
    stage {                                      # the full detector, for testing
      name: "detector"
      assemble { net: "rfcn_tiny.prototxt" from_stage: "stage2_rpn"
                 from_stage: "stage2_fast_rcnn" }
    }

What a stage does:

- training: builds the stage's TRAIN net with every param spec of the
  ``frozen_layer`` layers set to lr_mult 0 (the net as trained is written to
  ``<out>/<stage>/train_net.prototxt``), loads ``init_from`` in order by
  layer name (``stage:<name>``: that stage's final solver snapshot, whose
  weights are not yet un-normalized), hands the dataset to the net's RoIData
  layer (with ``proposals_from``'s proposals in the precomputed-RoI form),
  trains with the stage's ``solver`` settings (SGDSolver: snapshots
  ``<out>/<stage>/<stage>_iter_N.solverstate.npz`` and ``.caffemodel``, the
  latter with the box regression un-normalized as py-faster-rcnn saves it),
  then checks that every frozen parameter is bit-for-bit what it was.
- generate_proposals: the RPN test net with the final ``.caffemodel`` of
  ``from_stage`` over the training split (solver.proposals); the file
  ``<out>/<stage>/<stage>_<key>.npz`` is keyed by its content, so an
  interrupted or repeated run reuses it.
- assemble: the full TEST-phase detector with, layer by layer, the final
  ``.caffemodel`` weights of the ``from_stage`` stages (a later stage wins; a
  layer no stage has is an error): ``<out>/<stage>/<stage>.caffemodel``.

After the stages the final detector (the last assemble or training stage)
is evaluated on the test split when it can be read (VOC mAP / COCO AP,
solver.test's evaluation), into ``<out>/evaluation.json``.

Resuming: ``<out>/schedule_state.json`` (written atomically after every
stage) records each stage's status, outputs and a key: a hash of the
stage's definition, its net files, the data, the seed and the keys of the
stages it reads from. ``--resume`` skips every stage that is done with an
unchanged key (a changed stage runs again, and with it every stage that
depends on it), continues an interrupted training stage from its latest
snapshot (the one written at Ctrl-C, or the latest periodic one), and
reruns the others. A run into an ``--out`` that already holds a schedule run
needs ``--resume``.
"""
import argparse
import dataclasses
import difflib
import fnmatch
import glob
import hashlib
import json
import os
import re
import secrets
import sys
import time

import numpy as np

from netdef.errors import DataError, EngineError, NetDefinitionError, NumericalError

__all__ = ["Schedule", "ScheduleError", "ScheduleRun", "read_schedule", "run_schedule", "run",
           "main", "STATE_FILE"]

STATE_FILE = "schedule_state.json"
STATE_KIND = "netdef-schedule-state"
STATE_VERSION = 1
DEFAULT_OUT = "out"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Solver fields the runner owns: the nets, evaluation and snapshot location.
_RUNNER_SOLVER_FIELDS = ("net", "net_param", "train_net", "train_net_param", "test_net",
                         "test_net_param", "test_iter", "test_interval", "test_state",
                         "snapshot_prefix", "weights")


_KIND_WORDS = {"train": "a training stage", "proposals": "a generate_proposals stage",
               "assemble": "an assemble stage"}


class ScheduleError(NetDefinitionError):
    """A mistake in a schedule file or in how it is run; the message names
    the schedule file and the stage."""


# -- reading and checking a schedule -------------------------------------------------------------

@dataclasses.dataclass
class Stage:
    """One stage of a schedule, checked.

    kind: "train", "proposals" or "assemble"; net: the resolved path of its
    net (train net, RPN test net or assembled detector); reads: the names of
    the stages whose outputs it uses, in order; where: "FILE: stage 'NAME'"
    for messages."""
    index: int
    name: str
    kind: str
    param: object
    net: str
    reads: list
    where: str


def _train_layer_names(path):
    """Layer names of the TRAIN phase of the net at ``path``."""
    from netdef.graph import filter_net
    from netdef.schema import read_net
    filtered, _ = filter_net(read_net(path), "TRAIN")
    return [lp.name for lp in filtered.layer]


def match_layers(pattern, names):
    """The names matching ``pattern`` (an exact name or a shell pattern)."""
    return [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]


class Schedule:
    """A schedule file, parsed and checked (see the module docstring).

    Schedule(path) raises ParseError for a syntax error (FILE:LINE:COL) and
    ScheduleError for a wrong stage (naming the file and the stage): no
    stages, a stage of no or several kinds, duplicate names, a missing net
    file, an unknown or later stage referenced, a stage of the wrong kind
    referenced, a frozen layer the net does not have."""

    def __init__(self, path):
        from netdef import caffe_pb2
        from netdef.schema import _read_source, parse_text
        self.path = os.fspath(path)
        text, _ = _read_source(self.path)
        self.param = parse_text(text, caffe_pb2.ScheduleParameter(), self.path)
        self.base_dir = os.path.dirname(os.path.abspath(self.path))
        self.name = self.param.name or os.path.splitext(os.path.basename(self.path))[0]
        self.stages, self.by_name = [], {}
        if not self.param.stage:
            raise ScheduleError(f"{self.path}: no stage {{ ... }} blocks: a schedule is a list of "
                                f"stages (training, generate_proposals, assemble)")
        for index, stage_param in enumerate(self.param.stage):
            stage = self._check(index, stage_param)
            self.stages.append(stage)
            self.by_name[stage.name] = stage

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def error(stage, text):
        """A ScheduleError about ``stage`` (a Stage)."""
        return ScheduleError(f"{stage.where}: {text}")

    def resolve(self, value, where, field):
        """``value`` relative to the schedule's folder (or absolute); an
        error naming ``field`` when the file does not exist."""
        path = value if os.path.isabs(value) else os.path.join(self.base_dir, value)
        if not os.path.isfile(path):
            raise ScheduleError(f"{where}: {field} '{value}' not found (looked for "
                                f"'{os.path.abspath(path)}'; paths are relative to the schedule "
                                f"file's folder)")
        return path

    def _earlier(self, where, name, kinds, field, index):
        """Check that ``name`` is an earlier stage of one of ``kinds``."""
        known = {s.name: s for s in self.stages}
        if name not in known:
            later = [s.name for s in self.param.stage[index + 1:]]
            if name in later:
                raise ScheduleError(f"{where}: {field} '{name}' refers to a later stage; a "
                                    f"stage can only use the outputs of the stages before it")
            close = difflib.get_close_matches(name, list(known) + later, n=3, cutoff=0.6)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            raise ScheduleError(f"{where}: {field} '{name}' is not a stage of this schedule"
                                f"{hint}; stages before this one: {', '.join(known) or 'none'}")
        if known[name].kind not in kinds:
            wanted = " or ".join(_KIND_WORDS[k] for k in kinds)
            raise ScheduleError(f"{where}: {field} '{name}' is {_KIND_WORDS[known[name].kind]}; "
                                f"it must be {wanted}")
        return name

    # -- one stage -------------------------------------------------------------------------
    def _check(self, index, p):
        label = f"stage #{index + 1}" + (f" '{p.name}'" if p.name else "")
        where = f"{self.path}: {label}"
        if not p.name:
            raise ScheduleError(f"{where}: every stage needs a name")
        if not _NAME_RE.match(p.name):
            raise ScheduleError(f"{where}: the name must be letters, digits, '_', '.' or '-' "
                                f"(it names the stage's output folder)")
        if p.name in self.by_name:
            raise ScheduleError(f"{where}: a stage named '{p.name}' comes earlier; stage names "
                                f"must be unique")
        where = f"{self.path}: stage '{p.name}'"
        given = {field.name for field, _ in p.ListFields()}
        training = [f for f in ("net", "solver", "init_from", "frozen_layer", "proposals_from")
                    if f in given]
        kinds = (["training (" + ", ".join(training) + ")"] if training else []) + \
            [k for k in ("generate_proposals", "assemble") if p.HasField(k)]
        if len(kinds) != 1:
            raise ScheduleError(
                f"{where}: a stage is exactly one of: a training stage (net, solver, init_from, "
                f"frozen_layer, proposals_from), generate_proposals {{ ... }} or assemble "
                f"{{ ... }}; found " + (" and ".join(kinds) if kinds else "none of them"))
        if training:
            return self._check_train(index, p, where)
        if p.HasField("generate_proposals"):
            return self._check_proposals(index, p, where)
        return self._check_assemble(index, p, where)

    def _check_train(self, index, p, where):
        if not p.HasField("net"):
            raise ScheduleError(f"{where}: a training stage needs net: the TRAIN-phase net file")
        if not p.HasField("solver"):
            raise ScheduleError(f"{where}: a training stage needs solver {{ ... }} settings "
                                f"(base_lr, lr_policy, max_iter, ...)")
        given = {field.name for field, _ in p.solver.ListFields()}
        owned = [f for f in _RUNNER_SOLVER_FIELDS if f in given]
        if owned:
            hint = " (use init_from for initial weights)" if "weights" in owned else ""
            raise ScheduleError(
                f"{where}: solver sets {', '.join(owned)}, which the schedule runner sets itself: "
                f"the stage's net is its net: field, snapshots go to the output folder, and the "
                f"final detector is evaluated after the last stage{hint}")
        net = self.resolve(p.net, where, "net")
        try:
            names = _train_layer_names(net)
        except EngineError as exc:
            raise ScheduleError(f"{where}: net {p.net}: {exc}") from None
        reads = []
        sources = list(p.init_from) or ["random"]
        if "random" in sources and len(sources) > 1:
            raise ScheduleError(f"{where}: init_from \"random\" stands alone (it means: no "
                                f"weights are loaded); found {', '.join(sources)}")
        for source in sources:
            if source in ("random", "pretrained"):
                continue
            if not source.startswith("stage:"):
                raise ScheduleError(f"{where}: init_from '{source}': expected \"pretrained\", "
                                    f"\"random\" or \"stage:<name of an earlier training "
                                    f"stage>\"")
            reads.append(self._earlier(where, source[len("stage:"):], ("train",), "init_from",
                                       index))
        for pattern in p.frozen_layer:
            if not pattern or not match_layers(pattern, names):
                close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.6)
                hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
                raise ScheduleError(f"{where}: frozen_layer '{pattern}' matches no layer of the "
                                    f"TRAIN phase of {p.net}{hint}")
        if p.HasField("proposals_from"):
            reads.append(self._earlier(where, p.proposals_from, ("proposals",),
                                       "proposals_from", index))
        from solver.lr_policy import LRPolicy
        try:
            LRPolicy.from_solver(p.solver, f"{where}: solver")
        except NetDefinitionError as exc:
            raise ScheduleError(str(exc)) from None
        return Stage(index, p.name, "train", p, net, reads, where)

    def _check_proposals(self, index, p, where):
        g = p.generate_proposals
        if not g.rpn_net:
            raise ScheduleError(f"{where}: generate_proposals needs rpn_net: the RPN test net")
        if not g.from_stage:
            raise ScheduleError(f"{where}: generate_proposals needs from_stage: the training "
                                f"stage whose weights the RPN uses")
        net = self.resolve(g.rpn_net, where, "rpn_net")
        reads = [self._earlier(where, g.from_stage, ("train",), "from_stage", index)]
        if g.HasField("pre_nms_top_n") or g.HasField("post_nms_top_n"):
            from netdef.schema import read_net
            try:
                types = {lp.type for lp in read_net(net).layer}
            except EngineError as exc:
                raise ScheduleError(f"{where}: rpn_net {g.rpn_net}: {exc}") from None
            if "Proposal" not in types:
                raise ScheduleError(f"{where}: pre_nms_top_n / post_nms_top_n override the "
                                    f"Proposal layer of rpn_net, but {g.rpn_net} has none")
        if g.HasField("scale") != g.HasField("max_size") or \
                (g.HasField("scale") and (g.scale < 1 or g.max_size < 1)):
            raise ScheduleError(f"{where}: give both scale and max_size (positive), or neither "
                                f"(then from_stage's data layer decides)")
        return Stage(index, p.name, "proposals", p, net, reads, where)

    def _check_assemble(self, index, p, where):
        a = p.assemble
        if not a.net:
            raise ScheduleError(f"{where}: assemble needs net: the full detector (its TEST "
                                f"phase is built)")
        if not a.from_stage:
            raise ScheduleError(f"{where}: assemble needs at least one from_stage")
        net = self.resolve(a.net, where, "assemble net")
        reads = [self._earlier(where, s, ("train",), "from_stage", index) for s in a.from_stage]
        return Stage(index, p.name, "assemble", p, net, reads, where)


def read_schedule(path):
    """``Schedule(path)``: parse and check a schedule file."""
    return Schedule(path)


# -- small helpers ---------------------------------------------------------------------------

def _digest(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


def _file_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_identity(path):
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def _message_text(message):
    from google.protobuf import text_format
    return text_format.MessageToString(message)


def _write_json(path, value):
    from netdef.snapshot_format import atomic_writer
    with atomic_writer(path) as handle:
        handle.write((json.dumps(value, indent=1) + "\n").encode("utf-8"))


def _write_text(path, text):
    from netdef.snapshot_format import atomic_writer
    with atomic_writer(path) as handle:
        handle.write(text.encode("utf-8"))


def _snapshot_meta(path):
    """The JSON metadata of a ``.solverstate.npz`` without reading its arrays
    ({} when unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return json.loads(bytes(archive["__meta__"]).decode("utf-8")).get("meta", {})
    except Exception:  # a damaged or foreign file is just not a candidate
        return {}


def _duration(seconds):
    from solver.progress import format_duration
    return format_duration(seconds)


# -- running a schedule ----------------------------------------------------------------------------

class ScheduleRun:
    """One run of a schedule (see the module docstring).

    ScheduleRun(schedule, *, data=None, weights=None, out=None, device=None,
                resume=False, iters=None, seed=None, evaluate=True,
                train_split=None, test_split=None, test_images=None,
                on_error="raise", blas_threads=None, stream=sys.stdout,
                dtype=np.float32)

    schedule: a Schedule or a path. data: dataset root (default: the
    built-in synthetic dataset). weights: the pretrained weights (overrides
    the schedule's ``pretrained``). out: output folder (default
    ``out/<schedule file stem>``). iters: every training stage's max_iter.
    seed: the base seed (default: the schedule's random_seed, else the one
    recorded by the run being resumed, else drawn). train_split /
    test_split override the schedule's; test_images: evaluate on the first N
    test images only. blas_threads: BLAS threads (default: one for small
    nets on the CPU, as solver.train chooses, else the library's).

    ``run()`` runs the stages and returns the state (also in ``self.state``,
    written to ``<out>/schedule_state.json``); ``path(stage, field)`` gives
    an output of a stage as an absolute path. Ctrl-C in a training stage
    records it as interrupted (with its snapshot) and re-raises
    KeyboardInterrupt.
    """

    def __init__(self, schedule, *, data=None, weights=None, out=None, device=None,
                 resume=False, iters=None, seed=None, evaluate=True, train_split=None,
                 test_split=None, test_images=None, on_error="raise", blas_threads=None,
                 stream=sys.stdout, dtype=np.float32):
        from netdef.device import CPU
        self.schedule = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
        stem = os.path.splitext(os.path.basename(self.schedule.path))[0]
        self.out = os.fspath(out) if out else os.path.join(DEFAULT_OUT, stem)
        self.data, self.weights = data, weights
        self.device = device if device is not None else CPU
        self.resume, self.evaluate = bool(resume), bool(evaluate)
        if iters is not None and iters < 1:
            raise ScheduleError(f"{self.schedule.path}: --iters must be >= 1, found {iters}")
        self.iters, self.seed_given = iters, seed
        p = self.schedule.param
        self.train_split = train_split or p.train_split
        self.test_split = test_split or p.test_split
        self.on_error, self.stream, self.dtype = on_error, stream, np.dtype(dtype)
        self.test_images = test_images
        self.blas_threads, self._blas_set = blas_threads, None
        self.state, self.progress = None, None
        self.keys, self.components = {}, {}

    # -- output ------------------------------------------------------------------------------
    def say(self, text, **fields):
        if self.progress is not None:
            self.progress.event("info", text, **fields)
        else:
            print(text, file=self.stream, flush=True)

    def _rel(self, path):
        return os.path.relpath(os.path.abspath(path), os.path.abspath(self.out))

    def path(self, stage, field):
        """An output of ``stage`` recorded in the state (e.g. "solverstate",
        "caffemodel", "file") as an absolute path."""
        return os.path.abspath(os.path.join(self.out, self.state["stages"][stage][field]))

    def _save_state(self):
        self.state["updated"] = round(time.time(), 3)
        _write_json(os.path.join(self.out, STATE_FILE), self.state)

    def _load_state(self):
        path = os.path.join(self.out, STATE_FILE)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                state = json.load(handle)
        except (OSError, ValueError) as exc:
            raise ScheduleError(f"{path}: cannot read the state of the earlier run ({exc}); "
                                f"remove it to start over") from None
        if state.get("kind") != STATE_KIND or state.get("version") != STATE_VERSION:
            raise ScheduleError(f"{path}: not a schedule state file of this version "
                                f"(kind {state.get('kind')!r}, version {state.get('version')!r})")
        return state

    # -- the run -----------------------------------------------------------------------------
    def run(self):
        from solver.progress import Progress
        schedule = self.schedule
        previous = self._load_state()
        if previous is not None and not self.resume:
            done = [n for n, e in previous.get("stages", {}).items() if e.get("status") == "done"]
            raise ScheduleError(
                f"{schedule.path}: {self.out} already holds a run of "
                f"{previous.get('schedule')} ({len(done)} stage(s) done: "
                f"{', '.join(done) or 'none'}); continue it with --resume, or give another --out")
        os.makedirs(self.out, exist_ok=True)
        self.progress = Progress(os.path.join(self.out, "schedule_log.jsonl"), stream=self.stream)
        started = time.perf_counter()
        try:
            return self._run(previous, started)
        finally:
            self.progress.close()
            self.progress = None
            if self._blas_set is not None:
                # Leave the process's BLAS as the library sets it by default.
                from solver.train import set_blas_threads
                set_blas_threads(os.cpu_count() or 1)
                self._blas_set = None

    def _run(self, previous, started):
        from solver.test import builtin_dataset, open_dataset
        schedule = self.schedule
        if self.resume and previous is None:
            self.say(f"--resume: nothing to resume in {self.out}: starting from the first stage")
        if self.seed_given is not None:
            seed = int(self.seed_given)
        elif schedule.param.random_seed >= 0:
            seed = int(schedule.param.random_seed)
        elif previous is not None and previous.get("seed") is not None:
            seed = int(previous["seed"])
        else:
            seed = secrets.randbits(31)
        self.seed = seed
        old_stages = dict(previous.get("stages", {})) if previous else {}
        self.state = {"kind": STATE_KIND, "version": STATE_VERSION,
                      "schedule": os.path.abspath(schedule.path), "name": schedule.name,
                      "seed": seed, "stages": {}, "evaluation": None}
        self.say(f"schedule '{schedule.name}' ({schedule.path}): {len(schedule.stages)} stages "
                 f"on {self.device}; output in {self.out}; seed {seed}")

        if self.data:
            self.root = self.data
            self.say(f"dataset: {self.root} (train split {self.train_split}, test split "
                     f"{self.test_split})")
        else:
            self.root = builtin_dataset(self.say)
        self.state["data"] = os.path.abspath(self.root)
        self.train_set = open_dataset(self.root, self.train_split, on_error=self.on_error)
        self.say(f"training split '{self.train_split}': {len(self.train_set)} images of "
                 f"'{self.train_set.name}' ({self.train_set.num_classes - 1} classes)")
        self._datasets = {self.train_split: self.train_set}

        timings = []
        for stage in schedule.stages:
            key, components = self._stage_key(stage)
            self.keys[stage.name], self.components[stage.name] = key, components
            old = old_stages.get(stage.name)
            header = f"[{stage.index + 1}/{len(schedule.stages)}] {stage.name} ({stage.kind})"
            skip_reason = self._skip_reason(stage, old, key)
            if skip_reason is not None:
                self.say(f"{header}: skipped: {skip_reason}", stage=stage.name, status="skipped")
                self.state["stages"][stage.name] = old
                timings.append((stage, "skipped", 0.0))
                continue
            why = self._run_reason(stage, old, key)
            self.say(f"{header}: runs ({why})", stage=stage.name, status="runs")
            t0 = time.perf_counter()
            try:
                entry = {"train": self._train, "proposals": self._proposals,
                         "assemble": self._assemble}[stage.kind](stage, key, old)
            except KeyboardInterrupt:
                self._save_state()
                raise
            except EngineError as exc:
                current = self.state["stages"].get(stage.name) or {}
                if current.get("status") != "interrupted":
                    self.state["stages"][stage.name] = dict(
                        kind=stage.kind, status="failed", key=key, error=str(exc))
                self._save_state()
                raise
            entry.update(kind=stage.kind, status="done", key=key, components=components,
                         seconds=round(time.perf_counter() - t0, 3))
            self.state["stages"][stage.name] = entry
            self._save_state()
            timings.append((stage, "ran", entry["seconds"]))
            self.say(f"{header}: done in {_duration(entry['seconds'])}", stage=stage.name,
                     status="done", seconds=entry["seconds"])

        self._final_evaluation(previous)
        self.state["seconds"] = round(time.perf_counter() - started, 3)
        self._save_state()
        self._summary(timings)
        return self.state

    # -- keys and decisions ------------------------------------------------------------------
    def _stage_seed(self, stage):
        p = stage.param
        if stage.kind == "train" and p.solver.random_seed >= 0:
            return int(p.solver.random_seed)
        return self.seed + stage.index

    def _stage_key(self, stage):
        """(key, components): what the stage's result depends on."""
        p = stage.param
        definition = p.__class__()
        definition.CopyFrom(p)
        if stage.kind == "train" and self.iters is not None:
            definition.solver.max_iter = self.iters
        files = [stage.net]
        components = {
            "definition": _message_text(definition),
            "net files": {os.path.basename(f): _file_digest(f) for f in files},
            "inputs": {name: self.keys[name] for name in stage.reads},
            "data": [os.path.abspath(self.root), self.train_split, self.on_error],
            "seed": self._stage_seed(stage) if stage.kind == "train" else None,
            "dtype": self.dtype.name,
        }
        if stage.kind == "proposals":
            split = p.generate_proposals.split or self.train_split
            components["data"] = [os.path.abspath(self.root), split, self.on_error]
        if stage.kind == "train" and "pretrained" in p.init_from:
            weights = self._pretrained_path()
            components["pretrained"] = _file_identity(weights) if weights else None
        digests = {name: _digest(value) for name, value in components.items()}
        return _digest(digests), digests

    _COMPONENT_WORDS = {"definition": "its settings in the schedule changed",
                        "net files": "its net file changed",
                        "inputs": "a stage it reads from was redone or changed",
                        "data": "the dataset or split changed", "seed": "the seed changed",
                        "dtype": "the dtype changed", "pretrained": "the pretrained weights changed"}

    def _outputs_exist(self, stage, entry):
        fields = {"train": ("solverstate", "caffemodel"), "proposals": ("file",),
                  "assemble": ("caffemodel",)}[stage.kind]
        return all(entry.get(f) and os.path.isfile(os.path.join(self.out, entry[f]))
                   for f in fields)

    def _skip_reason(self, stage, old, key):
        """Why a stage done in an earlier run is skipped now (None: it runs)."""
        if not self.resume or not old or old.get("status") != "done" or old.get("key") != key:
            return None
        if not self._outputs_exist(stage, old):
            return None
        if stage.kind == "train":
            return (f"done in an earlier run (iteration {old.get('iter')}, "
                    f"{old.get('caffemodel')})")
        if stage.kind == "proposals":
            return (f"done in an earlier run ({old.get('boxes')} proposals of "
                    f"{old.get('images')} images in {old.get('file')})")
        return f"done in an earlier run ({old.get('caffemodel')})"

    def _run_reason(self, stage, old, key):
        if not old:
            return "not run before"
        status = old.get("status")
        if old.get("key") != key:
            changed = [self._COMPONENT_WORDS.get(name, name)
                       for name, digest in self.components[stage.name].items()
                       if (old.get("components") or {}).get(name) != digest]
            return "again: " + ("; ".join(changed) if changed else "its inputs changed")
        if status == "done":
            return "again: its outputs are missing" if self.resume else "again"
        if status == "interrupted":
            return f"continuing: it was interrupted at iteration {old.get('iter')}"
        return f"again: it {status or 'did not finish'} in the earlier run"

    def _pretrained_path(self):
        if self.weights:
            if not os.path.isfile(self.weights):
                raise ScheduleError(f"{self.schedule.path}: --weights '{self.weights}' not found")
            return self.weights
        if self.schedule.param.pretrained:
            return self.schedule.resolve(self.schedule.param.pretrained, self.schedule.path,
                                         "pretrained")
        return None

    def _dataset(self, split):
        from solver.test import open_dataset
        if split not in self._datasets:
            self._datasets[split] = open_dataset(self.root, split, on_error=self.on_error)
        return self._datasets[split]

    def _choose_blas_threads(self, net):
        """One BLAS thread for a small net on the CPU (solver.train's rule:
        as fast alone, much faster when the cores are shared), the library's
        count for a large one, or ``blas_threads`` when given."""
        from solver.train import SMALL_NET_MACS, multiply_adds, set_blas_threads
        if self.blas_threads is not None:
            threads, why = self.blas_threads, "--blas-threads"
        elif self.device.is_gpu or "OPENBLAS_NUM_THREADS" in os.environ:
            return
        else:
            macs = multiply_adds(net)
            if macs < SMALL_NET_MACS:
                threads, why = 1, f"a small net: {macs / 1e9:.2f} G multiply-adds per pass"
            elif self._blas_set is None:
                return
            else:
                threads, why = os.cpu_count() or 1, "a large net"
        if threads != self._blas_set and set_blas_threads(threads):
            self._blas_set = threads
            self.say(f"  BLAS on {threads} thread(s) ({why})")

    # -- a training stage -------------------------------------------------------------------------
    def _solver_param(self, stage):
        from netdef.schema import upgrade_solver
        param = stage.param.solver.__class__()
        param.CopyFrom(stage.param.solver)
        param = upgrade_solver(param, stage.where)
        if self.iters is not None:
            param.max_iter = self.iters
        if param.max_iter < 1:
            raise self.schedule.error(stage, f"solver max_iter must be >= 1, found "
                                             f"{param.max_iter}")
        param.snapshot_after_train = True   # the final weights are the stage's output
        return param

    def _build_train_net(self, stage, seed):
        """The stage's TRAIN net with the frozen layers' lr_mult 0 (written to
        <out>/<stage>/train_net.prototxt); returns (net, frozen layer names)."""
        from netdef import Net
        from netdef.graph import filter_net
        from netdef.schema import format_net, read_net
        folder = os.path.join(self.out, stage.name)
        net_param, _ = filter_net(read_net(stage.net), "TRAIN")
        names = [lp.name for lp in net_param.layer]
        matches = {pattern: match_layers(pattern, names) for pattern in stage.param.frozen_layer}
        frozen = {n for found in matches.values() for n in found}
        copy_path = os.path.join(folder, "train_net.prototxt")

        def build():
            header = (f"# The TRAIN net of stage '{stage.name}' of {self.schedule.path}: "
                      f"{stage.param.net}" + (f" with layers {', '.join(sorted(frozen))} "
                                              f"frozen (lr_mult 0)" if frozen else "") + "\n")
            _write_text(copy_path, header + format_net(net_param))
            return Net(copy_path, "TRAIN", device=self.device, dtype=self.dtype, seed=seed)

        for lp in net_param.layer:
            if lp.name in frozen:
                for spec in lp.param:
                    spec.lr_mult, spec.decay_mult = 0.0, 0.0
        net = build()
        # A layer with fewer param specs than blobs trains the rest at lr_mult
        # 1: give every blob a frozen spec and build again.
        short = {lp.name: len(layer.blobs) for lp, layer in zip(net.layer_params, net.layers)
                 if lp.name in frozen and len(layer.blobs) > len(lp.param)}
        if short:
            for lp in net_param.layer:
                while lp.name in short and len(lp.param) < short[lp.name]:
                    lp.param.add(lr_mult=0.0, decay_mult=0.0)
            net = build()
        for pattern, found in matches.items():
            if not any(net.layer_dict[n].blobs for n in found if n in net.layer_dict):
                raise self.schedule.error(
                    stage, f"frozen_layer '{pattern}' matches only layers without parameters "
                           f"({', '.join(found)}): nothing to freeze")
        frozen = [n for n in net.layer_dict if n in frozen and net.layer_dict[n].blobs]
        trained = {id(lp.blob): lp.layer for lp in net.learnable_params if lp.lr_mult != 0}
        for name in frozen:
            for i, blob in enumerate(net.layer_dict[name].blobs):
                if id(blob) in trained:
                    raise self.schedule.error(
                        stage, f"frozen layer '{name}' shares parameter {i} with layer "
                               f"'{trained[id(blob)]}', which is trained in this stage; freeze "
                               f"both or neither")
        return net, frozen

    def _data_layer(self, stage, net):
        from layers.roi_data import RoIDataLayer
        from solver.train import class_mismatch_hint
        layers = [layer for layer in net.layers if isinstance(layer, RoIDataLayer)]
        if len(layers) != 1:
            raise self.schedule.error(
                stage, f"the TRAIN phase of {stage.param.net} needs exactly one RoIData data "
                       f"layer for the runner to feed the dataset through; found {len(layers)}")
        layer, dataset = layers[0], self.train_set
        if not self.data and dataset.num_classes < layer.num_classes:
            # The built-in dataset fills the first classes of a larger net
            # (as solver.train does it).
            from solver.train import pad_classes
            self.say(f"  note: {stage.param.net} is built for {layer.num_classes - 1} classes, "
                     f"the built-in dataset has {dataset.num_classes - 1}: they train as the "
                     f"first {dataset.num_classes - 1}, the others get no examples (a net for "
                     f"this dataset: {class_mismatch_hint(stage.net, dataset.num_classes)})")
            dataset = self.train_set = self._datasets[self.train_split] = \
                pad_classes(dataset, layer.num_classes)
        if dataset.num_classes != layer.num_classes:
            raise DataError(
                f"{stage.where}: dataset '{dataset.name}' has {dataset.num_classes} classes "
                f"(background included: {', '.join(dataset.classes)}) but {stage.param.net} is "
                f"built for {layer.num_classes} ({layer.name}'s num_classes). Regenerate the "
                f"net for this dataset:\n    {class_mismatch_hint(stage.net, dataset.num_classes)}")
        p = stage.param
        if layer.has_rpn:
            if p.HasField("proposals_from"):
                raise self.schedule.error(
                    stage, f"proposals_from is set, but the data layer '{layer.name}' of "
                           f"{p.net} is in its end-to-end form (has_rpn: tops data, im_info, "
                           f"gt_boxes), which takes no proposals")
            layer.set_dataset(dataset)
            self.say(f"  data: {len(dataset)} images of '{dataset.name}', "
                     f"{layer.examples} examples with flips, ground truth for the RPN")
            return layer
        if not p.HasField("proposals_from"):
            raise self.schedule.error(
                stage, f"the data layer '{layer.name}' of {p.net} is in its precomputed-RoI form "
                       f"(has_rpn: false), so the stage needs proposals_from: a "
                       f"generate_proposals stage before it")
        from solver.proposals import Proposals
        path = self.path(p.proposals_from, "file")
        proposals = Proposals.load(path)
        layer.set_dataset(dataset, proposals=proposals.for_dataset(dataset, path))
        self.say(f"  data: {len(dataset)} images of '{dataset.name}', {layer.examples} examples "
                 f"with flips, {proposals.total} proposals from stage '{p.proposals_from}' "
                 f"({self._rel(path)})")
        return layer

    def _export_settings(self, net, data_layer):
        """(normalization, export_transform, bbox layer) of a stage net whose
        box targets are normalized: the precomputed-RoI data layer's or a
        ProposalTarget layer's settings."""
        from layers.proposal_target import ProposalTargetLayer
        from solver.detector import BoxNormalization, bbox_export_transform, bbox_param_layer
        normalization = None
        settings = data_layer.sampler_settings
        if not data_layer.has_rpn and settings and settings["bbox_normalize_targets"]:
            normalization = BoxNormalization(tuple(settings["bbox_normalize_means"]),
                                             tuple(settings["bbox_normalize_stds"]))
        else:
            targets = [l for l in net.layers if isinstance(l, ProposalTargetLayer)]
            if targets and targets[0].normalize:
                normalization = BoxNormalization(tuple(targets[0].means.tolist()),
                                                 tuple(targets[0].stds.tolist()))
        if normalization is None:
            return None, None, None
        found = bbox_param_layer(net, "bbox_pred")
        if found is None:
            self.say("  note: no layer with parameters produces bbox_pred; the .caffemodel "
                     "export keeps normalized box deltas")
            return normalization, None, None
        return normalization, bbox_export_transform(found[0], found[1], normalization), found

    def _initialize(self, stage, net, frozen):
        """Load init_from in order; returns the names of the layers loaded."""
        from solver.detector import load_weights
        loaded = set()
        for source in list(stage.param.init_from) or ["random"]:
            if source == "random":
                self.say("  init: random (the net's fillers)")
                continue
            if source == "pretrained":
                path = self._pretrained_path()
                if path is None:
                    self.say("  init: no pretrained weights (neither --weights nor the "
                             "schedule's pretrained): this stage starts from random "
                             "initialization (the net's fillers)")
                    continue
                what = "pretrained"
            else:
                name = source[len("stage:"):]
                path, what = self.path(name, "solverstate"), f"stage '{name}'"
            report = load_weights(net, path).report
            loaded.update(report.loaded)
            self.say(f"  init from {what}: {report.summary()}")
        unset = [n for n in frozen if n not in loaded]
        if unset:
            self.say(f"  warning: frozen layer(s) {', '.join(unset)} were not loaded by "
                     f"init_from, so they stay at their random initial values")
        return loaded

    def _resumable_snapshot(self, prefix, key):
        """The latest snapshot under ``prefix`` written by this stage
        definition (its metadata carries the stage key), or None."""
        from solver.snapshot import STATE_SUFFIX
        found = []
        for path in glob.glob(glob.escape(prefix) + "_iter_*" + STATE_SUFFIX):
            tail = path[len(prefix) + len("_iter_"):-len(STATE_SUFFIX)]
            if tail.isdigit():
                found.append((int(tail), path))
        for it, path in sorted(found, reverse=True):
            meta = _snapshot_meta(path)
            if meta.get("kind") == "solverstate" and \
                    (meta.get("metadata") or {}).get("stage_key") == key:
                return path
            self.say(f"  note: {self._rel(path)} belongs to another definition of the stage "
                     f"(or is unreadable): not resumed from")
        return None

    def _train(self, stage, key, old):
        import gc
        from netdef.device import to_numpy
        from solver.progress import Progress
        from solver.sgd import SGDSolver
        from solver.snapshot import snapshot_paths
        folder = os.path.join(self.out, stage.name)
        os.makedirs(folder, exist_ok=True)
        prefix = os.path.join(folder, stage.name)
        seed = self._stage_seed(stage)
        param = self._solver_param(stage)
        net, frozen = self._build_train_net(stage, seed)
        self._choose_blas_threads(net)
        data_layer = self._data_layer(stage, net)
        normalization, transform, bbox_layer = self._export_settings(net, data_layer)
        scale = (int(data_layer.scales[0]), int(data_layer.max_size))
        metadata = {
            "classes": list(self.train_set.classes), "dataset": self.train_set.name,
            "dataset_root": os.path.abspath(self.root), "net": os.path.abspath(stage.net),
            "bbox_normalization": normalization.as_dict() if normalization else None,
            "bbox_layer": list(bbox_layer) if bbox_layer else None, "test_scale": list(scale),
            "schedule": os.path.abspath(self.schedule.path), "stage": stage.name,
            "stage_key": key}
        if frozen:
            self.say(f"  frozen (lr_mult 0): {', '.join(frozen)}")
        progress = Progress(os.path.join(folder, "train_log.jsonl"), stream=self.stream)
        try:
            solver = SGDSolver(param, net=net, test_nets=[], log=progress, seed=seed,
                               snapshot_prefix=prefix, metadata=metadata,
                               export_transform=transform, base_dir=self.schedule.base_dir)
        except NetDefinitionError as exc:
            # The solver names its source "<SolverParameter>": name the stage.
            data_layer.close()
            progress.close()
            text = str(exc).replace("<SolverParameter>: ", "", 1)
            raise ScheduleError(f"{stage.where}: solver: {text}") from None
        try:
            snapshot = self._resumable_snapshot(prefix, key) if self.resume else None
            if snapshot is not None:
                solver.restore(snapshot)
                solver.metadata.update(metadata)
                self.say(f"  resuming from iteration {solver.iter} ({self._rel(snapshot)})")
            else:
                self._initialize(stage, net, frozen)
            before = {name: [np.array(to_numpy(blob.data)) for blob in net.layer_dict[name].blobs]
                      for name in frozen}
            self.say(f"  training iterations {solver.iter}..{param.max_iter} (base_lr "
                     f"{param.base_lr:g}, lr_policy {param.lr_policy}, seed {seed})")
            try:
                solver.solve()
            except KeyboardInterrupt:
                where = solver.interrupt_snapshot
                self.state["stages"][stage.name] = dict(
                    kind="train", status="interrupted", key=key, iter=solver.iter,
                    snapshot=self._rel(where) if where else None)
                self.say(f"interrupted in stage '{stage.name}' at iteration {solver.iter}"
                         + (f" (snapshot {self._rel(where)})" if where else "")
                         + f": continue with python -m solver.schedule {self.schedule.path} "
                           f"--out {self.out} --resume")
                raise
            state_path, model_path = snapshot_paths(prefix, solver.iter)
            if solver.last_snapshot != state_path or not os.path.isfile(state_path) \
                    or not os.path.isfile(model_path):
                state_path = solver.snapshot()
            self._check_frozen(stage, net, before)
        finally:
            data_layer.close()
            progress.close()
        entry = dict(iter=solver.iter, max_iter=param.max_iter, solverstate=self._rel(state_path),
                     caffemodel=self._rel(model_path), net=self._rel(os.path.join(
                         folder, "train_net.prototxt")), frozen=frozen,
                     init=list(stage.param.init_from) or ["random"],
                     loss=solver.smoothed_loss if solver.loss_window else None)
        if stage.param.HasField("proposals_from"):
            entry["proposals"] = self.state["stages"][stage.param.proposals_from]["file"]
        self.say(f"  final weights: {entry['caffemodel']} (snapshot {entry['solverstate']})")
        del solver, net
        gc.collect()
        return entry

    def _check_frozen(self, stage, net, before):
        from netdef.device import to_numpy
        for name, arrays in before.items():
            for i, (was, blob) in enumerate(zip(arrays, net.layer_dict[name].blobs)):
                now = to_numpy(blob.data)
                if not np.array_equal(was, now):
                    changed = int(np.count_nonzero(was != now))
                    raise NumericalError(
                        f"{stage.where}: frozen layer '{name}' parameter {i} changed during the "
                        f"stage ({changed} of {now.size} values); frozen layers must keep "
                        f"their weights exactly")
        if before:
            self.say(f"  checked: the {len(before)} frozen layer(s) are unchanged")

    # -- a proposal stage --------------------------------------------------------------------------
    def _proposals(self, stage, key, old):
        import gc
        from netdef import Net
        from netdef.schema import format_net, read_net
        from solver.detector import find_data_layer_scale
        from solver.proposals import cache_path, generate_proposals, load_or_generate, \
            proposals_key
        g = stage.param.generate_proposals
        folder = os.path.join(self.out, stage.name)
        os.makedirs(folder, exist_ok=True)
        source = self.schedule.by_name[g.from_stage]
        weights = self.path(g.from_stage, "caffemodel")
        net_param = read_net(stage.net)
        for lp in net_param.layer:
            if lp.type == "Proposal":
                if g.HasField("pre_nms_top_n"):
                    lp.proposal_param.test_pre_nms_top_n = g.pre_nms_top_n
                if g.HasField("post_nms_top_n"):
                    lp.proposal_param.test_post_nms_top_n = g.post_nms_top_n
        net_text = format_net(net_param)
        net_path = os.path.join(folder, "rpn_net.prototxt")
        _write_text(net_path, f"# The RPN test net of stage '{stage.name}' of "
                              f"{self.schedule.path}: {g.rpn_net}"
                              + (" with the schedule's top-N overrides" if
                                 g.HasField("pre_nms_top_n") or g.HasField("post_nms_top_n")
                                 else "") + "\n" + net_text)
        if g.HasField("scale"):
            scale, max_size = int(g.scale), int(g.max_size)
        else:
            scale, max_size = find_data_layer_scale(source.net)
        split = g.split or self.train_split
        dataset = self._dataset(split)
        content_key = proposals_key(net_text, weights, dataset.records, scale=scale,
                                    max_size=max_size, rois_blob=g.rois_blob,
                                    scores_blob=g.scores_blob, dtype=self.dtype.name)
        path = cache_path(folder, stage.name, content_key)
        self.say(f"  RPN of stage '{g.from_stage}' ({self._rel(weights)}) over {len(dataset)} "
                 f"images of split '{split}' at scale {scale} (max {max_size})")

        def make():
            net = Net(net_path, "TEST", device=self.device, dtype=self.dtype,
                      seed=self.seed + stage.index)
            self._choose_blas_threads(net)
            report = net.copy_from(weights)
            if report.missing:
                raise self.schedule.error(
                    stage, f"the RPN net {g.rpn_net} has layers with parameters that stage "
                           f"'{g.from_stage}' did not train: {', '.join(report.missing)}")
            return generate_proposals(
                net, dataset.records, scale=scale, max_size=max_size, rois_blob=g.rois_blob,
                scores_blob=g.scores_blob, progress=self._counter(stage.name, "images"),
                meta={"dataset": dataset.name, "split": split, "rpn_net": os.path.abspath(
                    stage.net), "weights": os.path.abspath(weights), "from_stage": g.from_stage,
                    "scale": scale, "max_size": max_size})

        proposals, reused = load_or_generate(path, content_key, make, self.say)
        per_image = proposals.total / max(len(proposals), 1)
        self.say(f"  {'reused the cached' if reused else 'wrote'} {proposals.total} proposals "
                 f"({per_image:.1f} per image) of {len(proposals)} images: {self._rel(path)}")
        gc.collect()
        return dict(file=self._rel(path), proposals_key=content_key, images=len(proposals),
                    boxes=proposals.total, split=split, reused=reused,
                    weights=self._rel(weights))

    def _counter(self, what, unit, every=None):
        """A progress callback: a line every ~10% (or ``every``) with the rate
        and the ETA."""
        started = time.perf_counter()

        def report(done, total):
            step = every or max(total // 10, 1)
            if done == total or done % step == 0:
                elapsed = max(time.perf_counter() - started, 1e-9)
                rate = done / elapsed
                eta = (total - done) / rate if rate else None
                self.progress.message(f"  {what}: {done}/{total} {unit} ({rate:.1f}/s, "
                                      f"ETA {_duration(eta)})")
        return report

    # -- an assembling stage --------------------------------------------------------------------------
    def _assemble(self, stage, key, old):
        import gc
        from netdef import Net
        from netdef.caffemodel import conform_blob
        from netdef.device import to_numpy
        from netdef.weights import read_layer_arrays
        a = stage.param.assemble
        folder = os.path.join(self.out, stage.name)
        os.makedirs(folder, exist_ok=True)
        net = Net(stage.net, "TEST", device=self.device, dtype=self.dtype)
        taken, differ = {}, []
        for name in a.from_stage:
            path = self.path(name, "caffemodel")
            stored = read_layer_arrays(path)
            for layer_name, layer in net.layer_dict.items():
                if not layer.blobs or layer_name not in stored:
                    continue
                arrays = stored[layer_name]
                if len(arrays) != len(layer.blobs):
                    raise self.schedule.error(
                        stage, f"layer '{layer_name}' has {len(layer.blobs)} parameter blob(s) "
                               f"in {a.net} but {len(arrays)} in stage '{name}' ({path})")
                values = [conform_blob(x, blob.shape, f"stage '{name}' layer '{layer_name}' "
                                                      f"param {i}")
                          for i, (x, blob) in enumerate(zip(arrays, layer.blobs))]
                if layer_name in taken and not all(
                        np.array_equal(v, to_numpy(blob.data))
                        for v, blob in zip(values, layer.blobs)):
                    differ.append(f"{layer_name} ({taken[layer_name]} -> {name})")
                with net.device.context():
                    for v, blob in zip(values, layer.blobs):
                        blob.data[...] = net.device.asarray(v, dtype=blob.dtype)
                taken[layer_name] = name
        missing = [n for n, layer in net.layer_dict.items() if layer.blobs and n not in taken]
        if missing:
            raise self.schedule.error(
                stage, f"layers of {a.net} with parameters that no from_stage trained: "
                       f"{', '.join(missing)}")
        if differ:
            self.say(f"  note: weights that differ between stages, the later taken: "
                     f"{', '.join(differ)}")
        path = os.path.join(folder, f"{stage.name}.caffemodel")
        net.save(path)
        sources = {}
        for layer_name, name in taken.items():
            sources.setdefault(name, []).append(layer_name)
        for name, layers in sources.items():
            self.say(f"  from stage '{name}': {len(layers)} layers")
        self.say(f"  detector weights: {self._rel(path)} (net {a.net})")
        del net
        gc.collect()
        return dict(caffemodel=self._rel(path), net=os.path.abspath(stage.net),
                    sources=sources, differ=differ)

    # -- evaluation ----------------------------------------------------------------------------------
    def _final_stage(self):
        for stage in reversed(self.schedule.stages):
            if stage.kind in ("train", "assemble"):
                return stage
        return None

    def _final_evaluation(self, previous):
        from solver.detector import Detector, load_test_net
        from solver.test import detection_progress, evaluate_detections, is_coco_path, \
            open_dataset, summary_line
        stage = self._final_stage()
        if stage is None:
            return
        entry = self.state["stages"][stage.name]
        weights = self.path(stage.name, "caffemodel" if stage.kind == "assemble"
                            else "solverstate")
        self.state["final"] = dict(stage=stage.name, weights=self._rel(weights),
                                   net=os.path.abspath(stage.net))
        self.say(f"final detector: stage '{stage.name}', {self._rel(weights)}")
        if not self.evaluate:
            return
        key = _digest([entry.get("key"), self.test_split, self.test_images])
        earlier = (previous or {}).get("evaluation")
        if earlier and earlier.get("key") == key:
            self.state["evaluation"] = earlier
            self.say(f"evaluation: done in an earlier run: {summary_line(earlier)}")
            return
        try:
            test_set = open_dataset(self.root, self.test_split, on_error=self.on_error,
                                    for_testing=True)
        except (DataError, OSError) as exc:
            self.say(f"no evaluation: cannot read the test split '{self.test_split}': {exc}")
            return
        from solver.datasets import DetectionDataset
        if self.train_set.num_classes > test_set.num_classes:   # padded built-in classes
            from solver.train import pad_classes
            test_set = pad_classes(test_set, self.train_set.num_classes)
        if self.test_images is not None:
            test_set = DetectionDataset(test_set.name, test_set.classes,
                                        test_set.records[:max(self.test_images, 0)])
        try:
            net, info = load_test_net(stage.net, weights, device=self.device)
        except NetDefinitionError as exc:
            self.say(f"no evaluation: no test net for {stage.param.net or stage.net}: {exc}")
            return
        outputs = ("rois", "cls_prob", "bbox_pred")
        if not all(name in net.blobs for name in outputs):
            self.say(f"no evaluation: the test net {info.path} of the last stage is not a "
                     f"detector (it has no {' / '.join(n for n in outputs if n not in net.blobs)}"
                     f"); end the schedule with an assemble stage")
            return
        detector = Detector(net, scale=info.scale, max_size=info.max_size,
                            bbox_normalization=info.bbox_normalization)
        started = time.perf_counter()
        self.say(f"evaluating on {len(test_set)} images of split '{self.test_split}' (scale "
                 f"{info.scale}, max {info.max_size}) ...")
        all_boxes = detector.detect_dataset(test_set, detection_progress(self.stream, 100))
        _, table, summary = evaluate_detections(test_set, all_boxes, is_coco_path(self.root))
        print(table, file=self.stream, flush=True)
        summary = dict(summary, key=key, stage=stage.name, images=len(test_set),
                       seconds=round(time.perf_counter() - started, 3))
        self.state["evaluation"] = summary
        _write_json(os.path.join(self.out, "evaluation.json"), dict(summary, table=table))
        self.progress.event("eval", f"final detector: {summary_line(summary)}", **summary)

    def _summary(self, timings):
        lines = [f"schedule '{self.schedule.name}' finished in "
                 f"{_duration(self.state['seconds'])}:"]
        for stage, status, seconds in timings:
            entry = self.state["stages"][stage.name]
            output = entry.get("caffemodel") or entry.get("file") or ""
            lines.append(f"  {stage.name:<20} {stage.kind:<9} {status:<7} "
                         f"{_duration(seconds) if status == 'ran' else '-':>7}  {output}")
        final = self.state.get("final")
        if final:
            net = os.path.relpath(final["net"])
            lines.append(f"test: python -m solver.test {net} --weights "
                         f"{os.path.join(self.out, final['weights'])}"
                         + (f" --data {self.data}" if self.data else ""))
        for line in lines:
            self.say(line)


def run_schedule(path, **options):
    """Run the schedule at ``path`` (options: see ScheduleRun); returns the
    ScheduleRun, whose ``state`` holds every stage's outputs."""
    runner = ScheduleRun(path, **options)
    runner.run()
    return runner


# -- entry points -------------------------------------------------------------------------------

def _resume_folder(value, out, source):
    """The output folder named by ``--resume VALUE`` (a folder or its
    schedule_state.json)."""
    if value is True or value is None:
        return out
    value = os.fspath(value)
    folder = value if os.path.isdir(value) else (
        os.path.dirname(value) if os.path.basename(value) == STATE_FILE else None)
    if folder is None:
        raise ScheduleError(f"{source}: --resume takes the output folder of the schedule run (or "
                            f"its {STATE_FILE}); each stage resumes from its own snapshots. "
                            f"Found '{value}'")
    if out and os.path.abspath(out) != os.path.abspath(folder):
        raise ScheduleError(f"{source}: --resume {value} and --out {out} name different folders")
    return folder


def run(path, args, stream=None):
    """solver.train's dispatch point for schedule files: runs the schedule
    with solver.train's parsed arguments and returns the exit status (0
    done, 130 interrupted; errors propagate to solver.train). Its
    ``--resume`` value is the output folder; ``--train-split`` /
    ``--test-split`` override the schedule's only when they differ from
    solver.train's defaults."""
    for option in ("solver", "test_net", "eval_interval"):
        if getattr(args, option, None) is not None:
            raise ScheduleError(f"{path}: --{option.replace('_', '-')} does not apply to a staged "
                                f"schedule (each stage's solver settings are in the schedule)")
    out = getattr(args, "out", None)
    resume = getattr(args, "resume", None)
    if resume:
        out = _resume_folder(resume, out, path)
    train_split = getattr(args, "train_split", None)
    test_split = getattr(args, "test_split", None)
    try:
        from solver.test import select_device
        run_schedule(path, data=args.data, weights=args.weights, out=out,
                     device=select_device(getattr(args, "gpu", None)), resume=bool(resume),
                     iters=args.iters, seed=args.seed, evaluate=not args.no_eval,
                     train_split=None if train_split in (None, "trainval") else train_split,
                     test_split=None if test_split in (None, "test") else test_split,
                     test_images=getattr(args, "test_images", None),
                     on_error=getattr(args, "on_error", "raise"),
                     blas_threads=getattr(args, "blas_threads", None),
                     stream=sys.stdout if stream is None else stream)
    except KeyboardInterrupt:
        return 130
    return 0


def build_parser():
    from solver.test import add_device_arguments
    parser = argparse.ArgumentParser(
        prog="python -m solver.schedule",
        description="Run a staged training schedule (Faster R-CNN's alternating optimization: "
                    "RPN, detector on its proposals, RPN with the shared convolutions frozen, "
                    "detector with them frozen), stage by stage, resumably; then evaluate the "
                    "final detector on the test split.",
        epilog="Example (the tiny R-FCN on the built-in dataset, a few minutes on 2 cores): "
               "python -m solver.schedule prototxt/tiny_staged_schedule.prototxt")
    parser.add_argument("schedule", help="schedule prototxt (stage { ... } blocks)")
    parser.add_argument("--data", help="dataset: a VOC-layout folder, a VOCdevkit or a COCO "
                                       "instances JSON (default: the built-in synthetic dataset)")
    parser.add_argument("--train-split", help="training split (default: the schedule's "
                                              "train_split, trainval)")
    parser.add_argument("--test-split", help="split the final detector is evaluated on "
                                             "(default: the schedule's test_split, test)")
    parser.add_argument("--weights", help="pretrained weights for init_from \"pretrained\" "
                                          "(overrides the schedule's pretrained)")
    add_device_arguments(parser)
    parser.add_argument("--out", help="output folder (default out/<schedule file stem>)")
    parser.add_argument("--resume", nargs="?", const=True, metavar="OUT_DIR",
                        help="continue the run in --out (or OUT_DIR): finished stages are "
                             "skipped, an interrupted one continues from its snapshot")
    parser.add_argument("--iters", type=int, help="max_iter of every training stage (a quick "
                                                  "trial; lr steps stay where they are)")
    parser.add_argument("--seed", type=int, help="base seed (default: the schedule's "
                                                 "random_seed, else drawn and recorded)")
    parser.add_argument("--test-images", type=int, metavar="N",
                        help="evaluate on the first N test images only (a quick check)")
    parser.add_argument("--blas-threads", type=int, metavar="N",
                        help="BLAS threads (default: 1 for small nets on the CPU, else the "
                             "library's)")
    parser.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="bad annotations: stop, or skip them with a warning")
    return parser


def main(argv=None, stream=sys.stdout):
    """The entry point; returns the exit status (0 done, 1 a non-finite
    loss, 2 a user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        from solver.test import select_device
        out = _resume_folder(args.resume, args.out, args.schedule) if args.resume else args.out
        run_schedule(args.schedule, data=args.data, weights=args.weights, out=out,
                     device=select_device(args.gpu), resume=bool(args.resume), iters=args.iters,
                     seed=args.seed, evaluate=not args.no_eval, train_split=args.train_split,
                     test_split=args.test_split, test_images=args.test_images,
                     on_error=args.on_error, blas_threads=args.blas_threads, stream=stream)
    except KeyboardInterrupt:
        return 130
    except NumericalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
