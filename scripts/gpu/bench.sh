#!/usr/bin/env bash
# GPU call: the speed benchmark (issue 4) and a one-epoch smoke run. Results land in $OUT.
set -x
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 scripts/benchmark.py --device cuda --batches 50 --warmup 5 --repeats 3 --parallel 1 2 4 8 \
  --out "$OUT/bench.json" --profile "$OUT/profile.txt" 2>&1 | grep -v Warning | tail -30
python3 train.py --env RoutingMNIST-v0 --epochs 1 --limit-train 25600 --device cuda --out /tmp/run_mnist \
  --no-progress 2>&1 | grep "epoch 0"
cp /tmp/run_mnist/metrics.jsonl "$OUT/smoke_metrics.jsonl"
