"""layers.kernels: compiled kernels cached per (device, file, dtype, name), so
a launch never looks its function up again; the argument check both launch
paths share (layers.kernel_args: arrays of the parameter's dtype,
C-contiguous, on the launch's side and device; scalars of the parameter's C
type; the argument count). The GPU side runs on the stand-in CuPy of
bench.standin_cupy, which builds the kernel text as host C++ and counts."""
import numpy as np
import pytest

from bench.standin_cupy import COUNTS, installed
from layers import kernel_args, kernels
from netdef.errors import KernelError
from tests.kernel_harness import requires_cxx

pytestmark = requires_cxx


@pytest.fixture
def cupy(monkeypatch):
    """The stand-in CuPy with two devices and empty kernel caches."""
    monkeypatch.setattr(kernels, "_gpu_modules", {})
    monkeypatch.setattr(kernels, "_gpu_functions", {})
    with installed(device_count=2) as module:
        COUNTS.reset()
        yield module


def relu(x, y, slope=0.0):
    kernels.launch("neuron.cu", "relu_forward", x.dtype, x.size,
                   (np.int64(x.size), x, y, x.dtype.type(slope)))


def counts():
    return COUNTS.totals()


# -- the cache ------------------------------------------------------------------------------

def test_a_kernel_is_compiled_and_looked_up_once(cupy):
    x = cupy.asarray(np.linspace(-1, 1, 9, dtype=np.float32))
    y = cupy.empty_like(x)
    for _ in range(5):
        relu(x, y)
    total = counts()
    assert (total["compile"], total["get_function"], total["launch"]) == (1, 1, 5)
    np.testing.assert_array_equal(y.get(), np.maximum(np.linspace(-1, 1, 9, dtype=np.float32), 0))


def test_the_cache_is_per_device_dtype_and_entry_point(cupy):
    x32 = cupy.asarray(np.ones(4, np.float32))
    relu(x32, cupy.empty_like(x32))
    x64 = cupy.asarray(np.ones(4, np.float64))
    relu(x64, cupy.empty_like(x64))                    # another dtype: another module
    kernels.launch("neuron.cu", "sigmoid_forward", np.float32, 4,
                   (np.int64(4), x32, cupy.empty_like(x32)))   # same module, new function
    with cupy.cuda.Device(1):
        x1 = cupy.asarray(np.ones(4, np.float32))
        relu(x1, cupy.empty_like(x1))                  # another device: compiled again
        relu(x1, cupy.empty_like(x1))
    relu(x32, cupy.empty_like(x32))                    # back on device 0: all cached
    total = counts()
    assert (total["compile"], total["get_function"], total["launch"]) == (3, 4, 6)
    assert sorted(kernels._gpu_functions) == [
        (0, "neuron.cu", "float32", "relu_forward_f32"),
        (0, "neuron.cu", "float32", "sigmoid_forward_f32"),
        (0, "neuron.cu", "float64", "relu_forward_f64"),
        (1, "neuron.cu", "float32", "relu_forward_f32")]


def test_host_functions_are_built_and_looked_up_once():
    kernels.host_function.cache_clear()
    x = np.linspace(-1, 1, 6)
    for _ in range(3):
        relu(x, np.empty_like(x))
    info = kernels.host_function.cache_info()
    assert (info.misses, info.hits) == (1, 2)


# -- the argument check, on both paths ---------------------------------------------------

def _host_arrays(dtype=np.float32):
    return np.ones(4, dtype), np.empty(4, dtype)


def _gpu_arrays(cupy, dtype=np.float32):
    return cupy.asarray(np.ones(4, dtype)), cupy.empty(4, dtype)


BAD_CALLS = [
    # (what is wrong, args builder from (x, y), message)
    ("int32 count for long long",
     lambda x, y: (np.int32(4), x, y, np.float32(0)),
     r"argument 0 \('long long n'\) must be a numpy.int64 scalar; found a numpy.int32"),
    ("Python float for real",
     lambda x, y: (np.int64(4), x, y, 0.0),
     r"argument 3 \('real negative_slope'\) must be a numpy scalar .*found a float"),
    ("float64 scalar for a float32 kernel",
     lambda x, y: (np.int64(4), x, y, np.float64(0)),
     r"must be a numpy.float32 scalar; found a numpy.float64 scalar"),
    ("strided view",
     lambda x, y: (np.int64(2), x[::2], y[:2], np.float32(0)),
     r"argument 1 \('real\* x'\) must be C-contiguous"),
    ("float64 array for real*",
     lambda x, y: (np.int64(4), x.astype(np.float64), y, np.float32(0)),
     r"argument 1 \('real\* x'\) must be an array of float32; found a \w+ float64 array"),
    ("missing argument",
     lambda x, y: (np.int64(4), x, y),
     r"relu_forward_f32 takes 4 arguments \(long long n, real\* x, real\* y, "
     r"real negative_slope\), found 3"),
    ("scalar for a pointer",
     lambda x, y: (np.int64(4), np.float32(1), y, np.float32(0)),
     r"argument 1 \('real\* x'\) must be an array of float32; found a numpy.float32 scalar"),
]


@pytest.mark.parametrize("what,make_args,message", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_host_launch_checks_the_arguments(what, make_args, message):
    with pytest.raises(KernelError, match=message):
        kernels.launch("neuron.cu", "relu_forward", np.float32, 4, make_args(*_host_arrays()))


@pytest.mark.parametrize("what,make_args,message", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_gpu_launch_checks_the_same_way(cupy, what, make_args, message):
    with pytest.raises(KernelError, match=message):
        kernels.launch("neuron.cu", "relu_forward", np.float32, 4,
                       make_args(*_gpu_arrays(cupy)))
    assert counts()["launch"] == 0 and counts()["compile"] == 0   # checked first


def test_gpu_launch_refuses_a_host_array(cupy):
    x, _ = _gpu_arrays(cupy)
    with pytest.raises(KernelError, match=r"argument 2 \('real\* y'\) must be a CuPy array "
                                          r"\(the launch runs on the GPU\); found a NumPy"):
        relu(x, np.empty(4, np.float32))


def test_gpu_launch_refuses_an_array_of_another_device(cupy):
    x, y = _gpu_arrays(cupy)
    with cupy.cuda.Device(1):
        with pytest.raises(KernelError, match=r"argument 1 \('real\* x'\) lives on GPU 0 but "
                                              r"the launch runs on GPU 1"):
            relu(x, y)


def test_integer_array_parameters_take_their_exact_dtype():
    boxes = np.zeros((3, 4), np.float32)
    mask = np.zeros((3, 1), np.int64)   # nms_mask writes unsigned long long
    with pytest.raises(KernelError, match=r"argument 4 \('unsigned long long\* mask'\) must "
                                          r"be an array of uint64; found a NumPy int64"):
        kernels.launch("nms.cu", "nms_mask", np.float32, 3,
                       (np.int64(3), np.int32(1), boxes, np.float32(0.5), mask))


def test_an_unknown_entry_point_is_named():
    x, y = _host_arrays()
    with pytest.raises(KernelError, match=r"no entry point 'KERNEL void FN\(relu_forwad\)"):
        kernels.launch("neuron.cu", "relu_forwad", np.float32, 4,
                       (np.int64(4), x, y, np.float32(0)))


# -- reading signatures -----------------------------------------------------------------------

def test_signatures_read_qualifiers_pointers_and_names():
    text = ("KERNEL void FN(k)(const long long n, const real* __restrict__ x,\n"
            "                  unsigned long long *mask, const int k) {}\n"
            "DEVICE int helper(int a) { return a; }\n")
    (name, parameters), = kernel_args.signatures(text).items()
    assert name == "k"
    assert [str(p) for p in parameters] == ["long long n", "real* x",
                                            "unsigned long long* mask", "int k"]


def test_every_entry_point_of_every_kernel_file_has_known_types():
    for source in kernels.kernel_files():
        found = kernel_args.signatures(kernels.kernel_source(source, "float32"))
        assert found, source
        for name, parameters in found.items():
            for p in parameters:
                kernel_args.parameter_dtype(p, np.float32)   # raises for an unknown type


def test_an_unknown_parameter_type_names_the_table():
    parameter = kernel_args.Parameter("h", "half", True)
    with pytest.raises(KernelError, match=r"'half\* h' has a C type the launcher does not "
                                          r"know; add it to layers.kernel_args.C_TYPES"):
        kernel_args.parameter_dtype(parameter, np.float32)
