"""The GPU probe (``python -m netdef.device_check``) and ``--gpu``'s use of
it (``solver.cli.select_device``): what it prints when CuPy, the device or
one CUDA library is missing, the install command it names, its exit status.

CuPy's absence is simulated by hiding the module; a GPU and its libraries by
the stand-in GPUs of ``tests/fake_device.py``, from which one library at a
time is taken away the way CuPy reports it missing.
"""
import subprocess
import sys

import numpy as np
import pytest

from netdef import device_check
from netdef.device_check import INSTALL_ALL, main, probe, report, require_gpu
from netdef.errors import DeviceError
from solver.cli import select_device
from tests.fake_device import fake_gpus
from tests.kernel_harness import requires_cxx

NAMES = ["CuPy importable", "a device visible", "matmul (cuBLAS)",
         "kernel compile and launch (NVRTC)", "cuRAND", "free memory"]


def by_name(checks):
    assert [c.name for c in checks] == NAMES
    return {c.name: c for c in checks}


@pytest.fixture
def no_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError


@pytest.fixture
def gpus():
    with fake_gpus(2) as fake:
        yield fake


def test_importing_netdef_and_the_probe_imports_no_cupy():
    code = ("import sys, netdef, netdef.device_check, solver.cli; "
            "assert 'cupy' not in sys.modules, 'cupy imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- CuPy missing ----------------------------------------------------------------------

def test_without_cupy_says_so_and_how_to_install_it(no_cupy, capsys):
    checks = by_name(probe(0))
    assert checks["CuPy importable"].ok is False
    assert checks["CuPy importable"].detail == "CuPy is not installed"
    assert INSTALL_ALL in checks["CuPy importable"].fix
    assert all(checks[n].ok is None and checks[n].detail == "needs CuPy" for n in NAMES[1:])
    assert main(["--gpu", "0"]) == 1
    out = capsys.readouterr().out
    assert "MISSING  CuPy importable" in out and f"fix: {INSTALL_ALL}" in out
    assert out.count("NOT RUN") == 5 and "not ready" in out


def test_the_install_command_names_the_gpu_extra_of_this_checkout():
    assert INSTALL_ALL.startswith("pip install -e ") and INSTALL_ALL.endswith("[gpu]'")


def test_select_device_runs_the_probe_and_reports_it(no_cupy):
    assert select_device(None).kind == "cpu"
    with pytest.raises(DeviceError) as error:
        select_device(3)
    message = str(error.value)
    assert message.startswith("--gpu 3: no CUDA GPU is visible to CuPy on this machine")
    assert "run on the CPU (--cpu, the default)" in message
    assert "CuPy is not installed" in message and INSTALL_ALL in message


# -- a GPU, all libraries present -------------------------------------------------------

@requires_cxx  # the stand-in runs the kernel through the host shim
def test_all_checks_pass_on_a_working_gpu(gpus, capsys):
    assert main(["--gpu", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("  OK  ") == 6 and "MISSING" not in out
    assert "GPU 1 of 2: Fake GPU 1 (compute capability 9.0)" in out
    assert "12.0 GiB free of 16.0 GiB" in out
    assert "ready: training with --gpu 1 can start" in out
    # The probe ran its work on the GPU it checked.
    assert gpus.work[1] > 0 and gpus.launches[1] == 1 and gpus.work[0] == 0


@requires_cxx
def test_select_device_makes_the_checked_gpu_current(gpus):
    device = select_device(1)
    assert (device.kind, device.index) == ("gpu", 1)
    assert gpus.cuda.runtime.getDevice() == 1


# -- the device ---------------------------------------------------------------------

def test_a_gpu_index_beyond_the_visible_ones(gpus, capsys):
    checks = by_name(probe(2))
    assert checks["a device visible"].detail == "GPU 2 requested but CuPy sees 2 device(s)"
    assert checks["a device visible"].fix == "choose --gpu between 0 and 1"
    assert all(checks[n].ok is None for n in NAMES[2:])
    assert main(["--gpu", "2"]) == 1


def test_no_driver_or_no_device(gpus, monkeypatch):
    def no_device():
        raise gpus.cuda.runtime.CUDARuntimeError(
            "cudaErrorNoDevice: no CUDA-capable device is detected")
    monkeypatch.setattr(gpus.cuda.runtime, "getDeviceCount", no_device)
    check = by_name(probe(0))["a device visible"]
    assert check.ok is False
    assert "cudaErrorNoDevice: no CUDA-capable device is detected" in check.detail
    assert "NVIDIA driver" in check.fix and "nvidia-smi" in check.fix
    with pytest.raises(DeviceError, match="--gpu 0: no CUDA GPU is visible"):
        require_gpu(0)


# -- one library missing at a time -------------------------------------------------------

def missing_cublas(*args, **kwargs):
    raise ImportError("Failure finding \"libcublas.so\": libcublas.so.12: cannot open "
                      "shared object file: No such file or directory")


class MissingNvrtc:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("CuPy failed to load libnvrtc.so.12: OSError: libnvrtc.so.12: "
                           "cannot open shared object file: No such file or directory")


class MissingCurand:
    def __getattr__(self, name):
        raise ImportError("Failure finding \"libcurand.so\": libcurand.so.10: cannot open "
                          "shared object file: No such file or directory")


def take_away(gpus, monkeypatch, library):
    if library == "cublas":
        monkeypatch.setattr(gpus, "matmul", missing_cublas, raising=False)
    elif library == "nvrtc":
        monkeypatch.setattr(gpus, "RawModule", MissingNvrtc, raising=False)
    else:
        monkeypatch.setattr(gpus.cuda, "curand", MissingCurand())


@requires_cxx
@pytest.mark.parametrize("library, name, found", [
    ("cublas", "matmul (cuBLAS)", "ImportError: Failure finding \"libcublas.so\""),
    ("nvrtc", "kernel compile and launch (NVRTC)", "RuntimeError: CuPy failed to load libnvrtc"),
    ("curand", "cuRAND", "ImportError: Failure finding \"libcurand.so\""),
])
def test_a_missing_library_is_named_with_its_install_command(gpus, monkeypatch, capsys,
                                                            library, name, found):
    take_away(gpus, monkeypatch, library)
    checks = by_name(probe(0))
    failed = [c.name for c in checks.values() if not c.ok]
    assert failed == [name]  # the other checks still run and pass
    assert checks[name].detail.startswith(found)
    command = f"pip install 'cuda-toolkit[{library}]==12.*'"
    assert checks[name].fix == f"{command} (or {INSTALL_ALL})"
    assert main(["--gpu", "0"]) == 1
    out = capsys.readouterr().out
    assert f"MISSING  {name}" in out and f"fix: {command}" in out
    with pytest.raises(DeviceError) as error:
        select_device(0)
    assert str(error.value).startswith(f"--gpu 0: GPU 0 is visible but {name} failed")
    assert command in str(error.value)


@requires_cxx
def test_an_old_cupy_is_told_to_upgrade(gpus, monkeypatch):
    monkeypatch.setattr(gpus, "__version__", "13.6.0")
    take_away(gpus, monkeypatch, "cublas")
    fix = by_name(probe(0))["matmul (cuBLAS)"].fix
    assert fix.startswith("pip install -U 'cupy-cuda12x[ctk]>=14' (CuPy 13.6.0 cannot load")


@requires_cxx
def test_wrong_numbers_from_a_library_fail_the_check(gpus, monkeypatch):
    monkeypatch.setattr(gpus, "matmul", lambda a, b: gpus.zeros((a.shape[0], b.shape[1]),
                                                                np.float32), raising=False)
    check = by_name(probe(0))["matmul (cuBLAS)"]
    assert check.ok is False
    assert check.detail == "a 6x8 by 8x5 float32 product differs from NumPy's"


# -- free memory ------------------------------------------------------------------------

@requires_cxx
def test_too_little_free_memory(gpus, monkeypatch, capsys):
    monkeypatch.setattr(gpus.cuda.runtime, "free", int(0.5 * device_check.GIB))
    check = by_name(probe(1))["free memory"]
    assert check.ok is False
    assert check.detail == "0.5 GiB free of 16.0 GiB, under the 1 GiB asked for"
    assert "nvidia-smi" in check.fix and "--gpu" in check.fix
    assert main(["--gpu", "1", "--min-free-gib", "0.25"]) == 0
    assert "0.5 GiB free of 16.0 GiB" in capsys.readouterr().out


def test_report_layout():
    checks = [device_check.Check("CuPy importable", True, "cupy 14.2.0"),
              device_check.Check("cuRAND", False, "ImportError: x", "pip install y"),
              device_check.Check("free memory", None, "needs a visible GPU")]
    assert report(checks, 3).splitlines() == [
        "GPU check for --gpu 3:",
        "  OK       CuPy importable  cupy 14.2.0",
        "  MISSING  cuRAND           ImportError: x",
        "                            fix: pip install y",
        "  NOT RUN  free memory      needs a visible GPU",
        "not ready: see the fix lines above",
    ]


# -- a real GPU -------------------------------------------------------------------------

@pytest.mark.gpu
def test_the_probe_passes_on_a_real_gpu(capsys):
    assert main(["--gpu", "0", "--min-free-gib", "0.5"]) == 0, capsys.readouterr().out
    assert select_device(0).index == 0
