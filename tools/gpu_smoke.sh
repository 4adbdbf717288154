#!/usr/bin/env bash
# The GPU smoke test (issue 9, item 6): on a machine with one CUDA GPU and the
# NVIDIA driver, from the repository root,
#
#     bash tools/gpu_smoke.sh [--dry-run] [--no-install] [--out DIR]
#
# 1. installs the engine with its test and gpu extras (CuPy and the CUDA
#    libraries it loads, as NVIDIA's wheels);
# 2. probes the device (matmul, kernel compile and launch, cuRAND, memory);
# 3. runs the gpu-marked tests (pytest -m gpu);
# 4. trains the tiny R-FCN for its full schedule with --gpu 0 (evaluation at
#    the end) and reports its mAP and wall time;
# 5. runs the GPU benchmarks: bench.trunk_vs_pytorch (where PyTorch is
#    installed: the bench extra), bench.train_iteration, bench.conv and
#    bench.peak_memory (the R-FCN ResNet-101 iteration's peak device memory).
#
# Each step runs under its own time limit (seconds, below; together under 10
# minutes) and writes DIR/logs/<step>.log; a failed or timed-out step is
# reported and the next one runs. The figures are gathered in DIR/summary.txt
# (default DIR: out/gpu_smoke). --dry-run prints the steps and runs nothing;
# --no-install skips step 1 (an environment already set up). PYTHON selects
# the interpreter (default: python).
set -u

DRY_RUN=0
INSTALL=1
OUT=out/gpu_smoke
PYTHON=${PYTHON:-python}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --no-install) INSTALL=0 ;;
    --out) shift; OUT=${1:?--out needs a folder} ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
               exit 0 ;;
    *) echo "gpu_smoke.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

LOGS="$OUT/logs"
SUMMARY="$OUT/summary.txt"
FAILED=()

# step NAME LIMIT COMMAND...: run COMMAND with a time limit, log and time it.
step() {
  local name=$1 limit=$2
  shift 2
  if [ "$DRY_RUN" = 1 ]; then
    printf '%-16s (limit %4ss)  %s\n' "$name" "$limit" "$*"
    return 0
  fi
  local start status elapsed
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  status=$?
  elapsed=$(( $(date +%s) - start ))
  if [ $status -eq 0 ]; then
    echo "$name: ok in ${elapsed}s" | tee -a "$SUMMARY"
  else
    [ $status -eq 124 ] && why="timed out after ${limit}s" || why="exit status $status"
    echo "$name: FAILED ($why) in ${elapsed}s; see $LOGS/$name.log" | tee -a "$SUMMARY"
    tail -n 15 "$LOGS/$name.log"
    FAILED+=("$name")
  fi
  return 0
}

# figures NAME PATTERN: copy the matching lines of a step's log to the summary.
figures() {
  [ "$DRY_RUN" = 1 ] && return 0
  [ -f "$LOGS/$1.log" ] || return 0
  grep -E "$2" "$LOGS/$1.log" | sed "s/^/  $1: /" | tee -a "$SUMMARY"
}

if [ "$DRY_RUN" = 0 ]; then
  mkdir -p "$LOGS"
  : >"$SUMMARY"
  { echo "GPU smoke test, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  } | tee -a "$SUMMARY"
fi

[ "$INSTALL" = 1 ] && step install 120 "$PYTHON" -m pip install -q -e '.[test,gpu]'
step probe 30 "$PYTHON" -m netdef.device_check --gpu 0
step gpu_tests 110 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests
figures gpu_tests '(passed|failed|error)'
step train_tiny 190 "$PYTHON" -m solver.train prototxt/rfcn_tiny.prototxt --gpu 0 \
  --out "$OUT/rfcn_tiny"
figures train_tiny '(mAP|ready in|finished|done)'
if [ "$DRY_RUN" = 0 ] && [ -f "$OUT/rfcn_tiny/eval_iter_4000.json" ]; then
  "$PYTHON" -c "import json, sys; r = json.load(open(sys.argv[1])); \
print(f\"  train_tiny: mAP (VOC07) {r['map_07']:.4f} at iteration 4000\")" \
    "$OUT/rfcn_tiny/eval_iter_4000.json" | tee -a "$SUMMARY"
fi
if [ "$DRY_RUN" = 1 ] || "$PYTHON" -c "import torch" 2>/dev/null; then
  step trunk_vs_pytorch 40 "$PYTHON" -m bench.trunk_vs_pytorch --gpu
  figures trunk_vs_pytorch '.'
else
  echo "trunk_vs_pytorch: skipped (needs PyTorch: pip install -e '.[bench]')" | tee -a "$SUMMARY"
fi
step train_iteration 45 "$PYTHON" -m bench.train_iteration --gpu
figures train_iteration '.'
step conv 35 "$PYTHON" -m bench.conv --gpu --skip-net
figures conv '(total|ratio|ResNet|x )'
step peak_memory 25 "$PYTHON" -m bench.peak_memory iteration --gpu
figures peak_memory '.'

[ "$DRY_RUN" = 1 ] && exit 0
if [ ${#FAILED[@]} -eq 0 ]; then
  echo "all steps passed; figures in $SUMMARY"
  exit 0
fi
echo "failed steps: ${FAILED[*]}; figures in $SUMMARY, logs in $LOGS"
exit 1
