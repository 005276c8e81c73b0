#!/usr/bin/env bash
# GPU check of the NMS extension, for a machine with an NVIDIA GPU, nvcc, and a python3 that
# already has torch (CUDA build), ninja and pytest (no internet needed; the project .venv is not
# used). Run from anywhere:  bash benchmarks/gpu_check.sh
#   1. builds libs.utils._nms_ext with the CUDA kernel (fails if CUDA was not compiled in),
#   2. runs tests/test_nms.py with the CUDA cases required (NMS_REQUIRE_CUDA=1),
#   3. times cpp and torch (CPU) against cuda on a full-split-sized input (12 and 63 classes),
#   4. prints a short summary table LAST.
# Exits non-zero if the build or the tests fail. Takes about 2-4 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
LOG="$(mktemp -d)"
fail() { echo "gpu_check: FAILED: $1" >&2; exit 1; }

echo "== environment"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0))" \
  || fail "python3 cannot import torch"
command -v nvcc >/dev/null && nvcc --version | tail -1

echo "== build (CUDA)"
rm -rf build libs/utils/_nms_ext*.so
t0=$SECONDS
if ! "$PY" setup.py build_ext --inplace >"$LOG/build.log" 2>&1; then
  tail -40 "$LOG/build.log"; fail "build"
fi
build_s=$((SECONDS - t0))
"$PY" -c "import libs.utils._nms_ext as e, sys; sys.exit(0 if e.with_cuda() else 1)" \
  || { tail -20 "$LOG/build.log"; fail "extension built without CUDA (is nvcc / CUDA_HOME found by torch?)"; }
echo "built with CUDA in ${build_s}s"

echo "== tests"
t0=$SECONDS
NMS_REQUIRE_CUDA=1 NMS_TEST_NO_BUILD=1 timeout 240 "$PY" -m pytest -q -rs tests/test_nms.py 2>&1 | tee "$LOG/test.log"
test_rc=${PIPESTATUS[0]}
test_s=$((SECONDS - t0))
test_line="$(grep -E '(passed|failed|error)' "$LOG/test.log" | tail -1)"
[ "$test_rc" -eq 0 ] || fail "tests (rc $test_rc): $test_line"

echo "== benchmark"
for c in 12 63; do
  timeout 150 "$PY" benchmarks/bench_nms.py --classes "$c" --backends cpp torch cuda --torch-videos 3 \
    >"$LOG/bench_$c.log" 2>&1 || { cat "$LOG/bench_$c.log"; fail "benchmark ($c classes)"; }
done

echo
echo "================ NMS GPU check: summary ================"
echo "build: ok (CUDA) in ${build_s}s; tests: ${test_line} in ${test_s}s"
for c in 12 63; do
  sed -n '/^NMS benchmark/,$p' "$LOG/bench_$c.log"
done
