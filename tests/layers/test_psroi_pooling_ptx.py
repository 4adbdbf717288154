"""PSROIPooling's bin geometry on the GPU equals the NumPy path's: every
product that is later floored or ceiled must be ``MUL_RN`` (mul.rn in PTX),
which ptxas never fuses into an FMA. A plain product can be fused (one
rounding where NumPy rounds twice) and then moves bin bounds for spatial
scales that are not powers of two (e.g. y1 = 2, y2 = 8, scale 1/3, k = 7: the
last bin would end at cell 4 instead of 3). Checked on NVRTC's PTX, so it
runs without a GPU.
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
    ptx = bytearray(size)  # NVRTC writes into it
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
