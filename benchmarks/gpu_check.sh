#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU, nvcc, and a python3 that already has torch (CUDA
# build), ninja and pytest (no internet needed; the project .venv is not used). Run from anywhere:
#     bash benchmarks/gpu_check.sh
#   1. builds libs.ops._nms_ext with the CUDA kernel (fails if CUDA was not compiled in),
#   2. runs tests/ops/test_nms.py with the CUDA cases required (NMS_REQUIRE_CUDA=1),
#   3. times cpp and torch (CPU) against cuda on a full-split-sized input (12 and 63 classes),
#   4. benchmarks/bench_model.py on the TSL model: fp32 vs bf16, compile off vs on (medians),
#   5. benchmarks/gpu_e2e.py on a tiny demo: fp32 train + eval on the GPU (= CPU eval), bf16
#      training + eval --amp bf16, train.compile, and torchrun --nproc_per_node 1 eval.py (NCCL)
#      writing the single-process submission byte for byte,
#   6. prints a short summary table LAST.
# Exits non-zero if a step fails. Takes about 5-8 minutes (compilation included).
#
# Without a GPU, GPU_CHECK_DEVICE=cpu rehearses the script: steps 1-3 are skipped (the extension
# already built in place is used as it is, nothing is deleted), 4 and 5 run on the CPU (gloo).
# GPU_CHECK_COMPILE=0 skips the torch.compile parts (minutes of compilation on a small CPU).
# tests/cli/test_gpu_check_cpu.py runs  GPU_CHECK_DEVICE=cpu GPU_CHECK_COMPILE=0 GPU_CHECK_BENCH=0.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEV="${GPU_CHECK_DEVICE:-cuda}"
COMPILE="${GPU_CHECK_COMPILE:-1}"
BENCH="${GPU_CHECK_BENCH:-1}"
LOG="$(mktemp -d)"
fail() { echo "gpu_check: FAILED: $1" >&2; exit 1; }
[ "$DEV" = cuda ] || [ "$DEV" = cpu ] || fail "GPU_CHECK_DEVICE=$DEV: expected cuda or cpu"

echo "== environment (device $DEV)"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0))" \
  || fail "python3 cannot import torch"
if [ "$DEV" = cuda ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || fail "no CUDA device visible (GPU_CHECK_DEVICE=cpu rehearses the script without one)"
  command -v nvcc >/dev/null && nvcc --version | tail -1
fi

if [ "$DEV" = cuda ]; then
  # Build with the compiler family torch was built with: on the lent machines the image's
  # CXX=/opt/gcc/bin/g++ produces an extension that segfaults when a C++ check throws, while the
  # system g++ (GCC 13, as torch) works.
  if [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc; fi
  echo "== build (CUDA) with ${CXX:-c++}"
  rm -rf build libs/ops/_nms_ext*.so
  t0=$SECONDS
  if ! "$PY" setup.py build_ext --inplace >"$LOG/build.log" 2>&1; then
    tail -40 "$LOG/build.log"; fail "build"
  fi
  build_s=$((SECONDS - t0))
  "$PY" -c "import torch, libs.ops._nms_ext as e, sys; sys.exit(0 if e.with_cuda() else 1)" \
    || { tail -20 "$LOG/build.log"; fail "extension built without CUDA (is nvcc / CUDA_HOME found by torch?)"; }
  build_line="ok (CUDA) in ${build_s}s"
  echo "built with CUDA in ${build_s}s"

  echo "== NMS tests"
  t0=$SECONDS
  NMS_REQUIRE_CUDA=1 NMS_TEST_NO_BUILD=1 timeout 240 "$PY" -m pytest -q -rs tests/ops/test_nms.py 2>&1 | tee "$LOG/test.log"
  test_rc=${PIPESTATUS[0]}
  test_s=$((SECONDS - t0))
  test_line="$(grep -E '(passed|failed|error)' "$LOG/test.log" | tail -1) in ${test_s}s"
  [ "$test_rc" -eq 0 ] || fail "tests (rc $test_rc): $test_line"

  echo "== NMS benchmark"
  for c in 12 63; do
    timeout 150 "$PY" benchmarks/bench_nms.py --classes "$c" --backends cpp torch cuda --torch-videos 3 \
      >"$LOG/bench_$c.log" 2>&1 || { cat "$LOG/bench_$c.log"; fail "benchmark ($c classes)"; }
  done
else
  echo "== build, NMS tests, NMS benchmark: skipped (GPU_CHECK_DEVICE=cpu: the extension in place is used)"
  build_line="skipped (cpu rehearsal)"
  test_line="skipped (cpu rehearsal)"
fi

if [ "$BENCH" = 1 ]; then
  echo "== model benchmark: fp32 vs bf16, compile off vs on"
  compile_modes="off"; [ "$COMPILE" = 1 ] && compile_modes="off on"
  # shellcheck disable=SC2086  # compile_modes is a word list
  timeout 1200 "$PY" benchmarks/bench_model.py --device "$DEV" --configs configs/perception_tsl_multi_train.yaml \
    --amp none bf16 --compile $compile_modes --iters 10 --repeats 3 >"$LOG/bench_model.log" 2>&1 \
    || { tail -30 "$LOG/bench_model.log"; fail "model benchmark"; }
else
  echo "== model benchmark: skipped (GPU_CHECK_BENCH=0)"
fi

echo "== end to end on $DEV: fp32, bf16, compile, distributed eval (benchmarks/gpu_e2e.py)"
t0=$SECONDS
e2e_flag=""; [ "$COMPILE" = 1 ] || e2e_flag="--no-compile"
# shellcheck disable=SC2086  # an empty flag is no argument
timeout 1200 "$PY" benchmarks/gpu_e2e.py "$LOG/e2e" --device "$DEV" $e2e_flag >"$LOG/e2e.log" 2>&1
e2e_rc=$?
e2e_s=$((SECONDS - t0))
[ "$e2e_rc" -eq 0 ] || { tail -40 "$LOG/e2e.log"; fail "end to end (rc $e2e_rc)"; }

echo
echo "================ GPU check ($DEV): summary ================"
echo "build: ${build_line}; NMS tests: ${test_line}"
echo "end to end: ok in ${e2e_s}s"
grep '^check: ' "$LOG/e2e.log"
if [ "$DEV" = cuda ]; then
  for c in 12 63; do
    sed -n '/^NMS benchmark/,$p' "$LOG/bench_$c.log"
  done
fi
[ "$BENCH" = 1 ] && sed -n '/^model benchmark/,$p' "$LOG/bench_model.log"
exit 0
