"""A stand-in for CuPy, on NumPy, that counts what would cost on a GPU.

    from bench.standin_cupy import COUNTS, installed
    with installed():                       # sys.modules["cupy"] is the stand-in
        net = Net(path, "TRAIN", device=Device("gpu", 0))
        with COUNTS.at("forward"):
            net.forward()
    COUNTS.table                             # label -> Counter of events

Inside ``installed()``, ``Device("gpu", 0)`` works on a machine without a GPU
and the whole GPU path of the project runs: arrays are a NumPy subclass whose
type lives in module ``cupy`` (so ``netdef.device.is_gpu_array`` says True),
and ``cupy.RawModule`` builds the kernel text as host C++ through the shim of
``layers.kernels``, so every raw kernel runs as it does in the host-run tests.
Nothing is faster or slower than NumPy; what the stand-in gives is counts of
the events that matter on a real GPU, each under the label of the innermost
``COUNTS.at(label)`` open in the calling thread (other threads: their name):

- ``launch``: a raw kernel launched (``RawModule.get_function(...)(...)``);
- ``get_function``: a kernel looked up in a compiled module (10-20 us each on
  CuPy); ``compile``: a module built;
- ``array_op``: a device array operation (a ufunc, a ``cupy.*`` function, a
  fancy index or an assignment, ``copy``/``astype``/``fill``), each at least
  one CuPy kernel; counted at the outermost call only, so an approximation;
- ``d2h``: a device-to-host copy (``.get()``, ``cupy.asnumpy``);
- ``scalar_sync``: a device value read by the host (``float()``, ``int()``,
  ``bool()``, ``.item()``, ``.tolist()``, use as an index), which waits for
  the device;
- ``explicit_sync``: ``Device.synchronize()``, ``Stream.synchronize()``,
  ``runtime.deviceSynchronize()``;
- ``h2d``: host data copied to the device (``cupy.asarray`` of NumPy data, a
  NumPy array assigned into a device array), through a host copy into
  CuPy's staging buffer in the calling thread; ``h2d_async``: an
  asynchronous copy from pinned memory (``ndarray.set(host, stream=...)``);
- ``host_mix``: a plain NumPy array given to a device operation (a TypeError
  on real CuPy: a bug the stand-in would otherwise hide);
- ``generator``: a ``cupy.random.RandomState`` made (a cuRAND generator).

Synchronizations are ``d2h + scalar_sync + explicit_sync`` (``SYNC_EVENTS``).
"""
import collections
import contextlib
import os
import sys
import threading
import types

import numpy as np

SYNC_EVENTS = ("d2h", "scalar_sync", "explicit_sync")
EVENTS = ("launch", "get_function", "compile", "array_op") + SYNC_EVENTS + (
    "h2d", "h2d_async", "host_mix", "generator")


class Counts:
    """Events by label; labels nest per thread (``at``)."""

    def __init__(self):
        self.table = collections.defaultdict(collections.Counter)
        # (label, event, "file:line") -> count, for the synchronizations:
        # the line of project code that caused each.
        self.sites = collections.Counter()
        self._local = threading.local()
        self._lock = threading.Lock()

    def reset(self):
        with self._lock:
            self.table.clear()
            self.sites.clear()

    @contextlib.contextmanager
    def at(self, label):
        stack = self._stack()
        stack.append(label)
        try:
            yield
        finally:
            stack.pop()

    def where(self):
        stack = self._stack()
        if stack:
            return stack[-1]
        thread = threading.current_thread()
        return "(outside)" if thread is threading.main_thread() else f"({thread.name})"

    def add(self, event, n=1):
        where = self.where()
        site = _caller() if event in SYNC_EVENTS else None
        with self._lock:
            self.table[where][event] += n
            if site:
                self.sites[(where, event, site)] += n

    @contextlib.contextmanager
    def operation(self):
        """One device operation: counted once however many ufuncs run inside."""
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self.add("array_op")
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth

    def _stack(self):
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def totals(self):
        total = collections.Counter()
        for counter in self.table.values():
            total.update(counter)
        return total


COUNTS = Counts()


# Frames skipped when naming the cause of a synchronization: this module,
# NumPy, and netdef.device's to_numpy (its caller is the cause).
_HELPERS = (f"{os.sep}numpy{os.sep}", f"netdef{os.sep}device.py")


def _caller():
    """``path:line`` of the innermost frame outside the helpers."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if path != __file__ and not any(h in path for h in _HELPERS):
            return f"{os.path.relpath(path)}:{frame.f_lineno}"
        frame = frame.f_back
    return None


# -- arrays ------------------------------------------------------------------------------

def _host(value):
    """NumPy's own view of a stand-in array (containers unwrapped)."""
    if isinstance(value, ndarray):
        return value.view(np.ndarray)
    if isinstance(value, tuple):
        return tuple(_host(v) for v in value)
    if isinstance(value, list):
        return [_host(v) for v in value]
    return value


def _device(value):
    """Stand-in arrays for NumPy results; scalars become 0-d arrays (CuPy's
    reductions and element reads return arrays, not host numbers)."""
    if isinstance(value, ndarray):
        return value
    if isinstance(value, np.ndarray):
        return value.view(ndarray)
    if isinstance(value, np.generic):
        return np.asarray(value).view(ndarray)
    if isinstance(value, tuple):
        return tuple(_device(v) for v in value)
    if isinstance(value, list):
        return [_device(v) for v in value]
    return value


def _note_host_arrays(values):
    for value in values:
        if isinstance(value, (tuple, list)):
            _note_host_arrays(value)
        elif isinstance(value, np.ndarray) and not isinstance(value, ndarray) and value.ndim:
            COUNTS.add("host_mix")


def _synced(method):
    def read(self, *args, **kwargs):
        COUNTS.add("scalar_sync")
        return method(self.view(np.ndarray), *args, **kwargs)
    read.__name__ = method.__name__
    return read


def _operation(method):
    def run(self, *args, **kwargs):
        with COUNTS.operation():
            return _device(method(self.view(np.ndarray), *_host(args), **kwargs))
    run.__name__ = method.__name__
    return run


class ndarray(np.ndarray):  # noqa: N801 (CuPy's name)
    """A device array of the stand-in: NumPy storage, CuPy's type module."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _note_host_arrays(inputs)
        with COUNTS.operation():
            if out is not None:
                kwargs["out"] = _host(out)
            result = getattr(ufunc, method)(*_host(inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _device(result)

    def __getitem__(self, key):
        if _is_fancy(key):
            with COUNTS.operation():
                return _device(np.ndarray.__getitem__(self.view(np.ndarray), _host(key)))
        return _device(np.ndarray.__getitem__(self, _host(key)))

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray) and not isinstance(value, ndarray) and value.ndim:
            COUNTS.add("h2d")
        with COUNTS.operation():
            np.ndarray.__setitem__(self.view(np.ndarray), _host(key), _host(value))

    def __array_finalize__(self, obj):
        # The device an array lives on: its base's, or the current one.
        self._device_id = getattr(obj, "_device_id", _State.current)

    @property
    def device(self):
        return CUDADevice(self._device_id)

    def set(self, arr, stream=None):
        """A host-to-device copy into this array (asynchronous with a stream,
        which on CuPy needs pinned host memory to be truly asynchronous)."""
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError(f"stand-in CuPy: set() of a {arr.dtype} {arr.shape} array into a "
                             f"{self.dtype} {self.shape} array")
        COUNTS.add("h2d_async" if stream is not None else "h2d")
        np.copyto(self.view(np.ndarray), arr)

    def get(self, stream=None, order="C", out=None):
        COUNTS.add("d2h")
        host = np.array(self.view(np.ndarray), order=order)
        if out is not None:
            out[...] = host
            return out
        return host

    __float__ = _synced(np.ndarray.__float__)
    __int__ = _synced(np.ndarray.__int__)
    __bool__ = _synced(np.ndarray.__bool__)
    __index__ = _synced(np.ndarray.__index__)
    item = _synced(np.ndarray.item)
    tolist = _synced(np.ndarray.tolist)
    copy = _operation(np.ndarray.copy)
    astype = _operation(np.ndarray.astype)
    fill = _operation(np.ndarray.fill)


ndarray.__module__ = "cupy"   # netdef.device.is_gpu_array decides by this


def _is_fancy(key):
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (np.ndarray, list)) for k in keys)


# -- module-level functions ----------------------------------------------------------------

# NumPy functions that read only metadata: no kernel on CuPy either.
_METADATA = {"shape", "ndim", "size", "result_type", "promote_types", "can_cast", "isscalar",
             "issubdtype", "broadcast_shapes", "iscomplexobj", "isrealobj"}


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray):
        if dtype is None or np.dtype(dtype) == a.dtype:
            return a
        return a.astype(dtype)
    COUNTS.add("h2d")
    return np.array(_host(a), dtype=dtype, order=order or "K").view(ndarray)


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    if isinstance(a, ndarray):
        with COUNTS.operation():
            return np.array(a.view(np.ndarray), dtype=dtype, copy=copy, order=order,
                            ndmin=ndmin).view(ndarray)
    COUNTS.add("h2d")
    return np.array(_host(a), dtype=dtype, order=order, ndmin=ndmin).view(ndarray)


def asnumpy(a, stream=None, order="C", out=None):
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


def _device_function(function, name):
    def call(*args, **kwargs):
        _note_host_arrays(args)
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = _host(out)
        if name in _METADATA:
            return function(*_host(args), **kwargs)
        with COUNTS.operation():
            result = function(*_host(args), **{k: _host(v) for k, v in kwargs.items()})
        return out if out is not None else _device(result)
    call.__name__ = name
    return call


def _numpy_attribute(name):
    """``cupy.<name>`` for a NumPy name: functions and ufuncs make and take
    stand-in arrays; types, constants and submodules are NumPy's."""
    value = getattr(np, name)
    if isinstance(value, np.ufunc) or isinstance(
            value, (types.FunctionType, types.BuiltinFunctionType)):
        return _device_function(value, name)
    if callable(value) and not isinstance(value, type) and hasattr(value, "__wrapped__"):
        return _device_function(value, name)
    return value


# -- cupy.cuda and kernels ------------------------------------------------------------------

class _State:
    device_count = 1
    current = 0


class CUDADevice:
    """``cupy.cuda.Device``: a context manager that makes a device current."""

    def __init__(self, device=None):
        self.id = _State.current if device is None else int(device)
        self._previous = []

    def __enter__(self):
        if not 0 <= self.id < _State.device_count:
            raise RuntimeError(f"stand-in CuPy: no device {self.id}")
        self._previous.append(_State.current)
        _State.current = self.id
        return self

    def __exit__(self, *exc):
        _State.current = self._previous.pop()

    def use(self):
        _State.current = self.id

    def synchronize(self):
        COUNTS.add("explicit_sync")


class _Event:
    """A recorded point of a stream; everything before it is done already
    (the stand-in runs each operation at once)."""

    def __init__(self):
        self.waits = 0

    def synchronize(self):
        self.waits += 1


class _Stream:
    def synchronize(self):
        COUNTS.add("explicit_sync")

    def record(self, event=None):
        return _Event()


class CompileException(Exception):
    pass


class RawKernel:
    """A compiled entry point; calling it runs the host build of the kernel."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, grid, block, args, **kwargs):
        COUNTS.add("launch")
        from layers import kernels
        # CuPy passes a Python int as int64 and a float as float64.
        host_args = [np.asarray(a)[()] if isinstance(a, (bool, int, float)) else _host(a)
                     for a in args]
        kernels.run_on_host(kernels.host_function(self.module.code, "stand-in", self.name),
                            host_args)


class RawModule:
    """``cupy.RawModule(code=...)``: built as host C++ by ``layers.kernels``."""

    def __init__(self, code=None, options=(), **kwargs):
        self.code = code

    def compile(self, log_stream=None):
        COUNTS.add("compile")

    def get_function(self, name):
        COUNTS.add("get_function")
        return RawKernel(self, name)


class RandomState:
    """``cupy.random.RandomState``: ``seed(s)`` restarts the stream, as it
    does for CuPy's Philox generator; the numbers are NumPy's, not cuRAND's."""

    def __init__(self, seed=None, method=0):
        COUNTS.add("generator")
        self.seed(seed)

    def seed(self, seed=None):
        self._numbers = np.random.default_rng(None if seed is None else int(seed))

    def random_sample(self, size=None, dtype=float):
        with COUNTS.operation():
            return _device(self._numbers.random(size, dtype=dtype))


def _cuda_namespace():
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: _State.device_count,
        getDevice=lambda: _State.current,
        deviceSynchronize=lambda: COUNTS.add("explicit_sync"),
        CUDARuntimeError=RuntimeError)
    stream = _Stream()
    return types.SimpleNamespace(
        Device=CUDADevice, runtime=runtime, Stream=types.SimpleNamespace(null=stream),
        get_current_stream=lambda: stream,
        compiler=types.SimpleNamespace(CompileException=CompileException),
        curand=types.SimpleNamespace(CURAND_RNG_PSEUDO_PHILOX4_32_10=0),
        alloc_pinned_memory=_alloc_pinned_memory)


def _alloc_pinned_memory(nbytes):
    """Host memory standing in for page-locked memory: a byte buffer."""
    return memoryview(bytearray(int(nbytes)))


def _make_module():
    module = types.ModuleType("cupy", __doc__)
    for name, value in {"ndarray": ndarray, "asarray": asarray, "array": array,
                        "asnumpy": asnumpy, "get_array_module": get_array_module,
                        "RawModule": RawModule, "RawKernel": RawKernel,
                        "cuda": _cuda_namespace(), "COUNTS": COUNTS,
                        "random": types.SimpleNamespace(RandomState=RandomState)}.items():
        setattr(module, name, value)
    module.__getattr__ = _numpy_attribute
    return module


@contextlib.contextmanager
def installed(device_count=1):
    """Make ``import cupy`` give the stand-in (with ``device_count``
    devices) for the duration; restores what was there before."""
    saved = sys.modules.get("cupy")
    sys.modules["cupy"] = _make_module()
    _State.device_count, _State.current = int(device_count), 0
    try:
        yield sys.modules["cupy"]
    finally:
        if saved is None:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = saved
