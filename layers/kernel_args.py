"""The argument check shared by both launch paths of ``layers.kernels``.

A kernel launch passes raw bytes: CuPy packs each argument by its own type
(an array as a device pointer, a NumPy scalar as its bytes, a Python int as
an int64) and the kernel reads them by its C signature. A mismatch is never
reported by the GPU: an ``int`` parameter given an int64 shifts every later
argument, a float32 array read as ``double*`` gives garbage, a strided view
is read as if it were contiguous. So before either path launches (CuPy on a
GPU, ctypes on the host shim), ``check_arguments`` reads the entry point's
signature from the kernel text and checks each argument against it:

- a pointer parameter takes an array of the matching dtype (``real*``: the
  kernel's dtype; ``long long*``: int64; ...), C-contiguous, on the launch's
  side (CuPy arrays on the GPU path, NumPy arrays on the host);
- a value parameter takes a NumPy scalar of exactly its type (``int``:
  ``numpy.int32``, ``long long``: ``numpy.int64``, ``real``: the kernel's
  dtype's scalar type); Python numbers and 0-d arrays are refused;
- the number of arguments equals the number of parameters;
- on the GPU, every array lives on the current device (where the kernel
  runs).
"""
import functools
import re
from typing import NamedTuple

import numpy as np

from netdef.device import is_gpu_array
from netdef.errors import KernelError

_ENTRY_POINT = re.compile(r"KERNEL\s+void\s+FN\((\w+)\)\s*\(([^)]*)\)")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_QUALIFIERS = re.compile(r"\b(const|__restrict__|__restrict|volatile)\b")

#: C type of a parameter (qualifiers removed) -> NumPy dtype; ``real`` is
#: the kernel's own dtype.
C_TYPES = {
    "int": np.dtype(np.int32), "unsigned int": np.dtype(np.uint32),
    "long long": np.dtype(np.int64), "unsigned long long": np.dtype(np.uint64),
    "signed char": np.dtype(np.int8), "unsigned char": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_), "float": np.dtype(np.float32),
    "double": np.dtype(np.float64),
}


class Parameter(NamedTuple):
    """One parameter of an entry point: ``int* argmax`` is
    ``Parameter("argmax", "int", True)``."""
    name: str
    c_type: str
    pointer: bool

    def __str__(self):
        return f"{self.c_type}{'*' if self.pointer else ''} {self.name}"


def _parameter(text):
    text = " ".join(_QUALIFIERS.sub(" ", text).split())
    pointer = "*" in text
    c_type, _, name = text.replace("*", " ").rpartition(" ")
    return Parameter(name.strip(), " ".join(c_type.split()), pointer)


@functools.lru_cache(maxsize=None)
def signatures(text):
    """Entry point name (without dtype suffix) -> tuple of Parameters, for
    every ``KERNEL void FN(name)(...)`` in the kernel text."""
    found = {}
    for match in _ENTRY_POINT.finditer(_COMMENT.sub(" ", text)):
        parameters = [p for p in match.group(2).split(",") if p.strip()]
        found[match.group(1)] = tuple(_parameter(p) for p in parameters)
    return found


def parameter_dtype(parameter, dtype):
    """The NumPy dtype an argument for ``parameter`` must have."""
    if parameter.c_type == "real":
        return np.dtype(dtype)
    if parameter.c_type not in C_TYPES:
        raise KernelError(f"kernel parameter '{parameter}' has a C type the launcher does "
                          f"not know; add it to layers.kernel_args.C_TYPES")
    return C_TYPES[parameter.c_type]


def _describe(arg):
    if isinstance(arg, np.ndarray) or is_gpu_array(arg):
        kind = "CuPy" if is_gpu_array(arg) else "NumPy"
        return f"a {kind} {arg.dtype} array of shape {tuple(arg.shape)}"
    if isinstance(arg, np.generic):
        return f"a numpy.{arg.dtype} scalar"
    return f"a {type(arg).__name__}"


def _array_problem(arg, expected, on_gpu):
    """What is wrong with ``arg`` for a pointer parameter, or None."""
    if not (isinstance(arg, np.ndarray) or is_gpu_array(arg)):
        return f"must be an array of {expected}"
    if is_gpu_array(arg) != on_gpu:
        side = "a CuPy array (the launch runs on the GPU)" if on_gpu else \
            "a NumPy array (the launch runs on the host)"
        return f"must be {side}"
    if arg.dtype != expected:
        return f"must be an array of {expected}"
    if not arg.flags.c_contiguous:
        return "must be C-contiguous"
    return None


def _device_problem(arg, device):
    found = arg.device.id
    if found != device:
        return f"lives on GPU {found} but the launch runs on GPU {device} (the current device)"
    return None


def _scalar_problem(arg, expected):
    """What is wrong with ``arg`` for a value parameter, or None."""
    if not isinstance(arg, np.generic):
        return (f"must be a numpy scalar of the parameter's C type "
                f"(numpy.{expected}, not a Python number or an array)")
    if arg.dtype != expected:
        return f"must be a numpy.{expected} scalar"
    return None


def check_arguments(text, name, symbol, dtype, args, on_gpu, device=None):
    """Raise KernelError unless ``args`` fit entry point ``name`` (exported
    as ``symbol``) of the kernel ``text`` compiled for ``dtype`` (see the
    module docstring); ``on_gpu`` says which side the launch runs on, and
    ``device``, when given, the CUDA device every array must live on (the
    current one: a kernel never reads another GPU's memory by accident)."""
    parameters = signatures(text).get(name)
    if parameters is None:
        raise KernelError(f"{symbol}: no entry point 'KERNEL void FN({name})(...)' in the "
                          f"kernel source")
    if len(args) != len(parameters):
        raise KernelError(f"{symbol} takes {len(parameters)} arguments "
                          f"({', '.join(map(str, parameters))}), found {len(args)}")
    for i, (arg, parameter) in enumerate(zip(args, parameters)):
        expected = parameter_dtype(parameter, dtype)
        problem = (_array_problem(arg, expected, on_gpu) if parameter.pointer
                   else _scalar_problem(arg, expected))
        if problem is None and device is not None and parameter.pointer:
            problem = _device_problem(arg, device)
        if problem:
            raise KernelError(f"{symbol}: argument {i} ('{parameter}') {problem}; "
                              f"found {_describe(arg)}")
