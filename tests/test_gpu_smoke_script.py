"""tools/gpu_smoke.sh without a GPU: the script parses, --dry-run lists every
step of issue 9's smoke test, and a run with a stand-in interpreter (which
only echoes its command) goes through every step, logs each and writes the
summary, reporting a failing step without stopping."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_smoke.sh"
STEPS = ("install", "probe", "gpu_tests", "train_tiny", "trunk_vs_pytorch", "train_iteration",
         "conv", "peak_memory")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def run(*args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=60)


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_dry_run_lists_every_step_and_runs_nothing(tmp_path):
    result = run("--dry-run", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert tuple(names) == STEPS
    assert "-m pytest -q -m gpu" in result.stdout
    assert "solver.train prototxt/rfcn_tiny.prototxt --gpu 0" in result.stdout
    assert not (tmp_path / "out").exists()


def test_a_run_logs_every_step_and_reports_failures(tmp_path):
    fake = tmp_path / "python"
    # Echoes its arguments; "fails" the probe, and "has" no torch.
    fake.write_text('#!/bin/sh\necho "ran: $*"\ncase "$*" in *device_check*) exit 3;; '
                    '*"import torch"*) exit 1;; esac\nexit 0\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    result = run("--no-install", "--out", str(out), env={**os.environ, "PYTHON": str(fake)})
    assert result.returncode == 1
    summary = (out / "summary.txt").read_text()
    assert "probe: FAILED (exit status 3)" in summary
    assert "trunk_vs_pytorch: skipped (needs PyTorch" in summary
    for step in ("gpu_tests", "train_tiny", "train_iteration", "conv", "peak_memory"):
        assert f"{step}: ok" in summary
        assert (out / "logs" / f"{step}.log").read_text().startswith("ran: -m ")
    assert "failed steps: probe" in result.stdout
