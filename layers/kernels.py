"""Loading and launching the CUDA kernels of ``layers/cuda/*.cu``.

``launch(source, name, dtype, n, args)`` runs entry point ``name`` of
``layers/cuda/<source>`` for element type ``dtype`` over ``n`` work items.
Where it runs is decided by the arrays in ``args``:

- CuPy arrays: the file is compiled by ``cupy.RawModule`` (NVRTC), lazily,
  once per (device, file, dtype); each entry point is looked up once per
  (device, file, dtype, name) and kept, and launched in the grid-stride
  style.
- NumPy arrays: the same file is compiled as host C++ through the shim in
  ``common.cuh`` (g++), loaded with ctypes and run serially. This is how the
  test suite checks the GPU code on a machine without a GPU; the layers never
  take this path in normal use, since NumPy arrays dispatch to ``*_cpu``.

Both paths check ``args`` against the entry point's C signature first
(``layers.kernel_args.check_arguments``): arrays of the parameter's dtype,
C-contiguous, on the launch's side; scalars carrying their C type
(``numpy.int64`` for ``long long``, ``numpy.int32`` for ``int``, the array
dtype for ``real``). A mismatch raises KernelError instead of shifting
every later argument on the GPU.
"""
import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from layers.kernel_args import check_arguments
from netdef.device import is_gpu_array
from netdef.errors import KernelError

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
THREADS_PER_BLOCK = 512
MAX_BLOCKS = 65535
_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$', re.MULTILINE)


def dtype_suffix(dtype):
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return "f32"
    if dtype == np.float64:
        return "f64"
    raise KernelError(f"kernels exist for float32 and float64, not {dtype}")


@functools.lru_cache(maxsize=None)
def kernel_source(source, dtype_name):
    """Full text of ``source`` for one dtype: local headers inlined (so the
    text alone determines the compiled code, and CuPy's on-disk cache can
    never hold a kernel built from an older header) and REAL_IS_DOUBLE set
    for float64."""
    def inline(path, seen):
        text = path.read_text()

        def replace(match):
            header = path.parent / match.group(1)
            if header in seen:
                return ""
            seen.add(header)
            return inline(header, seen)
        return _INCLUDE.sub(replace, text)

    body = inline(CUDA_DIR / source, set())
    prefix = "#define REAL_IS_DOUBLE\n" if dtype_suffix(dtype_name) == "f64" else ""
    return prefix + body


def kernel_files():
    """Every kernel source file, by name."""
    return sorted(p.name for p in CUDA_DIR.glob("*.cu"))


def launch(source, name, dtype, n, args):
    """Run ``name`` (without dtype suffix) of ``source`` over ``n`` items,
    after checking ``args`` against its C signature (``layers.kernel_args``:
    the same check on both paths)."""
    n = int(n)
    if n <= 0:
        return
    dtype = np.dtype(dtype)
    symbol = f"{name}_{dtype_suffix(dtype)}"
    text = kernel_source(source, dtype.name)
    if any(is_gpu_array(a) for a in args):
        import cupy
        device = cupy.cuda.runtime.getDevice()
        check_arguments(text, name, symbol, dtype, args, on_gpu=True, device=device)
        function = gpu_function(cupy, device, source, dtype, symbol)
        blocks = min((n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK, MAX_BLOCKS)
        function((blocks,), (THREADS_PER_BLOCK,), tuple(args))
    else:
        check_arguments(text, name, symbol, dtype, args, on_gpu=False)
        run_on_host(host_function(text, source, symbol), args)


# -- GPU ------------------------------------------------------------------------

# Compiled modules by (device, source, dtype name), and their entry points by
# (device, source, dtype name, symbol): a launch after the first of each
# kernel on each device costs one dictionary look-up, no get_function.
_gpu_modules = {}
_gpu_functions = {}


def gpu_function(cupy, device, source, dtype, symbol):
    """Entry point ``symbol`` of ``source`` for ``dtype`` on CUDA device
    ``device`` (the current one), compiled and looked up once."""
    key = (device, source, dtype.name, symbol)
    function = _gpu_functions.get(key)
    if function is None:
        function = _gpu_module(cupy, device, source, dtype).get_function(symbol)
        _gpu_functions[key] = function
    return function


def _gpu_module(cupy, device, source, dtype):
    key = (device, source, dtype.name)
    module = _gpu_modules.get(key)
    if module is None:
        try:
            module = cupy.RawModule(code=kernel_source(source, dtype.name))
            module.compile()
        except cupy.cuda.compiler.CompileException as exc:
            raise KernelError(f"layers/cuda/{source} does not compile: {exc}") from exc
        _gpu_modules[key] = module
    return module


# -- host shim --------------------------------------------------------------------

def host_compiler():
    """Path of the C++ compiler the shim uses, or None."""
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


_C_TYPES = {
    np.dtype(np.float32): ctypes.c_float,
    np.dtype(np.float64): ctypes.c_double,
    np.dtype(np.int32): ctypes.c_int,
    np.dtype(np.uint32): ctypes.c_uint,
    np.dtype(np.int64): ctypes.c_longlong,
    np.dtype(np.uint64): ctypes.c_ulonglong,
    np.dtype(np.int8): ctypes.c_byte,
    np.dtype(np.uint8): ctypes.c_ubyte,
    np.dtype(np.bool_): ctypes.c_bool,
}


@functools.lru_cache(maxsize=None)
def _host_library(text, source):
    compiler = host_compiler()
    if compiler is None:
        raise KernelError("no C++ compiler found to build the host shim")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    build_dir = Path(tempfile.gettempdir()) / f"netdef-host-kernels-{os.getuid()}"
    build_dir.mkdir(exist_ok=True)
    library = build_dir / f"{Path(source).stem}-{digest}.so"
    if not library.exists():
        src = build_dir / f"{Path(source).stem}-{digest}.cpp"
        src.write_text(text)
        tmp = library.with_suffix(f".{os.getpid()}.tmp")
        result = subprocess.run(
            [compiler, "-O2", "-shared", "-fPIC", "-std=c++14", "-x", "c++",
             str(src), "-o", str(tmp)], capture_output=True, text=True)
        if result.returncode != 0:
            raise KernelError(
                f"layers/cuda/{source} does not compile as host C++:\n{result.stderr}")
        os.replace(tmp, library)
    return ctypes.CDLL(str(library))


@functools.lru_cache(maxsize=None)
def host_function(text, source, symbol):
    """Entry point ``symbol`` of the kernel ``text`` built as host C++
    (``source`` names the build); built and looked up once."""
    function = getattr(_host_library(text, source), symbol)
    function.restype = None
    return function


def run_on_host(function, args):
    """Call a ``host_function`` with checked arguments (``check_arguments``):
    arrays by their data pointer, scalars as their C type."""
    function(*(ctypes.c_void_p(a.ctypes.data) if isinstance(a, np.ndarray)
               else _C_TYPES[a.dtype](a.item()) for a in args))
