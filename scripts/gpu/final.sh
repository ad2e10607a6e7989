#!/usr/bin/env bash
# GPU call: the reproduction runs (issue 5) side by side for ~9 minutes; each keeps its whole epochs.
# No checkpoints (a MIN-MTL one is ~7 GB and 64 GB of disk fill up): metrics are written every epoch.
export OMP_NUM_THREADS=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
T=${T:-520}
gpu_gb=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
run() { name=$1; shift; timeout $T python3 train.py --device cuda --no-progress --no-checkpoint --out runs/$name "$@" > runs_$(echo $name | tr / _).log 2>&1 & }
mkdir -p runs
run min/lrn_d10_L6_nobonus_s1 --env RoutingMIN-v0 --no-bonus --seed 1
run min/lrn_d5_L4_nobonus --env RoutingMIN-v0 --duplicates 5 --max-depth 4 --no-bonus
run min/lrn_d5_L4_bonus --env RoutingMIN-v0 --duplicates 5 --max-depth 4
run min/lrn_d5_L6_nobonus --env RoutingMIN-v0 --duplicates 5 --max-depth 6 --no-bonus
run min/lrn_d1_L4_nobonus --env RoutingMIN-v0 --duplicates 1 --max-depth 4 --no-bonus
run min/lrn_d1_L6_nobonus --env RoutingMIN-v0 --duplicates 1 --max-depth 6 --no-bonus
run mnist/static --env RoutingMNIST-v0 --algo static
run mnist/lrn_d10_L6_nobonus --env RoutingMNIST-v0 --no-bonus
if [ "$gpu_gb" -gt 100000 ]; then run min/lrn_d10_L4_nobonus --env RoutingMIN-v0 --duplicates 10 --max-depth 4 --no-bonus; fi
wait
for f in runs_*.log; do echo "== $f"; grep "^epoch" $f | tail -1; grep -i "error" $f | tail -1; done
tar czf "$OUT/final.tgz" runs/*/*/metrics.jsonl runs/*/*/config.json runs/*/*/*.png
