#!/usr/bin/env bash
# The one script to run on a GPU machine (H100/H200, torch with CUDA already
# installed in python3, nvcc, no network). From the repo root:
#
#     bash tools/gpu_check.sh            # logs under $OUT, default ./gpu_out
#
# Stages, each logged to its own file and each run even when an earlier one
# failed (except that nothing runs without a build):
#   env        nvidia-smi, torch, nvcc
#   build      tools/build.sh with WITH_CUDA=1 (in place, sm_90 unless
#              TORCH_CUDA_ARCH_LIST says otherwise)
#   tests      the CUDA tests of tests/ (pytest -k "cuda or gpu"), among them
#              tests/test_cuda.py: every op on CUDA against the CPU op
#   bench_cuda bench/bench_cuda.py: the CUDA targets (forward and fwd+bwd vs
#              cuSPARSE on Gowalla and a long-row graph, bf16, the merge-path
#              item size, GB/s per sweep, the BPR step eager and captured in a
#              CUDA graph, its host syncs); markdown and JSON into $OUT
#   sanitizer  compute-sanitizer memcheck on the small cases of tests/test_cuda.py
#   bench      bench/bench_propagate.py --device cuda, when it exists
#   scaling    bench/bench_scaling.py --device cuda on a short grid (results in bench/results)
# Every stage has a time limit and the whole run a deadline (GPU_CHECK_BUDGET_S,
# default 360 s), so that it ends inside 6 minutes. summary.txt lists each
# stage's exit code (124: timed out; "skipped"); the script exits 1 if any
# stage failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu_out}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
PY="${PYTHON:-python3}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-360}"
START_S=$(date +%s)
export PYTHONUNBUFFERED=1
failed=0

# stage NAME LIMIT_S COMMAND...: runs COMMAND with a time limit (cut to the
# time left before the deadline), logs it to $OUT/NAME.log, records its code.
stage() {
  local name="$1" limit="$2"
  shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START_S) ))
  if [ "$left" -lt 15 ]; then
    echo "$name: skipped (deadline)" | tee -a "$SUMMARY"
    failed=1
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  echo "== $name (limit ${limit}s): $*"
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc in $(( $(date +%s) - t0 ))s" | tee -a "$SUMMARY"
  tail -n 25 "$OUT/$name.log"
  if [ "$rc" -ne 0 ]; then failed=1; fi
  return "$rc"
}

skip() {
  echo "$1: skipped ($2)" | tee -a "$SUMMARY"
}

env_info() {
  nvidia-smi || true
  "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  command -v nvcc && nvcc --version || true
  nproc
}

# tools/build.sh, the one build command, with the CUDA kernels (and the check
# that they registered).
build() {
  WITH_CUDA=1 PYTHON="$PY" MAX_JOBS="${MAX_JOBS:-16}" bash tools/build.sh
}

cuda_tests() {
  "$PY" -m pytest -q -x tests -k "cuda or gpu"
  local rc=$?
  # 5: no test matched, which is not a failure of the kernels.
  if [ "$rc" -eq 5 ]; then echo "no CUDA tests collected"; return 0; fi
  return "$rc"
}

sanitizer() {
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \
    --print-limit 20 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    -k "small or mixed_device"
}

export PY
export -f env_info build cuda_tests sanitizer

stage env 30 env_info
if stage build 200 build; then
  if [ -d tests ]; then stage tests 150 cuda_tests; else skip tests "no tests/"; fi
  stage bench_cuda 100 "$PY" -m bench.bench_cuda --results-dir "$OUT"
  if command -v compute-sanitizer >/dev/null; then
    stage sanitizer 90 sanitizer
  else
    skip sanitizer "compute-sanitizer not found"
  fi
  if [ -f bench/bench_propagate.py ]; then
    # The repo root on the path: the script imports lightgcn_ext from here.
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" stage bench 60 "$PY" bench/bench_propagate.py --device cuda
  else
    skip bench "no bench/bench_propagate.py"
  fi
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" stage scaling 120 "$PY" -m bench.bench_scaling --device cuda --sizes 1e5,1e6,1e7 --dims 64 --layer-counts 3 --min-run-time 0.05 --results-dir "$OUT/scaling"
else
  for s in tests bench_cuda sanitizer bench scaling; do skip "$s" "no build"; done
fi

echo "== summary (total $(( $(date +%s) - START_S ))s, logs in $OUT)"
cat "$SUMMARY"
exit "$failed"
