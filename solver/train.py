"""Train a detector: ``python -m solver.train``.

    python -m solver.train NET_OR_SOLVER.prototxt [--data DIR] [--weights FILE]
                           [--gpu N | --cpu] [--iters N] [--out DIR] [--resume SNAPSHOT]
                           [--seed N] [--solver FILE] [--eval-interval N]
                           [--proposals FILE [--test-proposals FILE] [--max-proposals K]]

What the first argument may be:

- a net file with both phases (include rules; what ``python -m prototxt.rfcn
  --phase BOTH`` writes, e.g. prototxt/rfcn_resnet101.prototxt): its TRAIN
  phase is trained, its TEST phase evaluated;
- a training net (py-R-FCN's train_agnostic.prototxt ...): trained as it is;
  its test net is the file beside it with "train" replaced by "test" in the
  name (without "_ohem" if that does not exist), or ``--test-net``;
- a solver file (``net:`` or ``train_net:``, paths relative to the solver's
  folder first, then the current directory; ``test_net:`` names the test
  net);
- a staged schedule: handed to ``solver.schedule.run(path, args)``
  (``is_schedule`` decides; see ``run_schedule``);
- a plain Caffe net (no RoIData layer: it reads its own data through Data,
  ImageData, HDF5Data ... layers) or its solver file: trained as ``caffe
  train --solver`` does, with the solver file's test nets
  (``solver.train_caffe``).

The run is one ``solver.session.TrainingSession`` (the same one each
training stage of ``solver.schedule`` runs); this module reads the
arguments, the settings (solver.train_settings), the dataset and the test
net around it.

Solver settings: the solver file; for a net file ``--solver FILE``, else
``<net stem>_solver.prototxt`` beside the net (prototxt/rfcn_tiny_solver.prototxt),
else the reference R-FCN settings (solver/defaults.py). ``--iters N``
overrides ``max_iter``; a solver's ``test_interval`` (or ``--eval-interval``)
is how often the mAP is measured during training (its ``test_iter`` and test
nets are not used: evaluation is detection on the test split).

py-R-FCN's Python-layer files keep their RPN / RoI sampling settings in
py-R-FCN's experiment config (rfcn_end2end.yml, rfcn_end2end_ohem.yml),
which a prototxt does not carry; for R-FCN nets (PSROIPooling) the values
of that config are added to each Python layer's ``param_str`` where it does
not set them (``apply_reference_config``, listed at start-up): Proposal
6000 / 300 boxes before / after NMS in training; ProposalTarget 128 RoIs
with background IoU from 0.1, or with OHEM (a BoxAnnotatorOHEM layer)
every RoI (-1) with background IoU from 0.0.

Data: ``--data`` (a VOC-layout folder, a VOCdevkit with ``--train-split
2007:trainval+2012:trainval``, or COCO JSON), else the built-in synthetic
dataset (generated once into the cache folder). The net's data layer
(RoIData, py-R-FCN's roi_data_layer.layer Python layer, or Caffe-SSD's
AnnotatedData, whose class count comes from the net's MultiBoxLoss / focal
loss / Region layer) gets the training split; a class count that does not
match the net is an error saying how to regenerate the net.

Fast R-CNN (a RoIData layer with ``has_rpn: false``) trains on the
proposals of ``--proposals FILE`` (``python -m solver.proposals``:
Selective Search, a .mat import; or an RPN stage's file) and, when its test
net takes ``rois`` as an input, is evaluated on those of
``--test-proposals FILE``; ``--max-proposals`` (default 2000) caps each
image's (solver.proposal_options).

Data-parallel: ``mpiexec -n N python -m solver.train ...`` (Slurm's
``srun`` alike) trains on N ranks; N ranks x iter_size S update as one
process with iter_size N x S on the same images (solver.data_parallel);
rank 0 writes the output, ``--gpu G`` gives local rank k GPU G + k,
``--lr-scaling linear [--lr-warmup ITERS]`` multiplies the rates by N.

Output in ``--out`` (default ``out/<net file stem>``): ``train_log.jsonl``
(one JSON record per display iteration, snapshot, evaluation ...),
``train_log.png`` (detection.plot), snapshots ``<stem>_iter_N.solverstate.npz``
(resumable with ``--resume``) and ``<stem>_iter_N.caffemodel`` (box
regression un-normalized: the weights are multiplied by the target stds and
the means added to the bias, as py-faster-rcnn's train_net saves them), and
``eval_iter_N.json`` with the metrics. At the end the test split is
evaluated: VOC07 11-point and area mAP per class (COCO AP for COCO data).
"""
import argparse
import json
import os
import sys
import time

from layers.annotated_data import AnnotatedDataLayer
from netdef.errors import DataError, NumericalError
from netdef.net import Net
from netdef.schema import read_net
from netdef.snapshot_format import atomic_writer
from netdef.weights import share_layers
from solver import schedule
from solver.blas import SMALL_NET_MACS
from detection.classes import class_mismatch_hint, pad_classes
from solver.cli import (add_device_arguments, builtin_dataset, exit_status, is_coco_path,
                        open_dataset, select_device)
from detection.evaluate import evaluate_detector, evaluation_source, open_test_set, summary_line
from detection.detector import Detector, keep_detection_blobs, load_weights, resolve_test_net
from detection.plot import plot_log
from detection.single_stage import input_transform, is_single_stage, scored_classes
from solver.progress import Progress, format_duration
from solver.proposal_options import (add_proposal_arguments, evaluation_proposals,
                                     training_proposals)
from solver.session import TrainingSession, choose_seed
from solver.train_caffe import PlainCaffeTraining, is_plain_caffe_net
from solver.defaults import apply_reference_config, reference_config
from solver.train_settings import classify_file, is_schedule, train_settings
from solver.data_parallel import LRScaling, rank_gpu
from solver.world import SilentStream, current_world

# Where the other ranks' closing lines go (rank 0 speaks for the job).
_NOWHERE = SilentStream()   # where a rank other than 0 prints

# classify_file ... pad_classes: importable from here as before they moved.
__all__ = ["main", "Training", "classify_file", "is_schedule", "run_schedule",
           "apply_reference_config", "class_mismatch_hint", "pad_classes"]


def run_schedule(path, args, stream=None):
    """The dispatch point for staged schedules: ``solver.schedule.run(path,
    args)`` (args: this parser's namespace) returns the exit status."""
    return schedule.run(path, args, stream=stream)


# -- the run --------------------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m solver.train",
        description="Train a detector (R-FCN, Faster R-CNN end-to-end) from a net, solver or "
                    "staged schedule prototxt, then evaluate it on the test split.",
        epilog="Example (the tiny R-FCN on the built-in dataset, a few minutes on 2 cores): "
               "python -m solver.train prototxt/rfcn_tiny.prototxt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prototxt", help="net (both phases, or a training net), solver or "
                                         "staged schedule file")
    parser.add_argument("--data", help="dataset: a VOC-layout folder (own data: plus "
                                       "classes.txt), a VOCdevkit, or a COCO instances JSON "
                                       "(default: the built-in synthetic dataset)")
    parser.add_argument("--train-split", default="trainval",
                        help="training split (default trainval; VOCdevkit unions as "
                             "2007:trainval+2012:trainval)")
    parser.add_argument("--test-split", default="test",
                        help="split evaluated at the end (default test)")
    parser.add_argument("--weights", help="initial weights by layer name (.caffemodel, or a "
                                          "native snapshot), e.g. ImageNet ResNet-101")
    add_device_arguments(parser)
    parser.add_argument("--iters", type=int, help="train until this iteration (overrides "
                                                  "max_iter)")
    parser.add_argument("--out", help="output folder (default out/<net file stem>)")
    parser.add_argument("--resume", metavar="SNAPSHOT",
                        help="continue from a .solverstate.npz snapshot")
    parser.add_argument("--seed", type=int, help="random seed (default: the solver's "
                                                  "random_seed, else drawn and logged)")
    parser.add_argument("--solver", metavar="FILE",
                        help="solver settings for a net file (default: <net>_solver.prototxt "
                             "beside it, else the reference R-FCN settings)")
    parser.add_argument("--test-net", metavar="FILE",
                        help="the test net, when it is not found from the net file")
    parser.add_argument("--eval-interval", type=int,
                        help="evaluate the mAP every N iterations too (default: the solver's "
                             "test_interval, else only at the end)")
    parser.add_argument("--test-images", type=int, metavar="N",
                        help="evaluate on the first N test images only (a quick check)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="bad annotations: stop, or skip them with a warning")
    parser.add_argument("--check-images", action="store_true",
                        help="decode every image fully while validating the dataset (slower): "
                             "a truncated or corrupt file is found before training, not when "
                             "first read (with --on-error skip it is left out)")
    parser.add_argument("--blas-threads", type=int, metavar="N",
                        help="BLAS threads (default: the library's, or 1 for nets under "
                             f"{SMALL_NET_MACS / 1e9:g} G multiply-adds per pass on the CPU)")
    add_proposal_arguments(parser, training=True)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="the nets' floating-point type (float64: exact comparisons, "
                             "e.g. N ranks against one process)")
    parser.add_argument("--lr-scaling", choices=("keep", "linear"), default="keep",
                        help="under mpiexec with N ranks: keep the solver's learning rates "
                             "(the default: N ranks x iter_size S update as one process with "
                             "iter_size N x S), or multiply them by N (linear rule)")
    parser.add_argument("--lr-warmup", type=int, default=0, metavar="ITERS",
                        help="with --lr-scaling linear: ramp the factor from 1 to N over the "
                             "first ITERS iterations")
    return parser


def main(argv=None, stream=None):
    """The entry point; returns the exit status (0 done, 1 stopped by a
    non-finite loss, 2 a user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    stream = sys.stdout if stream is None else stream
    world = current_world()
    world.abort_on_uncaught()
    if not world.is_root:
        stream = None   # rank 0 speaks for the job

    def run():
        kind = classify_file(args.prototxt)
        if kind == "schedule":
            if args.proposals or args.test_proposals:
                raise DataError("--proposals / --test-proposals are for a Fast R-CNN net; the "
                                "stages of a schedule name theirs (proposals_from)")
            return run_schedule(args.prototxt, args, stream)
        try:
            return Training(args, kind, stream).run()
        except NumericalError as exc:
            if getattr(exc, "agreed", False) and not world.is_root:
                return 1   # every rank stops; rank 0 prints the one message
            raise
    return world.finish(exit_status(run))


class Training:
    """One ``solver.train`` run (see the module docstring): the settings,
    the dataset and the test net around one TrainingSession."""

    def __init__(self, args, kind, stream):
        self.args, self.kind, self.stream = args, kind, stream
        self.progress = None
        self.session, self.test_net, self.test_set = None, None, None
        self.test_proposals = None
        self.input_transform = None

    def say(self, text):
        if self.progress is not None:
            self.progress.event("info", text)
        elif self.stream is not None:
            print(text, file=self.stream, flush=True)

    def run(self):
        started = time.perf_counter()
        world = self.world = current_world()
        self.device = select_device(rank_gpu(self.args.gpu, world))
        settings = train_settings(self.args, self.kind)
        stem = os.path.splitext(os.path.basename(settings.net_path))[0]
        self.out = self.args.out or os.path.join("out", stem)
        if world.is_root:   # rank 0 writes the log, snapshots and evaluations
            os.makedirs(self.out, exist_ok=True)
            self.progress = Progress(os.path.join(self.out, "train_log.jsonl"),
                                     stream=self.stream)
        else:
            self.progress = Progress(None, stream=None)
        if world.size > 1:
            self.say(f"data-parallel training on {world.describe()} (rank 0 writes); "
                     f"learning rates: {self.args.lr_scaling}"
                     + (f", warm-up {self.args.lr_warmup} iterations"
                        if self.args.lr_warmup else ""))
        try:
            seed = choose_seed(self.args.seed, settings.seed)
            self.say(f"solver.train {settings.net_path} on {self.device}; output in {self.out}; "
                     f"seed {seed}")
            self.say(settings.describe())
            net = self._train_net(settings.net_path, seed)
            if is_plain_caffe_net(net):
                status = PlainCaffeTraining(self, settings, net, seed, stem).run()
                self._plot()
                return status
            with TrainingSession(net, settings.net_path, device=self.device, say=self.say,
                                 blas_threads=self.args.blas_threads) as session:
                self.session = session
                return self._run(settings, stem, seed, started)
        finally:
            self.progress.close()

    def _train_net(self, net_path, seed):
        """The TRAIN net, with its reference project's experiment config
        values where its Python layers use them (solver.defaults)."""
        net_param = read_net(net_path)
        config = reference_config(net_param)
        applied = apply_reference_config(net_param, config)
        if applied:
            self.say(f"{config.project} Python layers ({config.why}): applied {config.path} "
                     "where param_str leaves it out: " + ", ".join(
                         f"{layer}.{key}={value!r}" for layer, key, value in applied))
        return Net(net_param if applied else net_path, "TRAIN", device=self.device, seed=seed,
                   dtype=self.args.dtype,
                   keep=[])  # lean memory: the solver reads the outputs only

    def _run(self, settings, stem, seed, started):
        session, args = self.session, self.args
        train_set, root = self._feed(settings.net_path)
        self._initial_weights(settings.weights)
        export = session.box_export()
        self.normalization, self.test_scale = export.normalization, session.test_scale
        metadata = session.metadata(train_set, root, export)
        self._build_test_net(settings, seed)
        self.test_proposals = evaluation_proposals(
            args.test_proposals, args, self.test_net, self.test_set, root, self.say,
            images=args.test_images)
        solver = session.create_solver(settings.param, progress=self.progress, seed=seed,
                                       prefix=os.path.join(self.out, stem), metadata=metadata,
                                       export=export, base_dir=settings.base_dir)
        solver.lr_scaling = LRScaling(args.lr_scaling, self.world.size, args.lr_warmup)
        if args.resume:
            restored = solver.restore(args.resume)
            if restored.get("classes") and list(restored["classes"]) != list(train_set.classes):
                self.say(f"warning: the snapshot was trained on classes "
                         f"{', '.join(restored['classes'][1:])}; the dataset has "
                         f"{', '.join(train_set.classes[1:])}")
            solver.metadata.update({k: v for k, v in metadata.items() if k != "classes"})
        self.say(f"ready in {time.perf_counter() - started:.1f}s; training to iteration "
                 f"{settings.param.max_iter}")
        try:
            state_path, model_path = session.train(
                every=settings.eval_interval,
                between=self.evaluate if self.test_net is not None else None)
        except KeyboardInterrupt:
            where = solver.interrupt_snapshot
            if where:
                print(f"interrupted: resume with {self._launch()}python -m solver.train "
                      f"{args.prototxt} "
                      f"--resume {where}" + (f" --out {self.out}" if args.out else ""),
                      file=self.stream or _NOWHERE)
            else:
                print("interrupted", file=self.stream or _NOWHERE)
            return 130
        except DataError:
            if solver.interrupt_snapshot:
                print(f"stopped by a data error; the last completed iteration is saved: resume "
                      f"with {self._launch()}python -m solver.train {args.prototxt} --resume "
                      f"{solver.interrupt_snapshot}" + (f" --out {self.out}" if args.out else "")
                      + " (--on-error skip leaves out images that fail)",
                      file=self.stream or _NOWHERE)
            raise
        return self._finish(state_path, model_path, started)

    def _launch(self):
        """How this run was launched, for resume hints ("mpiexec -n N ")."""
        return f"mpiexec -n {self.world.size} " if self.world.size > 1 else ""

    def _feed(self, net_path):
        """The training split handed to the data layer and the test split
        (``self.test_set``, None without evaluation); returns
        ``(training split, dataset root)``."""
        args, layer = self.args, self.session.data_layer
        if args.data:
            root = args.data
            self.say(f"dataset: {root} (splits {args.train_split} / {args.test_split})")
        else:
            root = builtin_dataset(self.say)
        if not self.world.is_root:
            args.no_eval = True   # rank 0 evaluates
        if not args.no_eval:
            evaluation_source(root, args.test_split)   # a COCO file needs its test file
        train_set = open_dataset(root, args.train_split, on_error=args.on_error,
                                 check_images=args.check_images)
        padded = not args.data and train_set.num_classes < layer.num_classes
        train_set = self.session.prepare(train_set, builtin=not args.data)
        self.session.feed(train_set, self._proposals(layer, train_set, root))
        left_out = f" ({len(layer.skipped)} without objects left out)" if layer.skipped else ""
        self.say(f"training on {len(train_set) - len(layer.skipped)} images of "
                 f"'{train_set.name}'{left_out} ({train_set.num_classes - 1} classes: "
                 f"{', '.join(train_set.classes[1:])}), {_input_description(layer)}")
        if not args.no_eval:
            try:
                self.test_set = open_test_set(root, args.test_split, on_error=args.on_error,
                                              check_images=args.check_images,
                                              pad_to=layer.num_classes if padded else None,
                                              images=args.test_images)
            except DataError as exc:
                self.say(f"no evaluation: cannot read the test split: {exc}")
        self.coco = is_coco_path(root)
        return train_set, root

    def _proposals(self, layer, train_set, root):
        """The training proposals of a RoIData layer (solver.proposal_options);
        None for AnnotatedData, which refuses --proposals."""
        if not isinstance(layer, AnnotatedDataLayer):
            return training_proposals(self.args, layer, train_set, root, self.say)
        if self.args.proposals:
            raise DataError(f"--proposals {self.args.proposals}: data layer '{layer.name}' "
                            "(AnnotatedData, a single-stage net) takes no proposals")
        return None

    def _initial_weights(self, weights):
        if self.args.weights:
            weights.append(self.args.weights)
        for path in weights:
            loaded = load_weights(self.session.net, path)
            self.say(f"initial {loaded.report.summary()}")
        if not weights and not self.args.resume:
            self.say("no --weights: starting from random initialization (the net's fillers)")

    def _build_test_net(self, settings, seed):
        """The test net (built now so that a missing one fails before
        training), with the lean memory plan of detection."""
        if self.test_set is None:
            return
        # --test-net first: a training net without a test file beside it is fine then
        self.test_net_path = (self.args.test_net or settings.test_net
                              or resolve_test_net(settings.net_path)[0])
        self.test_net = Net(self.test_net_path, "TEST", device=self.device, seed=seed + 1,
                            dtype=self.args.dtype)
        keep_detection_blobs(self.test_net)
        # single-stage nets: their AnnotatedData's mean and scale, from the training file
        self.input_transform = (input_transform(settings.net_path, self.test_net_path)
                                if is_single_stage(self.test_net) else None)
        width = scored_classes(self.test_net)   # cls_prob's width, or DetectionOutput's count
        if width is not None:
            if width != self.test_set.num_classes:
                raise DataError(
                    f"dataset '{self.test_set.name}' has {self.test_set.num_classes} classes but "
                    f"the test net {self.test_net_path} scores {width}. Regenerate the net for "
                    f"this dataset:\n    "
                    f"{class_mismatch_hint(settings.net_path, self.test_set.num_classes)}")

    def _finish(self, state_path, model_path, started):
        """The final evaluation, the plot and the closing lines."""
        solver, args = self.session.solver, self.args
        training_s = time.perf_counter() - started
        try:
            summary = self.evaluate() if self.test_net is not None else None
            if not self.world.is_root:
                return 0
        except KeyboardInterrupt:
            print(f"interrupted during the evaluation; the weights are in {state_path}",
                  file=self.stream or _NOWHERE)
            return 130
        self._plot()
        lines = [f"done: {solver.iter} iterations in {format_duration(training_s)} (total "
                 f"{format_duration(time.perf_counter() - started)})",
                 f"snapshot {state_path}",
                 f"weights  {model_path}" + (" (box regression un-normalized)"
                                             if self.normalization is not None else ""),
                 f"test:    python -m solver.test {args.prototxt} --weights {model_path}"
                 + (f" --data {args.data}" if args.data else "")
                 + (f" --proposals {args.test_proposals}" if args.test_proposals else "")]
        if summary is not None:
            lines.insert(1, "final " + summary_line(summary))
        for line in lines:
            self.say(line)
        return 0

    def evaluate(self):
        """Detection on the test split with the current weights; prints the
        table, logs an "eval" record, writes eval_iter_N.json."""
        solver = self.session.solver
        share_layers(solver.net, self.test_net, self.test_net_path)
        detector = Detector(self.test_net, scale=self.test_scale[0], max_size=self.test_scale[1],
                            bbox_normalization=self.normalization, proposals=self.test_proposals,
                            input_transform=self.input_transform)
        self.say(f"evaluating iteration {solver.iter} on {len(self.test_set)} test images ...")
        _, table, summary, elapsed = evaluate_detector(detector, self.test_set, self.coco,
                                                       self.stream)
        self.progress.event("eval", f"iteration {solver.iter}: {summary_line(summary)} "
                            f"({elapsed:.1f}s)", iter=solver.iter, seconds=elapsed, **summary)
        with atomic_writer(os.path.join(self.out, f"eval_iter_{solver.iter}.json")) as handle:
            handle.write(json.dumps(dict(summary, iter=solver.iter, table=table),
                                    indent=1).encode("utf-8"))
        self.progress.reset_speed()
        return summary

    def _plot(self):
        try:
            path = os.path.join(self.out, "train_log.png")
            plot_log(os.path.join(self.out, "train_log.jsonl"), path)
            self.say(f"training curves: {path}")
        except Exception as exc:  # a plot is a convenience: never fail the run for it
            self.say(f"note: no plot of the training log ({type(exc).__name__}: {exc})")


def _input_description(layer):
    """How the data layer prepares the images, for the start-up line."""
    if isinstance(layer, AnnotatedDataLayer):
        t = layer.transform
        steps = [name for name, on in (("distortion", t.distort is not None),
                                       ("expansion", t.expand is not None),
                                       (f"{len(t.samplers)} crop samplers", bool(t.samplers)),
                                       ("mirror", t.mirror)) if on]
        return (f"{layer.batch_size} images per batch warped to {t.height} x {t.width}, "
                f"augmentation: {', '.join(steps) or 'none'}")
    return (f"{'with' if layer.use_flipped else 'without'} flips, shorter side "
            f"{'/'.join(str(v) for v in layer.scales)}, longer at most {layer.max_size}")


if __name__ == "__main__":
    sys.exit(main())
