"""Review finding: PSROIPooling's GPU bin bounds can differ from the NumPy
path because two products in ``psroi_bin`` (layers/cuda/psroi_pooling.cu)
are left contractible.

``first = round(low) * scale`` and ``last = (round(high) + 1) * scale`` are
plain products; NVRTC emits them as ``mul.f32`` / ``mul.f64`` without a
rounding modifier, and they feed ``last - first`` and
``MUL_RN(p, bin) + first``. The PTX ISA lets ptxas fuse such mul/add pairs
into one FMA (one rounding where NumPy rounds twice), which moves bin bounds
for spatial scales that are not powers of two (with 1/16 the products are
exact). Compiled for sm_90 with NVRTC, the kernel has 2 more FFMA and 2 fewer
FMUL/FADD than the same file with those two products written ``MUL_RN``: ptxas
does fuse them. Emulating that fusion, e.g. y1 = 2, y2 = 8, scale 1/3, k = 7:
the last bin ends at cell 4 instead of 3 (about 6 % of RoIs at scale 1/3).

The GPU parity test uses scale 1/8, where nothing can differ, so it cannot
catch this. Fix: ``MUL_RN`` for both products, as roi_align.cu does.
"""
import re

import pytest

from layers import kernels
from tests.kernel_harness import GPU_ARCH, _nvrtc


def _ptx(source, dtype):
    nvrtc = _nvrtc()
    if nvrtc is None:
        pytest.skip("NVRTC (cuda-bindings) is not installed")
    text = kernels.kernel_source(source, dtype)
    _, program = nvrtc.nvrtcCreateProgram(text.encode(), source.encode(), 0, [], [])
    (result,) = nvrtc.nvrtcCompileProgram(program, 1, [f"--gpu-architecture={GPU_ARCH}".encode()])
    assert result == nvrtc.nvrtcResult.NVRTC_SUCCESS
    _, size = nvrtc.nvrtcGetPTXSize(program)
    ptx = b" " * size
    nvrtc.nvrtcGetPTX(program, ptx)
    nvrtc.nvrtcDestroyProgram(program)
    return ptx.decode(errors="replace")


def _entry(ptx, name):
    start = ptx.index(f".entry {name}")
    end = ptx.find(".entry", start + 1)
    return ptx[start:end if end > 0 else None]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel", ["psroi_pool_forward", "psroi_pool_backward"])
def test_psroi_bin_geometry_has_no_contractible_products(kernel, dtype):
    suffix = "f32" if dtype == "float32" else "f64"
    body = _entry(_ptx("psroi_pooling.cu", dtype), f"{kernel}_{suffix}")
    # Every floating product in these kernels is bin geometry that is later
    # floored or ceiled: each must be mul.rn (MUL_RN), which ptxas never fuses.
    plain = re.findall(r"^\s*mul\.f(?:32|64)\s.*$", body, flags=re.MULTILINE)
    assert not plain, (f"{kernel}_{suffix}: un-rounded products that ptxas may fuse "
                       f"into an FMA: {plain}")
