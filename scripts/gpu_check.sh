#!/usr/bin/env bash
# The GPU path in one call: on a machine with CUDA, the CUDA-only tests, then the base-size figures: the alignment
# against the plain forward passes (bench/bench_merge.py), a slider release of the full-size stand-ins to its first
# answer and to its full suite on a new pair and after a restart (bench/bench_app_fullsize.py), and the GPU's and the
# server's host memory. Each step has its own time limit: under 8 minutes in all.
# Without CUDA it says so and exits 0: there is nothing to check.
#
#     bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device here: the GPU checks are skipped"
  exit 0
fi
started=$(date +%s)
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, note a failure, go on
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit} s; $(( $(date +%s) - started )) s in)"
  timeout "$limit" "$@" || { echo "gpu_check: $name failed or ran out of time ($?)"; status=1; }
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
memory_log=$(mktemp)
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$memory_log" &
sampler=$!
trap 'kill $sampler 2>/dev/null; rm -f "$memory_log"' EXIT

cuda_tests=$(grep -l "cuda.is_available" tests/test_*.py | tr '\n' ' ')
if [ -n "$cuda_tests" ]; then
  step "CUDA-only tests ($cuda_tests)" 90 "$PYTHON" -m pytest -q -p no:cacheprovider -k cuda $cuda_tests
else
  echo "gpu_check: no test file checks for CUDA"; status=1
fi
step "alignment against the forward passes, base size" 100 \
  "$PYTHON" bench/bench_merge.py --skip-merge --device cuda
step "a slider release, full-size stand-ins, new pair and after a restart" 270 \
  env MERGE_LAB_DEVICE=cuda "$PYTHON" bench/bench_app_fullsize.py --releases 0 --full --idle-limit 20

kill $sampler 2>/dev/null
echo "== memory: GPU at most $(sort -n "$memory_log" | tail -1) MiB used (sampled every 0.5 s);" \
  "host $(free -m | awk '/^Mem:/ {print $3}') MiB used now (the server's resident size is printed above)"
echo "gpu_check: $(( $(date +%s) - started )) s in all; $([ $status = 0 ] && echo 'every step passed' || echo 'a step failed')"
exit $status
