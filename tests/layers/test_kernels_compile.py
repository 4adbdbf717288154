"""Every .cu file compiles for the GPU the way CuPy compiles it (NVRTC), for
both element types, and as host C++ through the shim."""
import numpy as np
import pytest

from layers import kernels
from tests.kernel_harness import nvrtc_compile, requires_cxx

CASES = [(f, d) for f in kernels.kernel_files() for d in ("float32", "float64")]


@pytest.mark.parametrize("source,dtype", CASES)
def test_compiles_for_gpu(source, dtype):
    text = kernels.kernel_source(source, dtype)
    assert nvrtc_compile(text, source) > 0


@requires_cxx
@pytest.mark.parametrize("source,dtype", CASES)
def test_compiles_as_host_cpp(source, dtype):
    kernels._host_library(kernels.kernel_source(source, dtype), source)


def test_kernel_source_inlines_header_and_sets_dtype():
    any_file = kernels.kernel_files()[0]
    assert '#include "common.cuh"' not in kernels.kernel_source(any_file, "float32")
    assert kernels.kernel_source(any_file, "float64").startswith("#define REAL_IS_DOUBLE")


def test_launch_rejects_untyped_scalars():
    from netdef.errors import KernelError
    x = np.zeros(4, np.float32)
    with pytest.raises(KernelError, match="numpy scalar"):
        kernels.launch("neuron.cu", "relu_forward", np.float32, 4, (np.int64(4), x, x, 0.0))
