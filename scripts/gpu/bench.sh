#!/usr/bin/env bash
# GPU call: the speed benchmark (issue 4) with the default (dense) dispatch and with compact dispatch.
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 scripts/benchmark.py --device cuda --batches 50 --warmup 5 --repeats 3 --parallel 1 2 4 8 \
  --compare-dispatch compact --out "$OUT/bench.json" --profile "$OUT/profile.txt" 2>&1 | grep -v Warning | tail -22
python3 scripts/benchmark.py --device cuda --batches 50 --warmup 5 --repeats 3 --dispatch compact \
  --out "$OUT/bench_compact.json" --profile "$OUT/profile_compact.txt" 2>&1 | grep -v Warning | tail -16
