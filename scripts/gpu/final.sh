#!/usr/bin/env bash
# GPU call: the reproduction runs (issue 5) side by side for ~9 minutes; each keeps its whole epochs.
export OMP_NUM_THREADS=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
T=${T:-530}
run() { name=$1; shift; timeout $T python3 train.py --device cuda --no-progress --out runs/$name "$@" > runs_$name.log 2>&1 & }
mkdir -p runs
run min_lrn_d10_L6_nobonus --env RoutingMIN-v0 --no-bonus
run min_lrn_d10_L6_bonus0.1 --env RoutingMIN-v0 --bonus-weight 0.1
run min_lrn_d5_L4_bonus --env RoutingMIN-v0 --duplicates 5 --max-depth 4
run min_lrn_d5_L4_nobonus --env RoutingMIN-v0 --duplicates 5 --max-depth 4 --no-bonus
run mnist_lrn_d10_L6_nobonus --env RoutingMNIST-v0 --no-bonus
run mnist_static --env RoutingMNIST-v0 --algo static
wait
for f in runs_*.log; do echo "== $f"; grep "^epoch" $f | tail -2; grep -i "error" $f | tail -2; done
tar czf "$OUT/final.tgz" runs/*/metrics.jsonl runs/*/config.json runs/*/*.png
