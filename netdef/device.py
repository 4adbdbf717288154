"""Device selection: the CPU (NumPy) or one CUDA GPU (CuPy).

A ``Device`` is a small value object; a Net is built on one and keeps it.
pycaffe's ``set_mode_cpu()`` / ``set_mode_gpu()`` / ``set_device(i)`` set the
*default* device that a Net built without an explicit ``device=`` argument
uses; tests always pass the device explicitly, so no state leaks between them.

CuPy is imported lazily, the first time a GPU device is asked for, so a
machine without CuPy or without a GPU runs everything on the CPU.
"""
import contextlib

import numpy as np

from .errors import DeviceError


def _import_cupy():
    try:
        import cupy
    except ImportError as exc:  # no CuPy installed
        raise DeviceError(
            "a GPU was requested but CuPy is not installed; install the GPU "
            "extra (pip install -e '.[gpu]': CuPy and the CUDA libraries it loads; "
            "python -m netdef.device_check --gpu N checks them) or run on the CPU") from exc
    return cupy


def gpu_available():
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, or no device: all mean "no GPU"
        return False


class Device:
    """Where arrays live: ``Device('cpu')`` or ``Device('gpu', index)``."""

    def __init__(self, kind="cpu", index=0):
        if kind not in ("cpu", "gpu"):
            raise DeviceError(f"device kind must be 'cpu' or 'gpu', found {kind!r}")
        self.kind = kind
        self.index = int(index) if kind == "gpu" else 0
        if self.is_gpu:
            cupy = _import_cupy()
            count = cupy.cuda.runtime.getDeviceCount()
            if not 0 <= self.index < count:
                raise DeviceError(
                    f"GPU {self.index} requested but CuPy sees {count} device(s) "
                    "(python -m netdef.device_check --gpu N says what is missing)")

    @property
    def is_gpu(self):
        return self.kind == "gpu"

    @property
    def xp(self):
        """The array module of this device: numpy or cupy."""
        return _import_cupy() if self.is_gpu else np

    def context(self):
        """Context manager making this device current for CuPy allocations."""
        if self.is_gpu:
            return _import_cupy().cuda.Device(self.index)
        return contextlib.nullcontext()

    def make_current(self):
        """Make this GPU CuPy's current device for the rest of the process.

        For a process that owns one GPU (a command run with ``--gpu N``, one
        data-parallel rank): then even work that runs outside ``context()``
        (a library call, a user's hook) lands on this GPU, not on GPU 0.
        Nets and solvers still enter ``context()`` themselves, so several
        devices in one process (tests, tools) stay correct. No-op on the CPU."""
        if self.is_gpu:
            _import_cupy().cuda.Device(self.index).use()

    def asarray(self, array, dtype=None):
        """``array`` on this device (a copy only when it has to move)."""
        if self.is_gpu:
            with self.context():
                return _import_cupy().asarray(array, dtype=dtype)
        return np.asarray(to_numpy(array), dtype=dtype)

    def __eq__(self, other):
        return isinstance(other, Device) and (self.kind, self.index) == (other.kind, other.index)

    def __hash__(self):
        return hash((self.kind, self.index))

    def __repr__(self):
        return f"Device('gpu', {self.index})" if self.is_gpu else "Device('cpu')"


CPU = Device("cpu")

_default = CPU


def set_mode_cpu():
    """pycaffe: make the CPU the default device of Nets built from now on."""
    global _default
    _default = CPU


def set_mode_gpu():
    """pycaffe: make GPU 0 (or the last ``set_device``) the default device."""
    global _default
    _default = Device("gpu", _default.index if _default.is_gpu else 0)


def set_device(index):
    """pycaffe: choose which GPU ``set_mode_gpu`` uses (and switch to it)."""
    global _default
    _default = Device("gpu", index)


def device_from_index(gpu):
    """The device of the ``--gpu INDEX`` option of the netdef tools
    (netdef.inspect, netdef.layer_times): GPU ``gpu``, or the CPU when it is
    None. ``Device`` raises DeviceError when CuPy does not see that GPU."""
    return Device("gpu", gpu) if gpu is not None else CPU


def default_device():
    return _default


def is_gpu_array(array):
    """True for a CuPy array; decided by type, without importing CuPy."""
    return type(array).__module__.split(".")[0] == "cupy"


def array_module(array):
    """numpy or cupy, whichever ``array`` belongs to (Chainer's dispatch)."""
    return _import_cupy() if is_gpu_array(array) else np


def to_numpy(array):
    """A NumPy array with the contents of ``array`` (copied from the GPU)."""
    if is_gpu_array(array):
        return array.get()
    return np.asarray(array)
