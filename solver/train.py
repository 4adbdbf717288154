"""Train a detector: ``python -m solver.train``.

    python -m solver.train NET_OR_SOLVER.prototxt [--data DIR] [--weights FILE]
                           [--gpu N | --cpu] [--iters N] [--out DIR] [--resume SNAPSHOT]
                           [--seed N] [--solver FILE] [--eval-interval N]

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
  (``is_schedule`` decides; see ``run_schedule``).

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
(RoIData, or py-R-FCN's roi_data_layer.layer Python layer) gets the
training split; a class count that does not match the net is an error
saying how to regenerate the net.

Output in ``--out`` (default ``out/<net file stem>``): ``train_log.jsonl``
(one JSON record per display iteration, snapshot, evaluation ...),
``train_log.png`` (solver.plot), snapshots ``<stem>_iter_N.solverstate.npz``
(resumable with ``--resume``) and ``<stem>_iter_N.caffemodel`` (box
regression un-normalized: the weights are multiplied by the target stds and
the means added to the bias, as py-faster-rcnn's train_net saves them), and
``eval_iter_N.json`` with the metrics. At the end the test split is
evaluated: VOC07 11-point and area mAP per class (COCO AP for COCO data).
"""
import argparse
import json
import os
import re
import secrets
import sys
import time

import numpy as np

from netdef.errors import DataError, EngineError, NetDefinitionError, NumericalError

__all__ = ["main", "classify_file", "is_schedule", "run_schedule", "apply_reference_config",
           "class_mismatch_hint"]

SCHEDULE_MODULE = "solver.schedule"


# -- what the first argument is --------------------------------------------------------------

_SCHEDULE_RE = re.compile(r"^\s*stage\s*\{", re.MULTILINE)


def is_schedule(text):
    """True for a staged schedule file: one with top-level ``stage { ... }``
    blocks (neither a NetParameter nor a SolverParameter has that field)."""
    return bool(_SCHEDULE_RE.search(text))


def classify_file(path):
    """"net", "solver" or "schedule" for the file at ``path``."""
    from netdef import caffe_pb2
    from netdef.errors import ParseError
    from netdef.schema import _read_source, parse_text
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


def run_schedule(path, args):
    """The dispatch point for staged schedules: ``solver.schedule.run(path,
    args)`` (args: this parser's namespace) returns the exit status."""
    import importlib
    try:
        schedule = importlib.import_module(SCHEDULE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != SCHEDULE_MODULE:
            raise
        raise NetDefinitionError(
            f"{path}: a staged schedule (stage {{ ... }} blocks), but this installation has no "
            f"{SCHEDULE_MODULE} module to run it") from None
    return schedule.run(path, args)


# -- py-R-FCN's experiment config ---------------------------------------------------------------

def apply_reference_config(net_param):
    """Add py-R-FCN's experiment config values (solver.defaults.PY_RFCN_CONFIG)
    to the ``param_str`` of its Python layers where they are missing, in
    place, for R-FCN nets (those with a PSROIPooling layer). Returns
    ``[(layer name, key, value), ...]`` applied."""
    from layers.python_compat import parse_param_str
    from solver.defaults import PY_RFCN_CONFIG
    types = {lp.type for lp in net_param.layer}
    if "PSROIPooling" not in types:
        return []
    chosen = dict(PY_RFCN_CONFIG["both"])
    for module, values in PY_RFCN_CONFIG["ohem" if "BoxAnnotatorOHEM" in types
                                          else "plain"].items():
        chosen[module] = {**chosen.get(module, {}), **values}
    applied = []
    for lp in net_param.layer:
        if lp.type != "Python" or lp.python_param.module not in chosen:
            continue
        text = lp.python_param.param_str
        present = parse_param_str(text)
        extra = {k: v for k, v in chosen[lp.python_param.module].items() if k not in present}
        if not extra:
            continue
        added = ", ".join(f"{k!r}: {v!r}" for k, v in extra.items())
        stripped = text.strip()
        if stripped.startswith("{") and stripped.endswith("}"):
            body = stripped[1:-1].strip()
            lp.python_param.param_str = "{" + (body + ", " if body else "") + added + "}"
        else:
            lp.python_param.param_str = (stripped + ", " if stripped else "") + added
        applied += [(lp.name, k, v) for k, v in extra.items()]
    return applied


# -- BLAS threads ------------------------------------------------------------------------

#: Nets below this many multiply-adds per forward pass run their matrix
#: products on one BLAS thread: their products are small, a second thread
#: gains nothing, and when the cores are shared with other work OpenBLAS's
#: threads wait on each other (measured: the tiny R-FCN at 20 iterations/s on
#: one thread, 2/s on two beside one other busy process on 2 cores).
SMALL_NET_MACS = 2e9


def multiply_adds(net):
    """Multiply-adds of one forward pass through the convolutions and inner
    products of ``net`` at its current blob shapes."""
    total = 0
    for lp, layer, tops in zip(net.layer_params, net.layers, net.top_blobs):
        if lp.type in ("Convolution", "InnerProduct") and layer.blobs and tops:
            weight = layer.blobs[0].shape
            total += int(tops[0].count) * int(np.prod(weight[1:]))
    return total


def set_blas_threads(count):
    """Set the thread count of the OpenBLAS that NumPy uses (its bundled
    scipy-openblas or a system one), through its C API; returns True when
    it did. Elsewhere (other BLAS libraries, no /proc) nothing happens."""
    import ctypes
    try:
        with open("/proc/self/maps", encoding="utf-8") as handle:
            paths = sorted({line.split()[-1] for line in handle
                            if "openblas" in line.lower() and ".so" in line.split()[-1]})
    except OSError:
        return False
    names = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
             "openblas_set_num_threads64_", "openblas_set_num_threads")
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            function = getattr(library, name, None)
            if function is not None:
                function(int(count))
                return True
    return False


# -- class count ------------------------------------------------------------------------------

def class_mismatch_hint(net_path, num_classes):
    """How to regenerate the net at ``net_path`` for ``num_classes``: its
    "# Generated by:" command with ``--classes`` replaced, else a generic
    prototxt.rfcn command."""
    command = None
    try:
        with open(net_path, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("# Generated by: python -m prototxt.rfcn"):
                    command = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if command:
        command = re.sub(r"--classes \d+", f"--classes {num_classes}", command)
        if "--classes" not in command:
            command += f" --classes {num_classes}"
    else:
        command = f"python -m prototxt.rfcn --depth 101 --classes {num_classes} --phase BOTH"
    stem = os.path.splitext(os.path.basename(net_path))[0]
    return f"{command} > {stem}_{num_classes}classes.prototxt"


def pad_classes(dataset, num_classes):
    """``dataset`` with placeholder classes ``unused<k>`` appended up to
    ``num_classes`` (records unchanged): the built-in dataset's 6 shapes
    fill the first classes of a net built for more (e.g. VOC's 20), whose
    other classes then see no examples (and no evaluation)."""
    from solver.datasets import DetectionDataset
    extra = tuple(f"unused{k}" for k in range(dataset.num_classes, num_classes))
    return DetectionDataset(dataset.name, tuple(dataset.classes) + extra, dataset.records)


def _check_classes(dataset, data_layer, net_path, what):
    if dataset.num_classes == data_layer.num_classes:
        return
    raise DataError(
        f"dataset '{dataset.name}' has {dataset.num_classes} classes (background included: "
        f"{', '.join(dataset.classes)}) but {net_path} is built for {data_layer.num_classes} "
        f"({what}). Regenerate the net for this dataset:\n    "
        f"{class_mismatch_hint(net_path, dataset.num_classes)}")


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
    from solver.test import add_device_arguments
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
    parser.add_argument("--blas-threads", type=int, metavar="N",
                        help="BLAS threads (default: the library's, or 1 for nets under "
                             f"{SMALL_NET_MACS / 1e9:g} G multiply-adds per pass on the CPU)")
    return parser


def main(argv=None, stream=None):
    """The entry point; returns the exit status (0 done, 1 stopped by a
    non-finite loss, 2 a user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    stream = sys.stdout if stream is None else stream
    try:
        kind = classify_file(args.prototxt)
        if kind == "schedule":
            return run_schedule(args.prototxt, args)
        return Training(args, kind, stream).run()
    except NumericalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _resolve(path, base_dir, what, source):
    candidates = [path] if os.path.isabs(path) else \
        ([os.path.join(base_dir, path)] if base_dir else []) + [path]
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    raise NetDefinitionError(f"{source}: {what} '{path}' not found (looked for "
                             f"{' and '.join(repr(os.path.abspath(c)) for c in candidates)})")


class Training:
    """One ``solver.train`` run (see the module docstring)."""

    def __init__(self, args, kind, stream):
        self.args, self.kind, self.stream = args, kind, stream
        self.progress = None

    def say(self, text):
        if self.progress is not None:
            self.progress.event("info", text)
        else:
            print(text, file=self.stream, flush=True)

    # -- settings ------------------------------------------------------------------------
    def _solver_and_net(self):
        """(SolverParameter, its source text, its folder, net path, test net path or None)."""
        from netdef.schema import read_solver
        from solver.defaults import reference_solver
        args = self.args
        if self.kind == "solver":
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
            net_path = _resolve(getattr(param, given[0]), base, given[0], args.prototxt)
            test_net = _resolve(param.test_net[0], base, "test_net", args.prototxt) \
                if param.test_net else None
            return param, f"solver file {args.prototxt}", base, net_path, test_net
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
            test_net = _resolve(param.test_net[0], base, "test_net", args.solver)
        return param, source, base, net_path, test_net

    def _device(self):
        from solver.test import select_device
        return select_device(self.args.gpu)

    # -- the run ---------------------------------------------------------------------------
    def run(self):
        from solver.progress import Progress
        args = self.args
        started = time.perf_counter()
        self.device = self._device()
        param, solver_source, base, net_path, test_net = self._solver_and_net()
        stem = os.path.splitext(os.path.basename(net_path))[0]
        out = args.out or os.path.join("out", stem)
        os.makedirs(out, exist_ok=True)
        self.out = out
        self.progress = Progress(os.path.join(out, "train_log.jsonl"), stream=self.stream)
        try:
            return self._run(param, solver_source, base, net_path, test_net, stem, started)
        finally:
            self.progress.close()

    def _run(self, param, solver_source, base, net_path, test_net, stem, started):
        from layers.proposal_target import ProposalTargetLayer
        from layers.roi_data import RoIDataLayer
        from netdef import Net
        from netdef.schema import read_net
        from solver.detector import (BoxNormalization, bbox_export_transform, bbox_param_layer,
                                     keep_detection_blobs, load_weights, resolve_test_net)
        from solver.sgd import SGDSolver
        from solver.test import builtin_dataset, is_coco_path, open_dataset
        args = self.args
        device = self.device

        # Seed: one for the net (fillers, layer sampling) and the solver.
        if args.seed is not None:
            seed = args.seed
        elif param.random_seed >= 0:
            seed = int(param.random_seed)
        else:
            seed = secrets.randbits(31)
        self.say(f"solver.train {net_path} on {device}; output in {self.out}; seed {seed}")

        # The solver settings.
        param.type = param.type or "SGD"
        if args.iters is not None:
            if args.iters < 0:
                raise NetDefinitionError(f"--iters must be >= 0, found {args.iters}")
            param.max_iter = args.iters
        eval_interval = args.eval_interval if args.eval_interval is not None \
            else int(param.test_interval)
        weights = [_resolve(w, base, "weights", solver_source) for w in param.weights]
        for field in ("test_iter", "test_interval", "test_net", "test_net_param", "test_state",
                      "weights", "net", "train_net", "net_param", "train_net_param",
                      "snapshot_prefix", "random_seed"):
            param.ClearField(field)
        self.say(f"solver settings from {solver_source}: base_lr {param.base_lr:g}, lr_policy "
                 f"{param.lr_policy}, max_iter {param.max_iter}, iter_size {param.iter_size}, "
                 f"momentum {param.momentum:g}, weight_decay {param.weight_decay:g}")

        # The train net, with py-R-FCN's config values where it uses them.
        net_param = read_net(net_path)
        applied = apply_reference_config(net_param)
        if applied:
            self.say("py-R-FCN Python layers: applied its experiment config where param_str "
                     "leaves them out: " + ", ".join(f"{layer}.{key}={value!r}"
                                                     for layer, key, value in applied))
        train_net = Net(net_param if applied else net_path, "TRAIN", device=device, seed=seed,
                        keep=[])  # lean memory: the solver reads the outputs only
        data_layers = [l for l in train_net.layers if isinstance(l, RoIDataLayer)]
        if len(data_layers) != 1:
            raise NetDefinitionError(
                f"{net_path}: the TRAIN phase needs exactly one data layer (type RoIData, or "
                f"py-R-FCN's Python roi_data_layer.layer.RoIDataLayer) for solver.train to feed "
                f"the dataset through; found {len(data_layers)}")
        data_layer = data_layers[0]
        self._choose_blas_threads(train_net, device)

        # Data.
        if args.data:
            root = args.data
            self.say(f"dataset: {root} (splits {args.train_split} / {args.test_split})")
        else:
            root = builtin_dataset(self.say)
        train_set = open_dataset(root, args.train_split, on_error=args.on_error)
        padded = not args.data and train_set.num_classes < data_layer.num_classes
        if padded:
            self.say(f"note: the net is built for {data_layer.num_classes - 1} classes, the "
                     f"built-in dataset has {train_set.num_classes - 1}: they train as the first "
                     f"{train_set.num_classes - 1}, the others get no examples (a net for this "
                     f"dataset: {class_mismatch_hint(net_path, train_set.num_classes)})")
            train_set = pad_classes(train_set, data_layer.num_classes)
        what = f"{data_layer.name}'s num_classes"
        _check_classes(train_set, data_layer, net_path, what)
        data_layer.set_dataset(train_set)
        left_out = f" ({len(data_layer.skipped)} without objects left out)" \
            if data_layer.skipped else ""
        self.say(f"training on {len(train_set) - len(data_layer.skipped)} images of "
                 f"'{train_set.name}'{left_out} ({train_set.num_classes - 1} classes: "
                 f"{', '.join(train_set.classes[1:])}), "
                 f"{'with' if data_layer.use_flipped else 'without'} flips, shorter side "
                 f"{'/'.join(str(v) for v in data_layer.scales)}, longer at most "
                 f"{data_layer.max_size}")
        test_set = None
        if not args.no_eval:
            try:
                test_set = open_dataset(root, args.test_split, on_error=args.on_error,
                                        for_testing=True)
            except DataError as exc:
                self.say(f"no evaluation: cannot read the test split: {exc}")
            if test_set is not None and padded:
                test_set = pad_classes(test_set, data_layer.num_classes)
            if test_set is not None and args.test_images is not None:
                from solver.datasets import DetectionDataset
                test_set = DetectionDataset(test_set.name, test_set.classes,
                                            test_set.records[:max(args.test_images, 0)])
        self.coco = is_coco_path(root)

        # Initial weights.
        if args.weights:
            weights.append(args.weights)
        for path in weights:
            loaded = load_weights(train_net, path)
            self.say(f"initial {loaded.report.summary()}")
        if not weights and not args.resume:
            self.say("no --weights: starting from random initialization (the net's fillers)")

        # Box-target normalization: folded into the .caffemodel export.
        targets = [l for l in train_net.layers if isinstance(l, ProposalTargetLayer)]
        normalization, transform, bbox_layer = None, None, None
        if targets and targets[0].normalize:
            normalization = BoxNormalization(tuple(targets[0].means.tolist()),
                                             tuple(targets[0].stds.tolist()))
            found = bbox_param_layer(train_net, "bbox_pred")
            if found is None:
                self.say("note: no layer with parameters produces bbox_pred; the .caffemodel "
                         "export keeps normalized box deltas")
            else:
                bbox_layer = found
                transform = bbox_export_transform(found[0], found[1], normalization)
        test_scale = (int(data_layer.scales[0]), int(data_layer.max_size))
        metadata = {
            "classes": list(train_set.classes), "dataset": train_set.name,
            "dataset_root": os.path.abspath(root), "net": os.path.abspath(net_path),
            "bbox_normalization": normalization.as_dict() if normalization else None,
            "bbox_layer": list(bbox_layer) if bbox_layer else None,
            "test_scale": list(test_scale)}

        # The test net (built now so that a missing one fails before training).
        self.test_net_path = None
        self.test_net = None
        if test_set is not None:
            self.test_net_path = test_net or resolve_test_net(net_path)[0]
            if args.test_net:
                self.test_net_path = args.test_net
            self.test_net = Net(self.test_net_path, "TEST", device=device, seed=seed + 1)
            keep_detection_blobs(self.test_net)
            if "cls_prob" in self.test_net.blobs:
                width = self.test_net.blobs["cls_prob"].shape[-1]
                if width != test_set.num_classes:
                    raise DataError(
                        f"dataset '{test_set.name}' has {test_set.num_classes} classes but the "
                        f"test net {self.test_net_path} scores {width}. Regenerate the net for "
                        f"this dataset:\n    {class_mismatch_hint(net_path, test_set.num_classes)}")
        self.test_set, self.normalization, self.test_scale = test_set, normalization, test_scale

        solver = SGDSolver(param, net=train_net, test_nets=[], log=self.progress, seed=seed,
                           snapshot_prefix=os.path.join(self.out, stem), metadata=metadata,
                           export_transform=transform, base_dir=base)
        self.solver = solver
        if args.resume:
            restored = solver.restore(args.resume)
            if restored.get("classes") and list(restored["classes"]) != list(train_set.classes):
                self.say(f"warning: the snapshot was trained on classes "
                         f"{', '.join(restored['classes'][1:])}; the dataset has "
                         f"{', '.join(train_set.classes[1:])}")
            solver.metadata.update({k: v for k, v in metadata.items() if k != "classes"})
        self.say(f"ready in {time.perf_counter() - started:.1f}s; training to iteration "
                 f"{param.max_iter}")

        try:
            while solver.iter < param.max_iter:
                stop = param.max_iter
                if eval_interval and eval_interval > 0:
                    stop = min(stop, (solver.iter // eval_interval + 1) * eval_interval)
                solver.step(stop - solver.iter)
                if solver.iter < param.max_iter and self.test_net is not None:
                    self.evaluate()
            state_path = self._final_snapshot()
        except KeyboardInterrupt:
            where = solver.interrupt_snapshot
            if where:
                print(f"interrupted: resume with python -m solver.train {self.args.prototxt} "
                      f"--resume {where}" + (f" --out {self.out}" if self.args.out else ""),
                      file=self.stream)
            else:
                print("interrupted", file=self.stream)
            return 130
        finally:
            data_layer.close()
        training_s = time.perf_counter() - started
        try:
            summary = self.evaluate() if self.test_net is not None else None
        except KeyboardInterrupt:
            print(f"interrupted during the evaluation; the weights are in {state_path}",
                  file=self.stream)
            return 130
        self._plot()
        model_path = state_path[:-len(".solverstate.npz")] + ".caffemodel"
        lines = [f"done: {solver.iter} iterations in {_duration(training_s)} (total "
                 f"{_duration(time.perf_counter() - started)})",
                 f"snapshot {state_path}",
                 f"weights  {model_path} (box regression un-normalized)",
                 f"test:    python -m solver.test {self.args.prototxt} --weights {model_path}"
                 + (f" --data {self.args.data}" if self.args.data else "")]
        if summary is not None:
            from solver.test import summary_line
            lines.insert(1, "final " + summary_line(summary))
        for line in lines:
            self.say(line)
        return 0

    def _choose_blas_threads(self, net, device):
        threads, why = self.args.blas_threads, "--blas-threads"
        if threads is None:
            if device.is_gpu or "OPENBLAS_NUM_THREADS" in os.environ:
                return
            macs = multiply_adds(net)
            if macs >= SMALL_NET_MACS:
                return
            threads, why = 1, f"a small net: {macs / 1e9:.2f} G multiply-adds per pass"
        if set_blas_threads(threads):
            self.say(f"BLAS on {threads} thread(s) ({why})")

    def _final_snapshot(self):
        from solver.snapshot import snapshot_paths
        solver = self.solver
        state_path, _ = snapshot_paths(solver.snapshot_prefix, solver.iter)
        if solver.last_snapshot != state_path or not os.path.isfile(state_path):
            state_path = solver.snapshot()
        return state_path

    def evaluate(self):
        """Detection on the test split with the current weights; prints the
        table, logs an "eval" record, writes eval_iter_N.json."""
        from solver.detector import Detector
        from solver.test import detection_progress, evaluate_detections, summary_line
        solver, test_net = self.solver, self.test_net
        _copy_params(solver.net, test_net)
        detector = Detector(test_net, scale=self.test_scale[0], max_size=self.test_scale[1],
                            bbox_normalization=self.normalization)
        started = time.perf_counter()
        self.say(f"evaluating iteration {solver.iter} on {len(self.test_set)} test images ...")
        all_boxes = detector.detect_dataset(self.test_set, detection_progress(self.stream, 100))
        _, table, summary = evaluate_detections(self.test_set, all_boxes, self.coco)
        elapsed = time.perf_counter() - started
        print(table, file=self.stream, flush=True)
        self.progress.event("eval", f"iteration {solver.iter}: {summary_line(summary)} "
                            f"({elapsed:.1f}s)", iter=solver.iter, seconds=elapsed, **summary)
        from netdef.snapshot_format import atomic_writer
        with atomic_writer(os.path.join(self.out, f"eval_iter_{solver.iter}.json")) as handle:
            handle.write(json.dumps(dict(summary, iter=solver.iter, table=table),
                                    indent=1).encode("utf-8"))
        self.progress.reset_speed()
        return summary

    def _plot(self):
        try:
            from solver.plot import plot_log
            path = os.path.join(self.out, "train_log.png")
            plot_log(os.path.join(self.out, "train_log.jsonl"), path)
            self.say(f"training curves: {path}")
        except Exception as exc:  # a plot is a convenience: never fail the run for it
            self.say(f"note: no plot of the training log ({type(exc).__name__}: {exc})")


def _copy_params(source, target):
    """Copy ``source``'s parameters into same-named layers of ``target``."""
    layers = source.layer_dict
    with target.device.context():
        for name, layer in target.layer_dict.items():
            if name in layers and layer.blobs:
                for src, dst in zip(layers[name].blobs, layer.blobs):
                    if src.shape != dst.shape:
                        raise NetDefinitionError(
                            f"layer '{name}' has parameter shape {src.shape} in the train net "
                            f"but {dst.shape} in the test net")
                    dst.data[...] = src.data


def _duration(seconds):
    from solver.progress import format_duration
    return format_duration(seconds)


if __name__ == "__main__":
    sys.exit(main())
