"""One training session: a TRAIN net, its data layer fed with a dataset, the
solver settings and an output prefix. ``solver.train`` runs one;
``solver.schedule`` runs one per training stage. Each piece of a training
run that both need is written here once: the BLAS thread rule (set for the
session, restored after it), the data-layer hookup with class padding, the
box-normalization export, the snapshot metadata, and the loop with its
evaluation points and final snapshot.

    net = Net(path, "TRAIN", seed=seed, keep=[])
    with TrainingSession(net, path, device=device, say=say) as session:
        train_set = session.prepare(train_set, builtin=True)  # pads, checks the classes
        session.feed(train_set)                                 # the data layer's dataset
        export = session.box_export()                          # normalization -> .caffemodel
        metadata = session.metadata(train_set, root, export)
        solver = session.create_solver(param, progress=log, seed=seed, prefix=prefix,
                                       metadata=metadata, export=export)
        state_path, model_path = session.train(every=eval_interval, between=evaluate)
"""
import contextlib
import dataclasses
import os
import secrets

from layers.annotated_data import AnnotatedDataLayer
from layers.detection_output import DetectionOutputLayer
from layers.proposal_target import ProposalTargetLayer
from layers.roi_data import RoIDataLayer
from netdef.errors import NetDefinitionError
from solver.blas import blas_threads_for
from detection.classes import check_classes, class_mismatch_hint, pad_classes
from detection.detector import BoxNormalization, bbox_export_transform, bbox_param_layer
from solver.sgd import SGDSolver
from solver.snapshot import snapshot_paths

__all__ = ["TrainingSession", "BoxExport", "choose_seed", "find_data_layer", "net_class_count"]


def choose_seed(*candidates):
    """The first candidate that is not None, else a drawn 31-bit seed."""
    for value in candidates:
        if value is not None:
            return int(value)
    return secrets.randbits(31)


def find_data_layer(net, where):
    """The one dataset-fed data layer of ``net``: RoIData (or py-R-FCN's
    Python roi_data_layer.layer.RoIDataLayer), or Caffe-SSD's AnnotatedData,
    whose class count is then set from the net's layers (``net_class_count``).
    NetDefinitionError prefixed by ``where`` (e.g. "NET: the TRAIN phase")
    when there is not exactly one."""
    found = [layer for layer in net.layers if isinstance(layer, RoIDataLayer)]
    if len(found) != 1:
        raise NetDefinitionError(
            f"{where} needs exactly one data layer (type RoIData, py-R-FCN's Python "
            f"roi_data_layer.layer.RoIDataLayer, or AnnotatedData) to feed the dataset "
            f"through; found {len(found)}")
    layer = found[0]
    if isinstance(layer, AnnotatedDataLayer):
        count, names = net_class_count(net, where)
        layer.set_num_classes(count, f"the num_classes of {', '.join(names)}")
    return layer


def net_class_count(net, where):
    """The class count (background included) of a single-stage net, from its
    layers that expose ``num_classes`` counted that way (MultiBoxLoss, the
    focal losses, YOLO's Region layer; a DetectionOutput only with a
    background class, ``background_label_id`` >= 0): ``(count, names of
    those layers)``. NetDefinitionError when none has one or they
    disagree."""
    counts = {}
    for layer in net.layers:
        count = getattr(layer, "num_classes", None)
        if isinstance(layer, RoIDataLayer) or count is None:
            continue
        if isinstance(layer, DetectionOutputLayer) and layer.background < 0:
            continue   # counts the classes without background
        counts.setdefault(int(count), []).append(layer.name)
    if len(counts) != 1:
        found = "; ".join(f"{', '.join(names)}: {count}" for count, names in counts.items())
        raise NetDefinitionError(
            f"{where}: the AnnotatedData layer takes its class count (background included) "
            f"from the net's layers with num_classes (MultiBoxLoss, a focal loss, Region, "
            f"DetectionOutput with a background class); "
            + (f"they disagree ({found})" if counts else "the net has none"))
    return next(iter(counts.items()))


@dataclasses.dataclass(frozen=True)
class BoxExport:
    """How the box regression is exported: the target normalization (None:
    the net learns plain deltas), the solver's ``export_transform`` that
    folds it into the ``.caffemodel`` (None: nothing to fold), and the
    ``(layer name, repeat)`` it applies to."""
    normalization: object = None
    transform: object = None
    layer: tuple = None


class TrainingSession:
    """TrainingSession(net, net_path, *, device, say=print, blas_threads=None,
                       where=None)

    net: the TRAIN Net (built by the caller, with its seed and memory plan);
    net_path: its file (for messages and the metadata); say: one line of
    output; blas_threads: the ``--blas-threads`` value (None: the rule of
    solver.blas). ``where`` prefixes errors (default "NET_PATH: the TRAIN
    phase"). Entering the session applies the BLAS rule and finds the data
    layer; leaving it closes the data layer and restores the BLAS threads.
    """

    def __init__(self, net, net_path, *, device, say=print, blas_threads=None, where=None):
        self.net, self.net_path, self.device, self.say = net, net_path, device, say
        self.blas_threads = blas_threads
        self.where = where or f"{net_path}: the TRAIN phase"
        self.data_layer = None
        self.solver = None
        self._stack = None

    def __enter__(self):
        with contextlib.ExitStack() as stack:
            self.data_layer = find_data_layer(self.net, self.where)
            stack.enter_context(blas_threads_for(self.net, self.device, self.blas_threads,
                                                 self.say))
            stack.callback(self.data_layer.close)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc):
        stack, self._stack = self._stack, None
        return stack.__exit__(*exc)

    # -- data --------------------------------------------------------------------------------
    def prepare(self, dataset, *, builtin=False, label=None, where=""):
        """``dataset`` as the data layer can take it: the built-in dataset
        (``builtin``) is padded with placeholder classes up to a larger
        net's count (said through ``say``); any other count mismatch is a
        DataError saying how to regenerate the net. ``label`` names the net
        in those messages (default: "the net" in the note, its path in the
        error), ``where`` prefixes the error."""
        layer = self.data_layer
        if builtin and dataset.num_classes < layer.num_classes:
            self.say(f"note: {label or 'the net'} is built for {layer.num_classes - 1} classes, "
                     f"the built-in dataset has {dataset.num_classes - 1}: they train as the "
                     f"first {dataset.num_classes - 1}, the others get no examples (a net for "
                     f"this dataset: {class_mismatch_hint(self.net_path, dataset.num_classes)})")
            dataset = pad_classes(dataset, layer.num_classes)
        check_classes(dataset, layer.num_classes, self.net_path,
                      getattr(layer, "classes_from", None) or f"{layer.name}'s num_classes",
                      where=where, net_name=label)
        return dataset

    def feed(self, dataset, proposals=None):
        """Hand ``dataset`` (from ``prepare``) to the data layer, with
        ``proposals`` (per record ``(R, 4)`` boxes) for its precomputed-RoI
        form."""
        if proposals is None:
            self.data_layer.set_dataset(dataset)
        else:
            self.data_layer.set_dataset(dataset, proposals=proposals)

    @property
    def test_scale(self):
        """``(shorter side, longer cap)`` the net trains at (its first scale);
        for AnnotatedData ``(height, width)`` of its warp."""
        return int(self.data_layer.scales[0]), int(self.data_layer.max_size)

    # -- export and metadata -----------------------------------------------------------------
    def box_export(self):
        """The BoxExport of the net: normalized box targets come from the
        precomputed-RoI data layer's sampler or from a ProposalTarget layer;
        the layer producing ``bbox_pred`` gets the export transform."""
        normalization = None
        if self.data_layer.bbox_normalization is not None:
            normalization = BoxNormalization(*self.data_layer.bbox_normalization)
        else:
            targets = [l for l in self.net.layers if isinstance(l, ProposalTargetLayer)]
            creator = targets[0].creator if targets else None
            if creator is not None and creator.normalize:
                normalization = BoxNormalization(tuple(creator.means.tolist()),
                                                 tuple(creator.stds.tolist()))
        if normalization is None:
            return BoxExport()
        found = bbox_param_layer(self.net, "bbox_pred")
        if found is None:
            self.say("note: no layer with parameters produces bbox_pred; the .caffemodel "
                     "export keeps normalized box deltas")
            return BoxExport(normalization)
        return BoxExport(normalization, bbox_export_transform(found[0], found[1], normalization),
                         found)

    def metadata(self, dataset, root, export, **extra):
        """The snapshot metadata: classes, dataset, its root, the net file,
        the box normalization and its layer, the test scale, then ``extra``."""
        return {
            "classes": list(dataset.classes), "dataset": dataset.name,
            "dataset_root": os.path.abspath(root), "net": os.path.abspath(self.net_path),
            "bbox_normalization": export.normalization.as_dict() if export.normalization
            else None,
            "bbox_layer": list(export.layer) if export.layer else None,
            "test_scale": list(self.test_scale), **extra}

    # -- the solver and the loop -------------------------------------------------------------
    def create_solver(self, param, *, progress, seed, prefix, metadata, export, base_dir=None):
        """The solver over the session's net (no test nets: evaluation is
        detection on a test split), snapshots under ``prefix``."""
        self.solver = SGDSolver(param, net=self.net, test_nets=[], log=progress, seed=seed,
                                snapshot_prefix=prefix, metadata=metadata,
                                export_transform=export.transform, base_dir=base_dir)
        return self.solver

    def train(self, every=0, between=None):
        """Train to the solver's ``max_iter``, calling ``between()`` at every
        multiple of ``every`` before it; then the final snapshot. Returns
        its ``(solverstate path, caffemodel path)``. The data layer is closed
        after (also on Ctrl-C, which propagates as KeyboardInterrupt)."""
        solver = self.solver
        max_iter = solver.param.max_iter
        try:
            while every and every > 0 and between is not None:
                stop = (solver.iter // every + 1) * every
                if stop >= max_iter:
                    break
                solver.step(stop - solver.iter)
                between()
            solver.solve()
            return self.final_snapshot()
        finally:
            self.data_layer.close()

    def final_snapshot(self):
        """The snapshot of the solver's current iteration, written unless it
        is on disk already: ``(solverstate path, caffemodel path)``."""
        solver = self.solver
        state_path, model_path = snapshot_paths(solver.snapshot_prefix, solver.iter)
        if solver.last_snapshot != state_path or not os.path.isfile(state_path) \
                or not os.path.isfile(model_path):
            state_path = solver.snapshot()
        return state_path, model_path
