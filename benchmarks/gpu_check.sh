#!/usr/bin/env bash
# GPU check of the NMS extension, for a machine with an NVIDIA GPU, nvcc, and a python3 that
# already has torch (CUDA build), ninja and pytest (no internet needed; the project .venv is not
# used). Run from anywhere:  bash benchmarks/gpu_check.sh
#   1. builds libs.ops._nms_ext with the CUDA kernel (fails if CUDA was not compiled in),
#   2. runs tests/ops/test_nms.py with the CUDA cases required (NMS_REQUIRE_CUDA=1),
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
echo "built with CUDA in ${build_s}s"

echo "== tests"
t0=$SECONDS
NMS_REQUIRE_CUDA=1 NMS_TEST_NO_BUILD=1 timeout 240 "$PY" -m pytest -q -rs tests/ops/test_nms.py 2>&1 | tee "$LOG/test.log"
test_rc=${PIPESTATUS[0]}
test_s=$((SECONDS - t0))
test_line="$(grep -E '(passed|failed|error)' "$LOG/test.log" | tail -1)"
[ "$test_rc" -eq 0 ] || fail "tests (rc $test_rc): $test_line"

echo "== benchmark"
for c in 12 63; do
  timeout 150 "$PY" benchmarks/bench_nms.py --classes "$c" --backends cpp torch cuda --torch-videos 3 \
    >"$LOG/bench_$c.log" 2>&1 || { cat "$LOG/bench_$c.log"; fail "benchmark ($c classes)"; }
done

echo "== CUDA end to end: tiny demo train + eval on the GPU"
t0=$SECONDS
E2E="$LOG/e2e"
"$PY" -c "from tools.make_demo_data import generate_demo_data as g; g('$E2E/data', num_train=8, num_valid=4, num_test=2, min_duration=6, max_duration=10)" >"$LOG/e2e.log" 2>&1 \
  || { tail -20 "$LOG/e2e.log"; fail "demo data"; }
OPTS="dataset.annotation_file=$E2E/data/annotations.json dataset.modalities.0.path=$E2E/data/features/beats dataset.modalities.1.path=$E2E/data/features/umt output_folder=$E2E/ckpt model.embd_dim=64 loader.batch_size=4 opt.epochs=2 opt.warmup_epochs=1 train.eval_freq=3"
"$PY" train.py configs/demo_tsl_train.yaml --output gpu --device cuda --no-progress --opt $OPTS >>"$LOG/e2e.log" 2>&1 \
  || { tail -30 "$LOG/e2e.log"; fail "train.py on cuda"; }
"$PY" eval.py configs/demo_tsl_train.yaml "$E2E/ckpt/demo_tsl_train_gpu" --split valid --device cuda --no-progress --out "$E2E/cuda.json" --opt $OPTS >>"$LOG/e2e.log" 2>&1 \
  || { tail -30 "$LOG/e2e.log"; fail "eval.py on cuda"; }
"$PY" eval.py configs/demo_tsl_train.yaml "$E2E/ckpt/demo_tsl_train_gpu" --split valid --device cpu --no-progress --out "$E2E/cpu.json" --opt $OPTS test_cfg.nms.backend=cpp >>"$LOG/e2e.log" 2>&1 \
  || { tail -30 "$LOG/e2e.log"; fail "eval.py on cpu"; }
e2e_line="$("$PY" - "$E2E/cuda_metrics.json" "$E2E/cpu_metrics.json" <<'PYEOF'
import json, sys
a, b = (json.load(open(p))["average_map"] for p in sys.argv[1:3])
print(f"average mAP cuda {100*a:.2f} vs cpu {100*b:.2f} (|diff| {100*abs(a-b):.3f})")
sys.exit(0 if abs(a - b) < 0.01 else 1)
PYEOF
)" || { echo "$e2e_line"; fail "CUDA and CPU eval disagree"; }
e2e_s=$((SECONDS - t0))

echo
echo "================ NMS GPU check: summary ================"
echo "build: ok (CUDA) in ${build_s}s; tests: ${test_line} in ${test_s}s"
echo "train+eval on cuda: ok in ${e2e_s}s; ${e2e_line}"
for c in 12 63; do
  sed -n '/^NMS benchmark/,$p' "$LOG/bench_$c.log"
done
