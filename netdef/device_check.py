"""Is this machine ready to train on GPU N? A probe of what the GPU path uses.

    python -m netdef.device_check [--gpu N] [--min-free-gib G]

It checks, in order, and prints one line per check (OK, MISSING or NOT RUN)
with what it found and, for a missing piece, the exact install command:

1. CuPy importable           ``import cupy``
2. a device visible          GPU N among the devices CuPy sees
3. matmul (cuBLAS)           every convolution and InnerProduct is a GEMM
4. kernel compile + launch   ``layers/cuda/neuron.cu`` compiled by NVRTC and
   (NVRTC)                   run through ``layers.kernels.launch``, as layers do
5. cuRAND                    Dropout's Philox generator
6. free memory               at least ``--min-free-gib`` GiB free on GPU N

The exit status is 0 only when every check passes. ``--gpu N`` of the
training commands runs the same probe (``require_gpu``) before it builds
anything, so a missing library is named up front instead of failing as a
raw traceback in the middle of the first forward pass.

CuPy is imported inside the checks only (DESIGN.md section 5): importing
this module never needs it.
"""
import argparse
import dataclasses
import pathlib
import re
import shlex
import sys

import numpy as np

from layers import kernels
from netdef.errors import DeviceError

__all__ = ["Check", "probe", "report", "all_passed", "require_gpu", "main",
           "INSTALL_ALL"]

#: One command for everything: this checkout's ``gpu`` extra, CuPy and the
#: CUDA libraries it loads (CuPy's ``ctk`` extra), so a machine with only the
#: NVIDIA driver can train. Spelled with this checkout's path, so it can be
#: pasted in any folder.
INSTALL_ALL = "pip install -e " + shlex.quote(f"{pathlib.Path(__file__).resolve().parents[1]}[gpu]")
DRIVER_HINT = ("install the NVIDIA driver (CUDA 12 needs 525.60 or newer; `nvidia-smi` "
               "must list the GPU) and check that CUDA_VISIBLE_DEVICES does not hide it")
GIB = 1024 ** 3


@dataclasses.dataclass
class Check:
    """One probe result. ``ok`` is None when the check could not run
    because an earlier one failed; ``fix`` says what to do about a failure."""
    name: str
    ok: object
    detail: str
    fix: str = ""

    @property
    def status(self):
        return {True: "OK", False: "MISSING", None: "NOT RUN"}[self.ok]


def _describe(exc):
    """``Type: first line of the message`` (CuPy's library errors are long)."""
    lines = str(exc).strip().splitlines() or [""]
    text = lines[0] if len(lines[0]) <= 300 else lines[0][:297] + "..."
    return f"{type(exc).__name__}: {text}"


def _cuda_major(cupy):
    """The CUDA major version CuPy was built for (12 when it cannot tell)."""
    try:
        return cupy.cuda.runtime.runtimeGetVersion() // 1000
    except Exception:  # the runtime itself failing is reported by the checks
        return 12


def _library_fix(cupy, component):
    """The install command for one CUDA library, as CuPy's ``ctk`` extra
    names it (the ``cuda-toolkit`` wheel with that component)."""
    major = _cuda_major(cupy)
    command = f"pip install 'cuda-toolkit[{component}]=={major}.*'"
    version = str(getattr(cupy, "__version__", "0"))
    major_version = re.match(r"\d*", version).group()
    if int(major_version or 0) < 14:
        # CuPy before 14 does not look for the NVIDIA wheels at all.
        return (f"pip install -U 'cupy-cuda{major}x[ctk]>=14' (CuPy {version} cannot load "
                f"CUDA libraries from pip wheels), or {INSTALL_ALL}")
    return f"{command} (or {INSTALL_ALL})"


# -- the checks ------------------------------------------------------------------------

def _check_cupy():
    try:
        import cupy
    except Exception as exc:  # not installed, or its import fails: both mean no GPU path
        missing = isinstance(exc, ImportError) and getattr(exc, "name", None) == "cupy"
        detail = "CuPy is not installed" if missing else f"import cupy fails: {_describe(exc)}"
        return None, Check("CuPy importable", False, detail,
                           f"{INSTALL_ALL} (CuPy with the CUDA 12 libraries it needs)")
    return cupy, Check("CuPy importable", True, f"cupy {getattr(cupy, '__version__', '?')}")


def _check_device(cupy, gpu):
    name = "a device visible"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, an old driver, or no device
        return Check(name, False, f"CuPy sees no GPU ({_describe(exc)})", DRIVER_HINT)
    if not 0 <= gpu < count:
        fix = (f"choose --gpu between 0 and {count - 1}" if count else DRIVER_HINT)
        return Check(name, False, f"GPU {gpu} requested but CuPy sees {count} device(s)", fix)
    try:
        props = cupy.cuda.runtime.getDeviceProperties(gpu)
        label = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        label += f" (compute capability {props['major']}.{props['minor']})"
    except Exception:  # the name is a courtesy; the count already answered
        label = "name unknown"
    return Check(name, True, f"GPU {gpu} of {count}: {label}")


class WrongResult(Exception):
    """A library ran but its numbers are wrong (a broken or mismatched install)."""


def _check_matmul(cupy):
    a = np.arange(48, dtype=np.float32).reshape(6, 8) / 48
    b = np.linspace(-1, 1, 40, dtype=np.float32).reshape(8, 5)
    found = cupy.matmul(cupy.asarray(a), cupy.asarray(b)).get()
    if not np.allclose(found, a @ b, rtol=1e-4, atol=1e-5):
        raise WrongResult("a 6x8 by 8x5 float32 product differs from NumPy's")
    return "a float32 GEMM matches NumPy"


def _check_kernel(cupy):
    x = np.array([-2, -0.5, 0, 0.5, 3], dtype=np.float32)
    x_gpu = cupy.asarray(x)
    y_gpu = cupy.empty_like(x_gpu)
    kernels.launch("neuron.cu", "relu_forward", np.float32, x.size,
                   (np.int64(x.size), x_gpu, y_gpu, np.float32(0.25)))
    if not np.array_equal(y_gpu.get(), np.where(x > 0, x, x * np.float32(0.25))):
        raise WrongResult("relu_forward of layers/cuda/neuron.cu gave wrong numbers")
    return "layers/cuda/neuron.cu compiled and relu_forward ran correctly"


def _check_curand(cupy):
    # The generator Dropout uses.
    state = cupy.random.RandomState(
        1234, method=cupy.cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10)
    values = state.random_sample(size=256, dtype=np.float32).get()
    if not (values.min() >= 0 and values.max() < 1 and values.std() > 0.1):
        raise WrongResult("uniform samples are not spread over [0, 1)")
    return "Philox uniform samples look uniform"


def _run_computation(cupy, name, component, compute):
    """Run ``compute(cupy)`` (it returns what it found, or raises)."""
    try:
        return Check(name, True, compute(cupy))
    except WrongResult as exc:
        return Check(name, False, str(exc), _library_fix(cupy, component))
    except Exception as exc:  # a missing library surfaces as ImportError/RuntimeError
        return Check(name, False, _describe(exc), _library_fix(cupy, component))


def _check_memory(cupy, gpu, min_free_gib):
    name = "free memory"
    try:
        free, total = cupy.cuda.runtime.memGetInfo()
    except Exception as exc:
        return Check(name, False, _describe(exc), DRIVER_HINT)
    detail = f"{free / GIB:.1f} GiB free of {total / GIB:.1f} GiB"
    if free < min_free_gib * GIB:
        return Check(name, False, f"{detail}, under the {min_free_gib:g} GiB asked for",
                     f"free GPU {gpu} (`nvidia-smi` lists the processes holding it) "
                     "or choose another with --gpu")
    return Check(name, True, detail)


LIBRARY_CHECKS = (
    ("matmul (cuBLAS)", "cublas", _check_matmul),
    ("kernel compile and launch (NVRTC)", "nvrtc", _check_kernel),
    ("cuRAND", "curand", _check_curand),
)


def probe(gpu=0, *, min_free_gib=1.0):
    """Run every check for GPU ``gpu``; returns the list of ``Check``s."""
    cupy, first = _check_cupy()
    names = ["a device visible"] + [n for n, _, _ in LIBRARY_CHECKS] + ["free memory"]
    if cupy is None:
        return [first] + [Check(n, None, "needs CuPy") for n in names]
    device = _check_device(cupy, gpu)
    if not device.ok:
        return [first, device] + [Check(n, None, "needs a visible GPU") for n in names[1:]]
    checks = [first, device]
    with cupy.cuda.Device(gpu):
        for name, component, compute in LIBRARY_CHECKS:
            checks.append(_run_computation(cupy, name, component, compute))
        checks.append(_check_memory(cupy, gpu, min_free_gib))
    return checks


def all_passed(checks):
    return all(check.ok for check in checks)


def report(checks, gpu=0):
    """The probe's printout: one line per check, install commands under
    the failed ones, and the one command that installs everything."""
    lines = [f"GPU check for --gpu {gpu}:"]
    width = max(len(check.name) for check in checks)
    for check in checks:
        lines.append(f"  {check.status:<8} {check.name:<{width}}  {check.detail}")
        if check.ok is False and check.fix:
            lines.append(f"  {'':<8} {'':<{width}}  fix: {check.fix}")
    if all_passed(checks):
        lines.append("ready: training with --gpu %d can start" % gpu)
    else:
        lines.append("not ready: see the fix lines above")
    return "\n".join(lines)


def require_gpu(gpu, *, min_free_gib=1.0, option="--gpu"):
    """Raise DeviceError with the probe's report unless GPU ``gpu`` passes
    every check. Entry points call this before they build anything."""
    checks = probe(gpu, min_free_gib=min_free_gib)
    if all_passed(checks):
        return checks
    failed = [check for check in checks if check.ok is False]
    if failed[0].name in ("CuPy importable", "a device visible"):
        headline = "no CUDA GPU is visible to CuPy on this machine"
    else:
        headline = f"GPU {gpu} is visible but {', '.join(c.name for c in failed)} failed"
    raise DeviceError(f"{option} {gpu}: {headline}; fix what this check reports, or run on "
                      f"the CPU (--cpu, the default)\n{report(checks, gpu)}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m netdef.device_check",
        description="Check that CuPy, a GPU and the CUDA libraries the GPU path uses "
                    "(cuBLAS, NVRTC, cuRAND) work; print what is missing and how to "
                    "install it. Exit status 0 only when every check passes.")
    parser.add_argument("--gpu", type=int, default=0, metavar="N", help="GPU to check (0)")
    parser.add_argument("--min-free-gib", type=float, default=1.0, metavar="G",
                        help="free device memory to require, in GiB (1)")
    args = parser.parse_args(argv)
    checks = probe(args.gpu, min_free_gib=args.min_free_gib)
    print(report(checks, args.gpu))
    return 0 if all_passed(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
