"""The Layer contract (Caffe's, in Python) and the layer registry.

A layer is built from its ``LayerParameter`` and never sees the Net:

- ``setup(bottoms, tops)`` checks blob counts, reads parameters and creates
  the parameter blobs (``self.blobs``); subclasses override ``layer_setup``.
- ``reshape(bottoms, tops)`` validates input shapes and sizes the tops and
  any internal buffers.
- ``forward`` / ``backward`` dispatch to ``forward_cpu`` / ``forward_gpu``
  (``backward_cpu`` / ``backward_gpu``) by the array type of the first bottom
  (or top). A missing GPU path raises; nothing is copied to the host quietly.

Blob lists are lists of ``netdef.blob.Blob``.
"""
import difflib

import numpy as np

from layers.workspace import Workspace
from netdef.blob import Blob
from netdef.device import CPU, is_gpu_array
from netdef.errors import NetDefinitionError, ShapeError

# Filled as the layer modules are imported. Importing ``layers.base`` imports
# the ``layers`` package first, whose __init__ imports every layer module, so
# the tables are complete before anyone can look a type up.
_REGISTRY = {}
_PYTHON_LAYERS = {}
_USER_PYTHON_LAYER = []


def register(type_name):
    """Class decorator: make the class the implementation of ``type_name``."""
    def decorate(cls):
        if type_name in _REGISTRY:
            raise RuntimeError(f"layer type {type_name!r} registered twice")
        cls.type = type_name
        _REGISTRY[type_name] = cls
        return cls
    return decorate


def register_python(module, layer):
    """Map a py-faster-rcnn / py-R-FCN ``type: "Python"`` layer
    (``python_param { module layer }``) onto the decorated native class."""
    def decorate(cls):
        if (module, layer) in _PYTHON_LAYERS:
            raise RuntimeError(f"Python layer {module}.{layer} mapped twice")
        _PYTHON_LAYERS[(module, layer)] = cls
        return cls
    return decorate


def register_user_python(cls):
    """Class decorator: the adapter that runs users' own ``type: "Python"``
    layers (layers/python_layer.py), for the modules a Net allows."""
    _USER_PYTHON_LAYER[:] = [cls]
    return cls


def registered_types():
    return sorted(_REGISTRY)


def python_layer_table():
    return dict(_PYTHON_LAYERS)


def layer_class(param, allow_python_modules=()):
    """The class implementing ``param`` (a LayerParameter).

    A ``type: "Python"`` layer maps onto a native layer when its module is a
    known py-faster-rcnn / py-R-FCN one; any other module is refused unless
    it is listed in ``allow_python_modules``.
    """
    if param.type == "Python":
        key = (param.python_param.module, param.python_param.layer)
        if key in _PYTHON_LAYERS:
            return _PYTHON_LAYERS[key]
        if key[0] in allow_python_modules:
            return _USER_PYTHON_LAYER[0]
        known = ", ".join(f"{m}.{l}" for m, l in sorted(_PYTHON_LAYERS)) or "none"
        raise NetDefinitionError(
            f"layer '{param.name}': Python layer {key[0]}.{key[1]} is not a known native "
            f"layer (known: {known}). Importing a module runs its code, so it is refused; "
            f"to allow it, pass allow_python_modules=['{key[0]}'] to Net (or "
            f"--allow-python-module {key[0]} on the command line)")
    if param.type not in _REGISTRY:
        close = difflib.get_close_matches(param.type, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise NetDefinitionError(
            f"layer '{param.name}': unknown layer type {param.type!r}{hint}")
    return _REGISTRY[param.type]


def create_layer(param, phase="TRAIN", device=CPU, dtype=np.float32, seed=0,
                 allow_python_modules=()):
    """Instantiate the layer described by ``param`` (a LayerParameter)."""
    cls = layer_class(param, allow_python_modules)
    return cls(param, phase=phase, device=device, dtype=dtype, seed=seed)


class Layer:
    """Base class of every layer; see the module docstring for the contract.

    Class attributes declare blob counts (None = no constraint) and whether
    the layer is a loss (a loss layer's first top gets loss_weight 1 unless
    the prototxt says otherwise).
    """

    type = None
    # Names of attributes holding the layer's random state: ints (draw
    # counters) or numpy Generators. Snapshots save and restore them through
    # random_state() / set_random_state(), so a resumed run draws the same.
    random_state_attributes = ()
    exact_bottoms = None
    min_bottoms = None
    max_bottoms = None
    exact_tops = None
    min_tops = None
    max_tops = None
    is_loss = False

    def __init__(self, param, phase="TRAIN", device=CPU, dtype=np.float32, seed=0):
        self.param = param
        self.name = param.name
        self.phase = phase
        self.device = device
        self.dtype = np.dtype(dtype)
        self.seed = int(seed)
        self.blobs = []
        # Set by the Net: per parameter blob, whether it needs a gradient
        # (False for lr_mult 0). Layers may skip the work for those that do
        # not; an empty tuple means every parameter needs one.
        self.param_propagate_down = ()
        # Set by the Net: False when no backward will run through this layer
        # (a TEST net, frozen layers), so forward may skip what only
        # backward reads (e.g. MAX pooling's argmax).
        self.need_backward = True
        # Scratch arrays (layers/workspace.py): private to the layer until
        # the Net assigns one Workspace shared by all its layers.
        self.workspace = Workspace(device)
        # Set by the Net: makes the parameter Blobs (``shape -> Blob``), so
        # they are charged to its memory budget before they are allocated;
        # None: plain Blobs.
        self.param_blob_factory = None
        # Set by the Net before each forward (Net.set_draw_key): the
        # (iteration, image position within the iteration) of the pass, so a
        # layer's random draws (keyed_rng) depend on which pass runs, never
        # on which process runs it or how many passes it ran before.
        self.draw_key = (0, 0)

    # -- context for messages -------------------------------------------------
    @property
    def where(self):
        return f"layer '{self.name}' (type {self.type})"

    def bottom_name(self, i):
        return self.param.bottom[i] if i < len(self.param.bottom) else f"bottom[{i}]"

    def top_name(self, i):
        return self.param.top[i] if i < len(self.param.top) else f"top[{i}]"

    def definition_error(self, message):
        return NetDefinitionError(f"{self.where}: {message}")

    def shape_error(self, bottom_index, expected, found):
        return ShapeError(
            f"{self.where}: bottom '{self.bottom_name(bottom_index)}' expected "
            f"{expected}, found shape {tuple(found)}")

    # -- the contract -----------------------------------------------------------
    def setup(self, bottoms, tops):
        self._check_counts("bottom", len(bottoms), self.exact_bottoms, self.min_bottoms, self.max_bottoms)
        self._check_counts("top", len(tops), self.exact_tops, self.min_tops, self.max_tops)
        self.layer_setup(bottoms, tops)

    def layer_setup(self, bottoms, tops):
        """Read parameters and create ``self.blobs``. Override as needed."""

    def reshape(self, bottoms, tops):
        raise NotImplementedError(f"{type(self).__name__} must implement reshape")

    def forward(self, bottoms, tops):
        if self._on_gpu(bottoms, tops):
            with self.device.context():
                return self.forward_gpu(bottoms, tops)
        return self.forward_cpu(bottoms, tops)

    def backward(self, tops, propagate_down, bottoms):
        if self._on_gpu(bottoms, tops):
            with self.device.context():
                return self.backward_gpu(tops, propagate_down, bottoms)
        return self.backward_cpu(tops, propagate_down, bottoms)

    def forward_cpu(self, bottoms, tops):
        raise NotImplementedError(f"{self.where} has no CPU forward")

    def forward_gpu(self, bottoms, tops):
        raise NotImplementedError(f"{self.where} has no GPU forward")

    def backward_cpu(self, tops, propagate_down, bottoms):
        raise NotImplementedError(f"{self.where} has no CPU backward")

    def backward_gpu(self, tops, propagate_down, bottoms):
        raise NotImplementedError(f"{self.where} has no GPU backward")

    # -- optional hooks read by the Net -----------------------------------------
    def allow_force_backward(self, bottom_index):
        """False for inputs that can never take a gradient (labels, RoIs)."""
        return True

    def random_state(self):
        """The layer's random state as JSON-serialisable data."""
        state = {}
        for name in self.random_state_attributes:
            value = getattr(self, name)
            state[name] = value.bit_generator.state if isinstance(value, np.random.Generator) \
                else int(value)
        return state

    def set_random_state(self, state):
        """Restore what ``random_state`` returned."""
        for name in self.random_state_attributes:
            value = getattr(self, name)
            if isinstance(value, np.random.Generator):
                value.bit_generator.state = state[name]
            else:
                setattr(self, name, int(state[name]))

    def param_needs_gradient(self, index):
        """Whether parameter blob ``index`` needs its gradient computed."""
        flags = self.param_propagate_down
        return index >= len(flags) or bool(flags[index])

    # -- helpers ------------------------------------------------------------------
    def new_param_blob(self, shape):
        """A parameter Blob of ``shape`` on this layer's device and dtype
        (through the Net's ``param_blob_factory`` when it set one)."""
        if self.param_blob_factory is not None:
            return self.param_blob_factory(shape)
        return Blob(shape, dtype=self.dtype, xp=self.device.xp)

    def rng(self, salt=0):
        """A NumPy generator seeded from the layer's seed (and ``salt``)."""
        return np.random.default_rng([self.seed, salt])

    def keyed_rng(self, salt, draw=None, *, seed=None):
        """A NumPy generator for draw number ``draw`` of the current pass:
        keyed by (seed, ``salt``, iteration, position, draw), with
        ``draw_key`` = (iteration, position) set by the Net and ``seed`` the
        layer's unless given. ``draw`` None counts this salt's calls under
        the current key (0 for a pass's first; a layer forwarded again
        without a new key draws anew). The same key gives the same draws in
        any process: data-parallel rank r of N runs the passes a single
        process would run at positions r, r + N, ... of an iteration."""
        if draw is None:
            counts = self.__dict__.setdefault("_keyed_draws", {})
            if counts.get("key") != self.draw_key:
                counts.clear()
                counts["key"] = self.draw_key
            draw = counts.get(salt, 0)
            counts[salt] = draw + 1
        iteration, position = self.draw_key
        return np.random.default_rng([int(self.seed if seed is None else seed), int(salt),
                                      int(iteration), int(position), int(draw)])

    def _check_counts(self, what, n, exact, low, high):
        if exact is not None and n != exact:
            raise self.definition_error(f"needs exactly {exact} {what} blob(s), found {n}")
        if low is not None and n < low:
            raise self.definition_error(f"needs at least {low} {what} blob(s), found {n}")
        if high is not None and n > high:
            raise self.definition_error(f"takes at most {high} {what} blob(s), found {n}")

    @staticmethod
    def _on_gpu(bottoms, tops):
        for blob in list(bottoms) + list(tops):
            return is_gpu_array(blob.data)
        return False


class NoGradientLayer(Layer):
    """Base of the layers whose outputs do not depend differentiably on their
    inputs (target creators, samplers, accuracy, proposals): no bottom allows
    a forced backward, and a Net that calls backward anyway gets zero diffs
    for the bottoms it asks for."""

    def allow_force_backward(self, bottom_index):
        return False

    def backward_cpu(self, tops, propagate_down, bottoms):
        for bottom, down in zip(bottoms, propagate_down):
            if down:
                bottom.diff.fill(0)

    backward_gpu = backward_cpu
