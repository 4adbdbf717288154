"""Reading and checking a staged schedule file (the schema is described in
solver/schedule.py's docstring; netdef/proto/caffe.proto: ScheduleParameter,
StageParameter).

    schedule = Schedule("prototxt/tiny_staged_schedule.prototxt")
    schedule.stages          # [Stage(index, name, kind, param, net, reads, where)]
    schedule.by_name["stage1_rpn"].kind     # "train", "proposals" or "assemble"

Every mistake is found here, before any stage runs: a ParseError for the
syntax (FILE:LINE:COL), a ScheduleError naming the file and the stage for
the rest.
"""
import dataclasses
import difflib
import fnmatch
import os
import re

from netdef import caffe_pb2
from netdef.errors import EngineError, NetDefinitionError
from netdef.graph import filter_net
from netdef.schema import _read_source, parse_text, read_net
from solver.lr_policy import LRPolicy
from solver.solver_file import resolve_input

__all__ = ["Schedule", "ScheduleError", "Stage", "read_schedule", "match_layers",
           "RUNNER_SOLVER_FIELDS"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Solver fields the runner owns: the nets, evaluation and snapshot location.
RUNNER_SOLVER_FIELDS = ("net", "net_param", "train_net", "train_net_param", "test_net",
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
        try:
            return resolve_input(value, self.base_dir, where, field, current_dir=False,
                                 note="; paths are relative to the schedule file's folder")
        except NetDefinitionError as exc:
            raise ScheduleError(str(exc)) from None

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
        owned = [f for f in RUNNER_SOLVER_FIELDS if f in given]
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
