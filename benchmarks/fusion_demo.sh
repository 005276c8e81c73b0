#!/usr/bin/env bash
# Result fusion on the demo (issue "Interoperability", part 3): two demo TSL models trained with
# different seeds, each evaluated on valid with --save-raw, then fused by candidate pooling
# (one soft-NMS) and by 1-D Weighted Box Fusion. Prints each model's and each fusion's mAP.
#   bash benchmarks/fusion_demo.sh        (needs the demo data: make demo-data; ~2 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=ckpt/fusion_demo
rm -rf "$OUT" ckpt/demo_tsl_train_fusion_seed1 ckpt/demo_tsl_train_fusion_seed2
mkdir -p "$OUT"
for seed in 1 2; do
  $PY train.py configs/demo_tsl_train.yaml --output fusion_seed$seed --device cpu --no-progress \
      --opt seed=$seed train.eval_freq=0 2>>"$OUT/log.txt"
  $PY eval.py configs/demo_tsl_valid.yaml ckpt/demo_tsl_train_fusion_seed$seed --device cpu \
      --no-progress --out "$OUT/seed$seed.json" --save-raw "$OUT/raw_seed$seed" \
      2>>"$OUT/log.txt" | tail -1 | sed "s/^/seed $seed: /"
done
for mode in pool wbf; do
  $PY tools/fuse_results.py "$OUT/raw_seed1" "$OUT/raw_seed2" --mode $mode --out "$OUT/fused_$mode.json" \
      --annotations data/demo/annotations.json --split valid 2>>"$OUT/log.txt" \
      | grep -E "^Average mAP" | tail -1 | sed "s/^/fusion $mode: /"
done
