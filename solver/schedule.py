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
  ``from_stage`` over the training split (detection.proposals); the file
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

Where it is written: the schema checks in solver/schedule_file.py, the
state and resume keys in solver/schedule_state.py, the training stage in
solver/schedule_train.py (one TrainingSession, the one solver.train runs),
the other stage kinds in solver/schedule_stages.py, the final evaluation in
solver/schedule_eval.py; this module runs the stages in order and is the
command line.
"""
import argparse
import os
import sys
import time

import numpy as np

from netdef.device import CPU
from netdef.errors import EngineError
from solver.cli import add_device_arguments, builtin_dataset, exit_status, open_dataset, \
    select_device
from solver.progress import Progress, format_duration
from solver.schedule_eval import final_evaluation, summary
from solver.schedule_file import Schedule, ScheduleError, match_layers, read_schedule
from solver.schedule_stages import assemble_stage, proposals_stage
from solver.schedule_state import (STATE_FILE, load_state, new_state, run_reason, save_state,
                                   skip_reason, stage_key)
from solver.schedule_train import train_stage
from solver.session import choose_seed
from solver.data_parallel import rank_gpu
from solver.world import current_world, root_stream

__all__ = ["Schedule", "ScheduleError", "ScheduleRun", "read_schedule", "run_schedule", "run",
           "main", "STATE_FILE", "match_layers"]

DEFAULT_OUT = "out"


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
    nets on the CPU, as solver.train chooses, else the library's; set for
    each stage and restored after it).

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
        # Under mpiexec every rank runs the schedule (each training stage
        # data-parallel); rank 0 alone prints and writes the log and state.
        self.world = current_world()
        stream = root_stream(self.world, stream)
        self.on_error, self.stream, self.dtype = on_error, stream, np.dtype(dtype)
        self.test_images, self.blas_threads = test_images, blas_threads
        self.state, self.progress = None, None
        self.keys, self.components, self.datasets = {}, {}, {}

    # -- what the stages use -----------------------------------------------------------------
    def say(self, text, **fields):
        if self.progress is not None:
            self.progress.event("info", text, **fields)
        else:
            print(text, file=self.stream, flush=True)

    def rel(self, path):
        """``path`` relative to the output folder (as the state records it)."""
        return os.path.relpath(os.path.abspath(path), os.path.abspath(self.out))

    def path(self, stage, field):
        """An output of ``stage`` recorded in the state (e.g. "solverstate",
        "caffemodel", "file") as an absolute path."""
        return os.path.abspath(os.path.join(self.out, self.state["stages"][stage][field]))

    def pretrained_path(self):
        """The pretrained weights: ``--weights``, else the schedule's
        ``pretrained`` (resolved), else None."""
        if self.weights:
            if not os.path.isfile(self.weights):
                raise ScheduleError(f"{self.schedule.path}: --weights '{self.weights}' not found")
            return self.weights
        if self.schedule.param.pretrained:
            return self.schedule.resolve(self.schedule.param.pretrained, self.schedule.path,
                                         "pretrained")
        return None

    def dataset(self, split):
        """The dataset ``split`` (opened once)."""
        if split not in self.datasets:
            self.datasets[split] = open_dataset(self.root, split, on_error=self.on_error)
        return self.datasets[split]

    def _save_state(self):
        if self.world.is_root:
            save_state(self.out, self.state)

    # -- the run -----------------------------------------------------------------------------
    def run(self):
        previous = load_state(self.out)
        if previous is not None and not self.resume:
            done = [n for n, e in previous.get("stages", {}).items() if e.get("status") == "done"]
            raise ScheduleError(
                f"{self.schedule.path}: {self.out} already holds a run of "
                f"{previous.get('schedule')} ({len(done)} stage(s) done: "
                f"{', '.join(done) or 'none'}); continue it with --resume, or give another --out")
        os.makedirs(self.out, exist_ok=True)
        log = os.path.join(self.out, "schedule_log.jsonl") if self.world.is_root else None
        self.progress = Progress(log, stream=self.stream)
        started = time.perf_counter()
        try:
            return self._run(previous, started)
        finally:
            self.progress.close()
            self.progress = None

    def _start(self, previous):
        """The seed, a fresh state, the dataset root and the training split."""
        schedule = self.schedule
        if self.resume and previous is None:
            self.say(f"--resume: nothing to resume in {self.out}: starting from the first stage")
        self.seed = choose_seed(self.seed_given,
                                schedule.param.random_seed if schedule.param.random_seed >= 0
                                else None, (previous or {}).get("seed"))
        self.state = new_state(schedule, self.seed)
        self.say(f"schedule '{schedule.name}' ({schedule.path}): {len(schedule.stages)} stages "
                 f"on {self.device}; output in {self.out}; seed {self.seed}")
        if self.data:
            self.root = self.data
            self.say(f"dataset: {self.root} (train split {self.train_split}, test split "
                     f"{self.test_split})")
        else:
            self.root = builtin_dataset(self.say)
        self.state["data"] = os.path.abspath(self.root)
        self.train_set = self.dataset(self.train_split)
        self.say(f"training split '{self.train_split}': {len(self.train_set)} images of "
                 f"'{self.train_set.name}' ({self.train_set.num_classes - 1} classes)")

    def _run(self, previous, started):
        self._start(previous)
        old_stages = dict(previous.get("stages", {})) if previous else {}
        timings = [self._stage(stage, old_stages.get(stage.name))
                   for stage in self.schedule.stages]
        final_evaluation(self, previous)
        self.state["seconds"] = round(time.perf_counter() - started, 3)
        self._save_state()
        summary(self, timings)
        return self.state

    def _stage(self, stage, old):
        """Skip or run one stage (its earlier state entry ``old``); returns
        ``(stage, "skipped" or "ran", seconds)``."""
        key, components = stage_key(self, stage)
        self.keys[stage.name], self.components[stage.name] = key, components
        header = f"[{stage.index + 1}/{len(self.schedule.stages)}] {stage.name} ({stage.kind})"
        skip = skip_reason(stage, old, key, self.resume, self.out)
        if skip is not None:
            self.say(f"{header}: skipped: {skip}", stage=stage.name, status="skipped")
            self.state["stages"][stage.name] = old
            return stage, "skipped", 0.0
        self.say(f"{header}: runs ({run_reason(old, key, components, self.resume)})",
                 stage=stage.name, status="runs")
        started = time.perf_counter()
        try:
            if stage.kind == "train":
                entry = train_stage(self, stage, key)
            else:
                entry = (proposals_stage if stage.kind == "proposals" else assemble_stage)(
                    self, stage)
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
                     seconds=round(time.perf_counter() - started, 3))
        self.state["stages"][stage.name] = entry
        self._save_state()
        self.say(f"{header}: done in {format_duration(entry['seconds'])}", stage=stage.name,
                 status="done", seconds=entry["seconds"])
        return stage, "ran", entry["seconds"]


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
        run_schedule(path, data=args.data, weights=args.weights, out=out,
                     device=select_device(rank_gpu(getattr(args, "gpu", None), current_world())),
                     resume=bool(resume),
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
    world = current_world()
    world.abort_on_uncaught()

    def run_it():
        out = _resume_folder(args.resume, args.out, args.schedule) if args.resume else args.out
        run_schedule(args.schedule, data=args.data, weights=args.weights, out=out,
                     device=select_device(rank_gpu(args.gpu, world)), resume=bool(args.resume),
                     iters=args.iters,
                     seed=args.seed, evaluate=not args.no_eval, train_split=args.train_split,
                     test_split=args.test_split, test_images=args.test_images,
                     on_error=args.on_error, blas_threads=args.blas_threads, stream=stream)
        return 0
    return world.finish(exit_status(run_it))


if __name__ == "__main__":
    sys.exit(main())
