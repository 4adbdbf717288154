"""Helpers for testing layers' GPU code with and without a GPU.

- ``run_gpu_path_on_host``: runs a layer's ``forward_gpu`` / ``backward_gpu``
  with NumPy arrays, so every ``layers.kernels.launch`` executes the host-C++
  build of the same ``.cu`` file (DESIGN.md section 5), and compares the
  results with ``forward_cpu`` / ``backward_cpu``.
- ``compare_devices``: the same comparison between a CPU layer and a real GPU
  layer (tests using it are marked ``gpu``).
- ``nvrtc_compile``: compiles kernel text the way CuPy does at run time.
"""
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from layers import kernels
from netdef.device import CPU, Device, to_numpy
from netdef.gradcheck import build_layer, setup_layer

requires_cxx = pytest.mark.skipif(kernels.host_compiler() is None,
                                  reason="no C++ compiler on this machine for the host shim")


def _run(layer, bottoms, tops, top_diffs, forward, backward, propagate):
    forward(bottoms, tops)
    for t, d in zip(tops, top_diffs):
        if d is not None:
            t.diff[...] = layer.device.xp.asarray(d)
    for b in bottoms:
        b.diff[...] = 0
    for p in layer.blobs:
        p.diff[...] = 0
    if backward is not None:
        backward(tops, propagate, bottoms)
    return ([to_numpy(t.data).copy() for t in tops],
            [to_numpy(b.diff).copy() for b in bottoms],
            [to_numpy(p.diff).copy() for p in layer.blobs])


def _compare(name, expected, found, rtol, atol):
    for kind, exp_list, got_list in zip(("top data", "bottom diff", "param diff"), expected, found):
        for i, (e, g) in enumerate(zip(exp_list, got_list)):
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol,
                                       err_msg=f"{name}: {kind} {i} differs")


def _top_diffs(tops, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(t.shape) for t in tops]


def run_gpu_path_on_host(spec, bottom_arrays, *, dtype=np.float32, phase="TRAIN",
                         backward=True, propagate=None, num_tops=None,
                         rtol=1e-5, atol=1e-6, seed=0, top_diffs=None):
    """Host-run the layer's GPU path and assert it equals the NumPy path."""
    results = []
    for which in ("cpu", "gpu"):
        layer = build_layer(spec, phase=phase, dtype=dtype, seed=seed)
        arrays = [np.array(a, dtype=dtype) if np.asarray(a).dtype.kind == "f" else np.array(a)
                  for a in bottom_arrays]
        bottoms, tops = setup_layer(layer, arrays, num_tops)
        diffs = top_diffs if top_diffs is not None else _top_diffs(tops, seed)
        diffs = [None if d is None else np.asarray(d, dtype=dtype) for d in diffs]
        prop = propagate if propagate is not None else [a.dtype.kind == "f" for a in arrays]
        fwd = layer.forward_cpu if which == "cpu" else layer.forward_gpu
        bwd = (layer.backward_cpu if which == "cpu" else layer.backward_gpu) if backward else None
        results.append(_run(layer, bottoms, tops, diffs, fwd, bwd, prop))
    _compare("host-run CUDA kernel vs NumPy", results[0], results[1], rtol, atol)
    return results


def compare_devices(spec, bottom_arrays, *, dtype=np.float32, phase="TRAIN", backward=True,
                    propagate=None, num_tops=None, rtol=1e-4, atol=1e-5, seed=0, top_diffs=None):
    """Run the layer on the CPU and on GPU 0 and assert equal results."""
    results = []
    for device in (CPU, Device("gpu", 0)):
        layer = build_layer(spec, phase=phase, device=device, dtype=dtype, seed=seed)
        arrays = [np.array(a, dtype=dtype) if np.asarray(a).dtype.kind == "f" else np.array(a)
                  for a in bottom_arrays]
        bottoms, tops = setup_layer(layer, arrays, num_tops)
        diffs = top_diffs if top_diffs is not None else _top_diffs(tops, seed)
        prop = propagate if propagate is not None else [a.dtype.kind == "f" for a in arrays]
        results.append(_run(layer, bottoms, tops, diffs, layer.forward,
                            layer.backward if backward else None, prop))
    _compare("GPU vs CPU", results[0], results[1], rtol, atol)
    return results


# -- compiling for the GPU without a GPU ------------------------------------------

GPU_ARCH = "compute_90"  # Hopper; any arch CuPy could target would do


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
        nvrtc.nvrtcVersion()
        return nvrtc
    except Exception:  # cuda-bindings or the NVRTC library missing
        return None


def nvrtc_compile(text, filename):
    """Compile ``text`` for the GPU as CuPy's RawModule does (NVRTC), or
    with nvcc when NVRTC is not installed. Returns the PTX size in bytes;
    raises AssertionError with the compiler log on failure; skips when
    neither compiler exists on this machine."""
    nvrtc = _nvrtc()
    if nvrtc is not None:
        err, program = nvrtc.nvrtcCreateProgram(text.encode(), filename.encode(), 0, [], [])
        assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
        (result,) = nvrtc.nvrtcCompileProgram(program, 1, [f"--gpu-architecture={GPU_ARCH}".encode()])
        _, size = nvrtc.nvrtcGetProgramLogSize(program)
        log = bytearray(size)  # NVRTC writes into it (never into an immutable, possibly shared, bytes)
        nvrtc.nvrtcGetProgramLog(program, log)
        assert result == nvrtc.nvrtcResult.NVRTC_SUCCESS, \
            f"NVRTC failed on {filename}:\n{log.decode(errors='replace')}"
        _, ptx_size = nvrtc.nvrtcGetPTXSize(program)
        nvrtc.nvrtcDestroyProgram(program)
        return ptx_size
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("neither NVRTC (pip: cuda-bindings, nvidia-cuda-nvrtc-cu12) "
                    "nor nvcc is installed on this machine")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / filename
        src.write_text(text)
        out = Path(tmp) / "out.ptx"
        result = subprocess.run([nvcc, "--ptx", f"-arch={GPU_ARCH}", "-x", "cu",
                                 str(src), "-o", str(out)], capture_output=True, text=True)
        assert result.returncode == 0, f"nvcc failed on {filename}:\n{result.stderr}"
        return out.stat().st_size
