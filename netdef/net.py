"""Net: a network built from a prototxt, with pycaffe's Python surface.

Building is a short sequence of separately testable steps, each decision
logged in ``net.build_log``:

1. read and upgrade the prototxt (``netdef.schema``);
2. filter layers by the NetState (``graph.filter_net``);
3. resolve loss weights, insert Split layers for blobs with several
   consumers (``graph.insert_splits``);
4. create blobs (in-place tops share their bottom's Blob) and layers, run
   ``setup`` and ``reshape`` in order (shape inference; errors name the
   layer and the blobs with their shapes);
5. bind parameters (sharing by ParamSpec name, lr_mult / decay_mult);
6. plan backward: which layers and bottoms need gradients (Caffe's rules,
   with ``propagate_down`` and ``force_backward``);
7. plan the graph (``netdef.plan``): runs of layers that execute as one
   fused step (frozen BatchNorm/Scale folded into the convolution before
   them, Eltwise SUM + ReLU, Splits that share their bottom), unless
   ``plan=False``.

Every blob and parameter is charged to the net's memory budget
(``netdef.memory_budget``) before it is allocated, in steps 4 and 6 and in
``reshape``: a net that needs more than the limit is refused with a
``MemoryBudgetError`` naming the layer, the blob, the shape and the bytes.

Usage (pycaffe style)::

    net = Net("deploy.prototxt", "TEST", weights="model.caffemodel")
    out = net.forward(data=image_batch)      # dict of output arrays; out.loss
    net.backward()                           # gradients into .diff

    # pycaffe's ranges: forward from ``start`` up to ``end``, backward from
    # ``start`` (the top-most layer run) down to ``end``; any blob's diff
    # can be seeded, and the ReLUs' backward rule chosen for the call:
    net = Net("deploy.prototxt", "TEST", weights=w, force_backward=True)
    net.forward(data=image_batch)
    net.backward(start="fc8", fc8=onehot, relu_mode="guided")
    saliency = net.blobs["data"].diff
"""
import collections
import dataclasses
from pathlib import Path

import numpy as np

from layers import deferred_checks
from layers.base import create_layer, layer_class
from layers.neuron import RELU_MODES
from layers.workspace import Workspace
from netdef import graph
from netdef.blob import Blob
from netdef.caffemodel import write_caffemodel
from netdef.memory import MemoryPlan
from netdef.memory_budget import (BlobAccount, MemoryBudget, check_plan, param_blob_maker,
                                  resolve_limit)
from netdef.plan import LayerStep, make_steps
from netdef.schema import read_net
from netdef.weights import load_weights_into, save_native
from netdef.device import default_device, to_numpy
from netdef.errors import EngineError, NetDefinitionError, ShapeError

TRAIN, TEST = "TRAIN", "TEST"


def normalize_phase(phase):
    """Accept "TRAIN"/"TEST", pycaffe's 0/1, or caffe_pb2.TRAIN/TEST."""
    if isinstance(phase, str) and phase.upper() in (TRAIN, TEST):
        return phase.upper()
    if phase in (0, 1):
        return (TRAIN, TEST)[phase]
    raise NetDefinitionError(f"phase must be TRAIN or TEST, found {phase!r}")


@dataclasses.dataclass
class LearnableParam:
    """One learnable parameter blob and its update multipliers."""
    blob: Blob
    layer: str
    index: int
    lr_mult: float
    decay_mult: float


class Outputs(dict):
    """``forward``'s result: output blob name -> array, plus ``.loss``, the
    weighted sum of every loss top."""
    loss = 0.0


class Net:
    """A network built from a prototxt path or text.

    Net(model, phase="TRAIN", weights=None, *, device=None, dtype=float32,
        stages=(), level=0, seed=0, allow_python_modules=(), plan=True, keep=None,
        force_backward=None, memory_limit=None)
    Also accepts pycaffe's positional form Net(model, weights, phase).
    ``force_backward``: None follows the prototxt's ``force_backward``;
    True (False) forces (does not force) it whatever the file says: True
    makes every layer compute the gradient of every bottom that can take
    one (visualization needs the input's gradient of a deploy net).
    ``plan=False`` runs every layer as itself (no fused steps): a debug
    switch; results agree with the plan to rounding. ``keep``: None keeps
    every blob readable (Caffe's promise); a list of blob names chooses the
    lean memory plan (``netdef.memory``), in which only those blobs and the
    inputs and outputs stay readable after a pass. ``memory_limit``: the
    bytes the net may hold (an int, or a text such as "8G"); None takes
    NETDEF_MEMORY_LIMIT or the machine's available memory (see
    ``netdef.memory_budget``); ``net.budget`` keeps the running total.
    """

    def __init__(self, model, phase=TRAIN, weights=None, *, device=None, dtype=np.float32,
                 stages=(), level=0, seed=0, allow_python_modules=(), plan=True, keep=None,
                 force_backward=None, memory_limit=None):
        if isinstance(phase, (str, Path)) and str(phase).upper() not in (TRAIN, TEST) \
                and weights in (TRAIN, TEST, 0, 1):
            phase, weights = weights, phase  # pycaffe: Net(model, weights, phase)
        self.phase = normalize_phase(phase)
        self.device = device if device is not None else default_device()
        self.dtype = np.dtype(dtype)
        self.seed = int(seed)
        # The draw key of the layers' random draws (Layer.keyed_rng): set by
        # set_draw_key, else (0, number of whole forward passes so far).
        self._draw_key = None
        self.draw_passes = 0
        self.allow_python_modules = tuple(allow_python_modules)
        self.source = model if isinstance(model, (str, Path)) and not _is_text(model) else "<string>"
        self.param = model if hasattr(model, "layer") else read_net(model)
        self.name = self.param.name
        self.build_log = []
        self.budget = MemoryBudget(*resolve_limit(memory_limit, self.device), where=self.source)
        self.build_log.append(f"memory budget: {self.budget.limit:,} bytes ({self.budget.source})")
        if force_backward is not None:
            self.build_log.append(f"force_backward: {bool(force_backward)} (the caller's, "
                                  f"the file says {self.param.force_backward})")
            force_backward = bool(force_backward)
        self._build(stages, level, plan, force_backward)
        self.memory = None
        if keep is not None:
            self.lean_memory(keep)
        if weights is not None:
            self.copy_from(weights)

    # -- building ------------------------------------------------------------
    def _build(self, stages, level, plan, force_backward):
        filtered, decisions = graph.filter_net(self.param, self.phase, level, stages)
        self.build_log += decisions
        classes = [layer_class(lp, self.allow_python_modules) for lp in filtered.layer]
        weights = [self._loss_weights(lp, cls) for lp, cls in zip(filtered.layer, classes)]
        net_param, weights, decisions = graph.insert_splits(filtered, weights)
        self.build_log += decisions
        self.layer_params = list(net_param.layer)

        self.blobs = collections.OrderedDict()
        self.layers, self._layer_names = [], []
        self.bottom_blobs, self.top_blobs = [], []
        self.loss_weights = weights
        self.inputs = []
        available = set()  # Caffe's rule: a blob no later layer reads is an output
        with self.device.context():
            for index, lp in enumerate(self.layer_params):
                layer = create_layer(lp, phase=self.phase, device=self.device, dtype=self.dtype,
                                     seed=self.seed * 100003 + index,
                                     allow_python_modules=self.allow_python_modules)
                bottoms = [self._bottom(lp, name) for name in lp.bottom]
                available.difference_update(lp.bottom)
                tops = [self._top(lp, i, name) for i, name in enumerate(lp.top)]
                available.update(lp.top)
                if lp.type in ("Input",):
                    self.inputs += list(lp.top)
                # Parameter blobs, too, are charged before they are allocated.
                layer.param_blob_factory = param_blob_maker(self.budget, layer)
                self._setup(layer, lp, bottoms, tops)
                self.layers.append(layer)
                self._layer_names.append(lp.name)
                self.bottom_blobs.append(bottoms)
                self.top_blobs.append(tops)
        # Scratch (padded copies, column matrices) is needed by one layer at
        # a time: one Workspace serves them all.
        self.workspace = Workspace(self.device)
        for layer in self.layers:
            layer.workspace = self.workspace
        self.layer_dict = collections.OrderedDict(zip(self._layer_names, self.layers))
        self.outputs = [name for name in self.blobs if name in available]
        self._bind_params()
        self.force_backward = net_param.force_backward if force_backward is None \
            else force_backward
        self._plan_backward(self.force_backward)
        check_plan(self.budget, self)
        self.steps, decisions = make_steps(self, fuse=plan)
        self.build_log += decisions

    def _loss_weights(self, lp, cls):
        tops = len(lp.top)
        if lp.loss_weight:
            if len(lp.loss_weight) != tops:
                raise NetDefinitionError(
                    f"layer '{lp.name}': loss_weight must be given once per top "
                    f"({tops}), found {len(lp.loss_weight)}")
            return [float(w) for w in lp.loss_weight]
        return [1.0 if (cls.is_loss and i == 0) else 0.0 for i in range(tops)]

    def _bottom(self, lp, name):
        if name not in self.blobs:
            known = ", ".join(self.blobs) or "none"
            raise NetDefinitionError(
                f"{self.source}: layer '{lp.name}' (type {lp.type}): bottom '{name}' is not "
                f"produced by any earlier layer (blobs so far: {known})")
        return self.blobs[name]

    def _top(self, lp, index, name):
        if index < len(lp.bottom) and lp.bottom[index] == name:
            return self.blobs[name]  # in place: the top is the bottom's Blob
        if name in self.blobs:
            raise NetDefinitionError(
                f"{self.source}: layer '{lp.name}' (type {lp.type}): top '{name}' is "
                "already produced by an earlier layer (only in-place reuse, top i == "
                "bottom i, is allowed)")
        blob = Blob((), dtype=self.dtype, xp=self.device.xp)
        BlobAccount.attach(blob, self.budget, f"blob '{name}'")
        self.blobs[name] = blob
        return blob

    def _setup(self, layer, lp, bottoms, tops):
        in_place = [(i, b.shape) for i, b in enumerate(bottoms) if any(b is t for t in tops)]
        try:
            with self.budget.inside(layer.where):
                layer.setup(bottoms, tops)
                layer.reshape(bottoms, tops)
        except EngineError as exc:
            if f"layer '{lp.name}'" in str(exc) or type(exc).__module__ != "netdef.errors":
                raise
            # A helper's error (a filler's, say) gets the layer it came from.
            raise type(exc)(f"{self.source}: {layer.where}: {exc}") from exc
        except (ValueError, IndexError, TypeError) as exc:
            shapes = ", ".join(f"'{n}' {b.shape}" for n, b in zip(lp.bottom, bottoms)) or "none"
            raise ShapeError(
                f"{self.source}: layer '{lp.name}' (type {lp.type}) cannot be set up with "
                f"bottoms {shapes}: {exc}") from exc
        for i, shape in in_place:
            # Only layers that keep the shape can work in place (element-wise
            # ones); a Pooling or Proposal top named like its bottom would
            # overwrite the input it reads.
            if bottoms[i].shape != shape:
                raise NetDefinitionError(
                    f"{self.source}: layer '{lp.name}' (type {lp.type}) works in place on blob "
                    f"'{lp.bottom[i]}' but changes its shape from {shape} to {bottoms[i].shape}; "
                    f"give the top its own name")
        self.build_log.append(
            f"{lp.name} ({lp.type}): " + ", ".join(f"{n} {b.shape}" for n, b in zip(lp.top, tops)))

    def _bind_params(self):
        """Share parameters by ParamSpec name and record lr/decay multipliers."""
        self.params = collections.OrderedDict()
        self.learnable_params = []
        owners = {}
        self._param_need_backward = []
        for layer, lp in zip(self.layers, self.layer_params):
            if len(lp.param) > len(layer.blobs):
                raise NetDefinitionError(
                    f"layer '{lp.name}' (type {lp.type}): {len(lp.param)} param specs given "
                    f"but the layer has {len(layer.blobs)} parameter blob(s)")
            fixed = set(getattr(layer, "fixed_param_blobs", ()))
            flags = []  # per blob: does it need a gradient (lr_mult != 0)?
            for i in range(len(layer.blobs)):
                spec = lp.param[i] if i < len(lp.param) else None
                name = spec.name if spec is not None else ""
                lr = 0.0 if i in fixed else (spec.lr_mult if spec is not None else 1.0)
                decay = spec.decay_mult if spec is not None else 1.0
                if name and name in owners:
                    owner = owners[name]
                    if owner.blob.shape != layer.blobs[i].shape:
                        raise NetDefinitionError(
                            f"layer '{lp.name}': shared parameter '{name}' has shape "
                            f"{layer.blobs[i].shape} here but {owner.blob.shape} in layer "
                            f"'{owner.layer}'")
                    layer.blobs[i] = owner.blob
                    self.build_log.append(f"{lp.name}: param {i} shares '{name}' with {owner.layer}")
                    flags.append(owner.lr_mult != 0)
                    continue
                entry = LearnableParam(layer.blobs[i], lp.name, i, lr, decay)
                if name:
                    owners[name] = entry
                self.learnable_params.append(entry)
                flags.append(lr != 0)
            if layer.blobs:
                self.params[lp.name] = layer.blobs
            layer.param_propagate_down = tuple(flags)
            self._param_need_backward.append(any(flags))

    def _plan_backward(self, force_backward):
        """Caffe's decision of which layers and bottoms need backward."""
        n = len(self.layers)
        blob_needs = {}
        self.layer_need_backward = [False] * n
        self.bottom_need_backward = []
        for i, lp in enumerate(self.layer_params):
            propagate = list(lp.propagate_down)
            if propagate and len(propagate) != len(lp.bottom):
                raise NetDefinitionError(
                    f"layer '{lp.name}': propagate_down must be given once per bottom "
                    f"({len(lp.bottom)}), found {len(propagate)}")
            needs = [blob_needs.get(b, False) and (propagate[j] if propagate else True)
                     for j, b in enumerate(lp.bottom)]
            layer_needs = any(needs) or self._param_need_backward[i]
            self.layer_need_backward[i] = layer_needs
            self.bottom_need_backward.append(needs)
            for t in lp.top:
                blob_needs[t] = layer_needs

        # Walk back from the losses: layers that feed no loss skip backward.
        under_loss, skip = set(), set()
        for i in reversed(range(n)):
            lp = self.layer_params[i]
            contributes = any(w != 0 for w in self.loss_weights[i]) or \
                any(t in under_loss for t in lp.top)
            skip_propagate = all(t in skip for t in lp.top)
            if not contributes or skip_propagate:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(lp.bottom)
            for j, b in enumerate(lp.bottom):
                if contributes:
                    under_loss.add(b)
                if not self.bottom_need_backward[i][j]:
                    skip.add(b)

        if force_backward:
            for i, layer in enumerate(self.layers):
                self.layer_need_backward[i] = True
                self.bottom_need_backward[i] = [
                    needs or layer.allow_force_backward(j)
                    for j, needs in enumerate(self.bottom_need_backward[i])]
        for i, lp in enumerate(self.layer_params):
            self.layers[i].need_backward = self.layer_need_backward[i]
            if self.layer_need_backward[i]:
                self.build_log.append(f"{lp.name} needs backward")
            else:
                self.build_log.append(f"{lp.name} does not need backward")

    # -- running ---------------------------------------------------------------
    def _layer_index(self, name, default, role):
        """The index of layer ``name`` (``default`` for None)."""
        if name is None:
            return default
        if name not in self.layer_dict:
            raise NetDefinitionError(
                f"{self.source}: {role}: no layer named '{name}' "
                f"(layers: {', '.join(self._layer_names)})")
        return self._layer_names.index(name)

    def _range(self, call, start, end):
        """(first, last) layer indices, bottom to top, of the layers that
        ``call`` ("forward" or "backward") runs; pycaffe's meaning: forward
        goes from ``start`` up to ``end``, backward from ``start`` down to
        ``end``, both inclusive."""
        top = len(self.layers) - 1
        if top < 0 and start is None and end is None:
            return 0, top  # a net without layers (Caffe builds one): nothing to run
        if call == "forward":
            first = self._layer_index(start, 0, "forward start")
            last = self._layer_index(end, top, "forward end")
        else:
            last = self._layer_index(start, top, "backward start")
            first = self._layer_index(end, 0, "backward end")
        if first > last:
            above, below = ("end", "start") if call == "forward" else ("start", "end")
            raise NetDefinitionError(
                f"{self.source}: {call}(start='{start}', end='{end}'): {call} runs "
                f"{'up' if call == 'forward' else 'down'} from start to end, but {above} "
                f"'{self._layer_names[min(first, last)]}' is below {below} "
                f"'{self._layer_names[max(first, last)]}'")
        return first, last

    def lean_memory(self, keep):
        """Switch to the lean memory plan (``netdef.memory``): after each
        pass only the blobs named in ``keep`` and the inputs and outputs
        stay readable; the others share storage. Names not in the net are
        an error (filter with ``net.blobs`` for optional ones)."""
        if self.memory is not None:
            raise NetDefinitionError(f"{self.source}: the net already has a lean memory plan")
        accounts = {id(blob): blob.pool for blob in self.blobs.values()}
        self.memory = MemoryPlan(self, keep)
        # The plan gave its blobs its pool: they keep their accounts, which
        # now take storage from the pool.
        for blob in self.blobs.values():
            if blob.pool is self.memory.pool:
                accounts[id(blob)].inner = self.memory.pool
                blob.pool = accounts[id(blob)]
        self.build_log.append(self.memory.summary())

    def _steps_between(self, first, last):
        """The plan's steps covering layers ``first``..``last``; a fused step
        only partly inside the range is replaced by its layers, one by one."""
        if first == 0 and last == len(self.layers) - 1:
            return self.steps
        chosen = []
        for step in self.steps:
            inside = [k for k in step.indices if first <= k <= last]
            if len(inside) == len(step.indices):
                chosen.append(step)
            else:
                chosen += [LayerStep(self, k) for k in inside]
        return chosen

    def set_input_arrays(self, *arrays, **named):
        """Copy keyword arrays (NumPy or CuPy) into the blobs of those names,
        reshaping them as needed; or, as pycaffe, ``set_input_arrays(data,
        labels)``: hand them to the net's first layer, which must be a
        MemoryData layer (its ``reset``: data ``(n, C, H, W)``, labels ``(n,)``
        or ``(n, 1, 1, 1)``, ``n`` a multiple of its batch_size)."""
        if arrays:
            if len(arrays) != 2 or named:
                raise NetDefinitionError(
                    f"{self.source}: set_input_arrays takes (data, labels) for a MemoryData "
                    "layer, or blob_name=array keywords")
            if not self.layers or self.layers[0].type != "MemoryData":
                raise NetDefinitionError(
                    f"{self.source}: set_input_arrays(data, labels) needs a MemoryData layer "
                    "as the net's first layer")
            with self.device.context():
                self.layers[0].reset(*arrays)
            return
        for name in named:
            if name not in self.blobs:
                raise NetDefinitionError(
                    f"{self.source}: no blob named '{name}' (inputs: {', '.join(self.inputs)})")
        with self.device.context():  # the copies run on the net's device
            for name, array in named.items():
                self.blobs[name].set_data(array)

    def forward(self, blobs=None, start=None, end=None, **inputs):
        """Run the layers from ``start`` up to ``end`` (layer names,
        inclusive; default: the first and the last layer), as pycaffe.
        Keyword arrays are copied into the blobs of those names first.

        Returns ``Outputs``: blob name -> data array for the net's outputs
        (the ``end`` layer's tops when ``end`` is given, as pycaffe) and the
        names in ``blobs``; ``.loss`` is the weighted sum of the loss tops
        computed in this call."""
        first, last = self._range("forward", start, end)
        if first == 0:
            self._start_pass()
        steps = self._steps_between(first, last)
        memory = self.memory if steps is self.steps else None
        # The loss is summed on the device and read in one transfer at the
        # end, together with the input checks the layers deferred to it.
        with self.device.context(), deferred_checks.deferring() as pending:
            self.set_input_arrays(**inputs)
            loss = 0.0
            try:
                for s, step in enumerate(steps):
                    step.forward()
                    for i in step.indices:
                        for weight, top in zip(self.loss_weights[i], self.top_blobs[i]):
                            if weight:
                                loss = loss + weight * top.data.sum(dtype=np.float64)
                    if memory is not None:
                        memory.after_forward(s)
            except Exception:
                pending.raise_failed()  # a bad input explains what failed after it
                raise
            loss = pending.resolve(self.device.xp, loss)
        names = self.top_names[end] if end is not None else list(self.outputs)
        out = Outputs((name, self.blobs[name].data) for name in names + list(blobs or []))
        out.loss = loss
        return out

    def set_draw_key(self, iteration, position=0):
        """Key the random draws of the next forward passes (sampling,
        dropout: Layer.keyed_rng) by ``(iteration, position)``: the solver
        sets it before each pass, position being the pass's image position
        within the iteration. ``set_draw_key(None)`` goes back to the
        default, ``(0, passes so far)``: a plain forward loop draws anew
        each pass and the same in every run."""
        self._draw_key = None if iteration is None else (int(iteration), int(position))

    def _start_pass(self):
        """A forward from the first layer starts a pass: hand its draw key
        to every layer (a forward from a later layer continues the pass)."""
        key = self._draw_key
        if key is None:
            key = (0, self.draw_passes)
            self.draw_passes += 1
        for layer in self.layers:
            layer.draw_key = key

    def backward(self, diffs=None, start=None, end=None, relu_mode="normal", **seeds):
        """Back-propagate from layer ``start`` (the top-most layer run) down
        to layer ``end``, both inclusive, as pycaffe; default: from the last
        layer down to the first.

        Loss tops' diffs are seeded with their loss weight; then each
        keyword array is copied into the diff of the blob of that name (any
        blob, e.g. a class score or a feature map; the shapes must match).
        ``relu_mode`` ("normal", "guided" or "deconvnet"; see
        ``layers.neuron.RELU_MODES``) is the rule of every ReLU's backward
        in this call, fused ones included. Parameter gradients accumulate
        (call ``clear_param_diffs`` between iterations). Returns blob name
        -> diff array for the net inputs (the ``end`` layer's bottoms when
        ``end`` is given, as pycaffe) and the names in ``diffs``."""
        if relu_mode not in RELU_MODES:
            raise NetDefinitionError(f"{self.source}: backward: relu_mode must be one of "
                                     f"{', '.join(RELU_MODES)}, found {relu_mode!r}")
        first, last = self._range("backward", start, end)
        steps = self._steps_between(first, last)
        memory = self.memory if steps is self.steps else None
        with self.device.context():
            self._seed_diffs(seeds)
            for s in reversed(range(len(steps))):
                steps[s].backward(relu_mode)
                if memory is not None:
                    memory.after_backward(s)
            # (inside the context: reading a diff never written allocates it)
            names = self.bottom_names[end] if end is not None else list(self.inputs)
            return {name: self.blobs[name].diff for name in names + list(diffs or [])}

    def _seed_diffs(self, seeds):
        """Loss tops' diffs <- their loss weight, then blob diffs <- seeds."""
        for name, diff in seeds.items():
            if name not in self.blobs:
                raise NetDefinitionError(
                    f"{self.source}: backward: no blob named '{name}' to seed "
                    f"(blobs: {', '.join(self.blobs)})")
            if tuple(np.shape(diff)) != self.blobs[name].shape:
                raise ShapeError(f"{self.source}: backward: the seed for blob '{name}' has "
                                 f"shape {tuple(np.shape(diff))}, the blob has "
                                 f"{self.blobs[name].shape}")
        for weights, tops in zip(self.loss_weights, self.top_blobs):
            for weight, top in zip(weights, tops):
                if weight:
                    top.diff.fill(weight)
        for name, diff in seeds.items():
            self.blobs[name].diff[...] = self.device.asarray(diff, dtype=self.dtype)

    @property
    def top_names(self):
        """pycaffe's: layer name -> the names of its top blobs, in order."""
        return collections.OrderedDict((lp.name, list(lp.top)) for lp in self.layer_params)

    @property
    def bottom_names(self):
        """pycaffe's: layer name -> the names of its bottom blobs, in order."""
        return collections.OrderedDict((lp.name, list(lp.bottom)) for lp in self.layer_params)

    def reshape(self):
        """Propagate new input shapes through every layer (pycaffe)."""
        with self.device.context():
            for layer, bottoms, tops in zip(self.layers, self.bottom_blobs, self.top_blobs):
                with self.budget.inside(layer.where):
                    layer.reshape(bottoms, tops)
        if self.memory is not None:
            self.memory.release_all()
        check_plan(self.budget, self)

    def clear_param_diffs(self):
        """Zero every learnable parameter's diff (gradients accumulate)."""
        with self.device.context():
            for p in self.learnable_params:
                p.blob.zero_diff()

    # -- weights -------------------------------------------------------------------
    def copy_from(self, path, skip_mismatched=False):
        """Load weights by layer name from a .caffemodel or a native snapshot.

        Returns a ``WeightsReport`` (loaded, missing, unused, skipped). A shape
        mismatch raises ``WeightsError`` naming both shapes unless
        ``skip_mismatched``."""
        with self.device.context():  # the copies into the blobs run on the net's device
            report = load_weights_into(self, path, skip_mismatched=skip_mismatched)
        self.build_log.append(report.summary())
        return report

    def save(self, path):
        """Write the weights as a Caffe binary .caffemodel (atomically)."""
        write_caffemodel(path, [(lp.name, lp.type, [to_numpy(b.data) for b in layer.blobs])
                                for lp, layer in zip(self.layer_params, self.layers)
                                if layer.blobs])

    def save_weights(self, path, meta=None):
        """Write the weights in the native, pickle-free snapshot format."""
        with self.device.context():
            save_native(self, path, meta)

    def __repr__(self):
        return (f"Net('{self.name}', phase={self.phase}, {len(self.layers)} layers, "
                f"device={self.device})")


def _is_text(model):
    return isinstance(model, str) and ("\n" in model or "{" in model)
