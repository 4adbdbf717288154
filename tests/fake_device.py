"""Two stand-in GPUs, for testing device routing on a machine without one.

    with fake_gpus() as fake:               # ``cupy`` is now the stand-in
        net = Net(TEXT, device=Device("gpu", 1))
        net.forward(...)                    # raises WrongDevice if any work
                                            # on a GPU-1 array runs while GPU 0
                                            # is current (as CuPy would, or
                                            # worse, with peer access)
        assert fake.work[1] and not fake.work[0]

``fake_gpus`` puts ``FakeCupy`` in ``sys.modules["cupy"]``. It models what
matters for routing and nothing more:

- ``cupy.cuda.Device(i)`` is a context manager that makes GPU ``i`` current
  (a stack over the process's device, 0 until ``.use()``);
- arrays (``FakeArray``, a NumPy array whose class claims module ``cupy`` so
  the engine's dispatch takes the GPU path) remember the GPU current when
  they were made; every *use* that CuPy would run as a kernel on the array's
  device (ufuncs and reductions, NumPy functions, item assignment, ``fill``,
  ``copy``, ``astype``, fancy indexing, a ``RawModule`` kernel launch) checks
  that the current GPU is theirs and raises ``WrongDevice`` if not. As in
  CuPy, views, shapes, basic slicing and copies to the host (``get()``,
  ``float()``) do not need the array's device to be current;
- ``RawModule`` kernels of ``layers/cuda`` run through the host shim
  (``layers.kernels`` with NumPy arrays), so layer results are real numbers
  that tests can compare with the CPU;
- ``cupy.random.RandomState``, ``runtime.memGetInfo`` and friends, for the
  GPU probe (``netdef.device_check``).

``fake.work[i]`` counts the checked uses on GPU ``i``; ``fake.launches[i]``
the kernel launches. Not modelled: CuPy's refusal to convert a device
array to NumPy implicitly, streams, memory limits.
"""
import collections
import contextlib
import sys
import types

import numpy as np
import pytest

from layers import kernels

__all__ = ["fake_gpus", "FakeCupy", "FakeArray", "WrongDevice"]

GIB = 1024 ** 3


class WrongDevice(AssertionError):
    """Work on an array was issued while another GPU was current."""


class _State:
    """Which GPU is current, and what ran where."""

    def __init__(self, count):
        self.count = count
        self.base = 0            # the process's current device (``Device.use``)
        self.stack = []          # ``with Device(i)`` blocks, innermost last
        self.work = collections.Counter()
        self.launches = collections.Counter()
        self.syncs = collections.Counter()

    @property
    def current(self):
        return self.stack[-1] if self.stack else self.base


_ACTIVE = []  # the installed _State (one at a time)


def _state():
    if not _ACTIVE:
        raise RuntimeError("a fake GPU array was used after fake_gpus() ended")
    return _ACTIVE[-1]


def _arrays_in(value):
    """Every FakeArray inside ``value`` (nested tuples, lists, dicts)."""
    if isinstance(value, FakeArray):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _arrays_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _arrays_in(item)


def _check(what, *values):
    state = _state()
    for array in _arrays_in(values):
        if array.gpu != state.current:
            raise WrongDevice(f"{what}: an array on GPU {array.gpu} was used while GPU "
                              f"{state.current} was current")
    state.work[state.current] += 1


def _host(value):
    """``value`` with every FakeArray replaced by a NumPy view of its memory."""
    if isinstance(value, FakeArray):
        return value.view(np.ndarray)
    if isinstance(value, tuple):
        return tuple(_host(v) for v in value)
    if isinstance(value, list):
        return [_host(v) for v in value]
    if isinstance(value, dict):
        return {k: _host(v) for k, v in value.items()}
    return value


def _device(value):
    """NumPy results as arrays on the current GPU (CuPy returns 0-d arrays
    where NumPy returns scalars)."""
    if isinstance(value, FakeArray):
        return value
    if isinstance(value, np.ndarray):
        return value.view(FakeArray)
    if isinstance(value, np.generic):
        return np.asarray(value).view(FakeArray)
    if isinstance(value, tuple):
        return tuple(_device(v) for v in value)
    if isinstance(value, list):
        return [_device(v) for v in value]
    return value


def _is_fancy(key):
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (np.ndarray, list)) for k in keys)


class FakeArray(np.ndarray):
    """A NumPy array on one fake GPU (see the module docstring)."""
    __module__ = "cupy"  # netdef.device.is_gpu_array decides by the module

    def __array_finalize__(self, obj):
        # A view stays on its base's GPU; anything new is on the current one.
        self.gpu = getattr(obj, "gpu", None)
        if self.gpu is None:
            self.gpu = _state().current

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _check(f"{ufunc.__name__}.{method}", inputs, kwargs)
        result = getattr(ufunc, method)(*_host(inputs), **_host(kwargs))
        out = kwargs.get("out")
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _device(result)

    def __array_function__(self, func, types_, args, kwargs):
        _check(func.__name__, args, kwargs)
        return _device(func(*_host(args), **_host(kwargs)))

    def __setitem__(self, key, value):
        _check("setitem", self, key, value)
        np.ndarray.__setitem__(self.view(np.ndarray), _host(key), _host(value))

    def __getitem__(self, key):
        if _is_fancy(key) or any(True for _ in _arrays_in(key)):
            _check("fancy getitem", self, key)
            return _device(np.ndarray.__getitem__(self.view(np.ndarray), _host(key)))
        return np.ndarray.__getitem__(self, key)  # a view: no work, keeps its GPU

    @property
    def device(self):
        return FakeDevice(self.gpu)

    def get(self, stream=None):
        """A host copy; like CuPy, from any current device."""
        return np.array(self.view(np.ndarray))

    def set(self, array, stream=None):
        np.copyto(self.view(np.ndarray), array)


def _checked_method(name):
    base = getattr(np.ndarray, name)

    def method(self, *args, **kwargs):
        _check(f"ndarray.{name}", self, args, kwargs)
        return _device(base(self.view(np.ndarray), *_host(args), **_host(kwargs)))
    method.__name__ = name
    return method


# ndarray methods that run a kernel in CuPy but are not NumPy ufuncs.
for _name in ("fill", "copy", "astype", "take", "dot", "argmax", "argmin", "nonzero",
              "cumsum", "sort", "argsort", "repeat", "flatten", "clip", "round", "put"):
    setattr(FakeArray, _name, _checked_method(_name))


class FakeDevice:
    """``cupy.cuda.Device``: a context manager making GPU ``index`` current."""

    def __init__(self, index=None):
        self.id = _state().current if index is None else int(index)
        if not 0 <= self.id < _state().count:
            raise ValueError(f"fake GPU {self.id} does not exist")
        self.compute_capability = "90"

    def __enter__(self):
        _state().stack.append(self.id)
        return self

    def __exit__(self, *exc):
        _state().stack.pop()
        return False

    def use(self):
        _state().base = self.id

    def synchronize(self):
        _state().syncs[self.id] += 1

    def __eq__(self, other):
        return isinstance(other, FakeDevice) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<fake CUDA Device {self.id}>"


class FakeCompileException(Exception):
    pass


class FakeCUDARuntimeError(RuntimeError):
    pass


class _Runtime:
    """``cupy.cuda.runtime``."""
    CUDARuntimeError = FakeCUDARuntimeError

    def __init__(self, free=12 * GIB, total=16 * GIB):
        self.free, self.total = free, total

    def getDeviceCount(self):
        return _state().count

    def getDevice(self):
        return _state().current

    def setDevice(self, index):
        FakeDevice(index).use()

    def memGetInfo(self):
        return self.free, self.total

    def runtimeGetVersion(self):
        return 12090

    def getDeviceProperties(self, index):
        return {"name": f"Fake GPU {index}".encode(), "major": 9, "minor": 0,
                "totalGlobalMem": self.total}

    def deviceSynchronize(self):
        _state().syncs[_state().current] += 1


class FakeKernel:
    """One entry point of a ``RawModule``: checks that its array arguments
    are on the current GPU, then runs the host build of the same source."""

    def __init__(self, code, symbol):
        self.code, self.symbol = code, symbol

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        _check(f"kernel {self.symbol}", args)
        _state().launches[_state().current] += 1
        source, dtype = _layers_source(self.code)
        name = self.symbol.rsplit("_", 1)[0]
        kernels.launch(source, name, dtype, max(1, grid[0] * block[0]), _host(tuple(args)))


def _layers_source(code):
    """The ``layers/cuda`` file and dtype whose full text is ``code``."""
    for source in kernels.kernel_files():
        for dtype in (np.float32, np.float64):
            if kernels.kernel_source(source, np.dtype(dtype).name) == code:
                return source, dtype
    raise AssertionError("the fake RawModule runs only the kernels of layers/cuda")


class FakeRawModule:
    def __init__(self, code=None, options=(), **kwargs):
        self.code = code

    def compile(self, *args, **kwargs):
        return None

    def get_function(self, symbol):
        return FakeKernel(self.code, symbol)


class FakeRandomState:
    """``cupy.random.RandomState``: made on the current GPU, used only there."""

    def __init__(self, seed=None, method=None):
        self.gpu = _state().current
        self._rng = np.random.default_rng(seed)

    def _make(self, what, draw, dtype):
        if _state().current != self.gpu:
            raise WrongDevice(f"RandomState.{what}: a generator of GPU {self.gpu} was used "
                              f"while GPU {_state().current} was current")
        _state().work[self.gpu] += 1
        return np.asarray(draw(), dtype=dtype).view(FakeArray)

    def random_sample(self, size=None, dtype=np.float64):
        return self._make("random_sample", lambda: self._rng.random(size), dtype)

    def uniform(self, low=0.0, high=1.0, size=None, dtype=np.float64):
        return self._make("uniform", lambda: self._rng.uniform(low, high, size), dtype)

    def standard_normal(self, size=None, dtype=np.float64):
        return self._make("standard_normal", lambda: self._rng.standard_normal(size), dtype)

    def normal(self, loc=0.0, scale=1.0, size=None, dtype=np.float64):
        return self._make("normal", lambda: self._rng.normal(loc, scale, size), dtype)


class _MemoryPool:
    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self):
        return None


def _from_anywhere(func):
    """``cupy.asarray`` and friends: from the host or any GPU onto the
    current one (CuPy copies between devices); an array already on the
    current GPU in the right dtype comes back as itself."""
    def make(a, *args, **kwargs):
        host = _host(a)
        result = func(host, *args, **kwargs)
        if isinstance(a, FakeArray) and result is host and a.gpu == _state().current:
            return a
        if isinstance(a, FakeArray) and a.gpu != _state().current:
            result = np.array(result)  # a copy to the current GPU
        return _device(result)
    make.__name__ = func.__name__
    return make


def _checked_function(func):
    def call(*args, **kwargs):
        _check(func.__name__, args, kwargs)
        return _device(func(*_host(args), **_host(kwargs)))
    call.__name__ = func.__name__
    return call


class FakeCupy(types.ModuleType):
    """The stand-in ``cupy`` module: NumPy's functions on FakeArrays."""
    ndarray = FakeArray
    RawModule = FakeRawModule
    __version__ = "14.0.0"

    def __init__(self, count=2):
        super().__init__("cupy")
        self.__file__ = __file__  # else __getattr__ would answer with NumPy's
        self._state = _State(count)
        compiler = types.SimpleNamespace(CompileException=FakeCompileException)
        curand = types.SimpleNamespace(CURAND_RNG_PSEUDO_PHILOX4_32_10=0,
                                       CURAND_RNG_PSEUDO_DEFAULT=1)
        self.cuda = types.SimpleNamespace(
            Device=FakeDevice, runtime=_Runtime(), compiler=compiler, curand=curand,
            get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None))
        self.random = types.SimpleNamespace(RandomState=FakeRandomState)

    @property
    def work(self):
        return self._state.work

    @property
    def launches(self):
        return self._state.launches

    @property
    def syncs(self):
        return self._state.syncs

    def get_default_memory_pool(self):
        return _MemoryPool()

    def get_array_module(self, *arrays):
        return self if any(True for _ in _arrays_in(arrays)) else np

    def asnumpy(self, array):
        return array.get() if isinstance(array, FakeArray) else np.asarray(array)

    def __getattr__(self, name):
        value = getattr(np, name)
        if isinstance(value, (np.ufunc, type)) or not callable(value):
            return value  # ufuncs dispatch through FakeArray.__array_ufunc__
        if name in ("asarray", "array", "ascontiguousarray", "asanyarray"):
            return _from_anywhere(value)
        if name.endswith("_like"):
            # Allocation on the current GPU: reads only the shape, no kernel
            # on the model array's device.
            return lambda a, *args, **kw: _device(value(_host(a), *args, **kw))
        return _checked_function(value)


@contextlib.contextmanager
def fake_gpus(count=2):
    """Install ``FakeCupy`` (``count`` GPUs, GPU 0 current) as ``cupy`` for
    the block; yields it. Kernel modules cached by ``layers.kernels`` during
    the block are dropped at its end, so a later real GPU never sees them."""
    fake = FakeCupy(count)
    _ACTIVE.append(fake._state)
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setitem(sys.modules, "cupy", fake)
        for name, value in list(vars(kernels).items()):
            if isinstance(value, dict) and not name.startswith("__"):
                patch.setattr(kernels, name, dict(value))
        try:
            yield fake
        finally:
            _ACTIVE.remove(fake._state)
            _clear_function_caches()


def _clear_function_caches():
    for value in vars(kernels).values():
        clear = getattr(value, "cache_clear", None)
        if callable(clear) and getattr(value, "__module__", None) == kernels.__name__:
            clear()
