#!/usr/bin/env bash
# GPU call: the speed benchmark (issue 4), then short LRN / static runs side by side. Results land in $OUT.
set -x
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 scripts/benchmark.py --device cuda --batches 50 --warmup 5 --repeats 3 --parallel 1 2 4 8 \
  --out "$OUT/bench.json" --profile "$OUT/profile.txt" 2>&1 | grep -v Warning | tail -22
common="--device cuda --no-progress --epochs 3"
python3 train.py --env RoutingMNIST-v0 --algo static --limit-train 25600 --out runs/s_static $common > runs_s_static.log 2>&1 &
python3 train.py --env RoutingMNIST-v0 --limit-train 25600 --out runs/s_lrn $common > runs_s_lrn.log 2>&1 &
python3 train.py --env RoutingMIN-v0 --out runs/s_min $common > runs_s_min.log 2>&1 &
python3 train.py --env RoutingMIN-v0 --algo static --out runs/s_min_static $common > runs_s_min_static.log 2>&1 &
wait
grep -h "epoch\|Error\|error" runs_s_*.log | grep -v '"' | tail -30
tar czf "$OUT/smoke_runs.tgz" runs/*/metrics.jsonl runs/*/config.json
