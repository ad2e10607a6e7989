#!/usr/bin/env bash
# GPU call: the original routing network (issue 6) and more LRN runs (issue 5), side by side for ~8 min.
export OMP_NUM_THREADS=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
T=${T:-500}
gpu_gb=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
run() { name=$1; shift; timeout $T python3 train.py --device cuda --no-progress --no-checkpoint --out runs/$name "$@" > runs_$(echo $name | tr / _).log 2>&1 & }
mkdir -p runs
run min/rn_wpl --env RoutingMIN-v0 --algo routing_network
run mnist/rn_wpl --env RoutingMNIST-v0 --algo routing_network
run min/lrn_d10_L6_bonus_warmup5 --env RoutingMIN-v0 --bonus-warmup 5
run mnist/lrn_d5_L4_nobonus --env RoutingMNIST-v0 --duplicates 5 --max-depth 4 --no-bonus
run mnist/lrn_d5_L4_bonus --env RoutingMNIST-v0 --duplicates 5 --max-depth 4
if [ "$gpu_gb" -gt 100000 ]; then run min/lrn_d10_L6_nobonus_s2 --env RoutingMIN-v0 --no-bonus --seed 2; fi
wait
for f in runs_*.log; do echo "== $f"; grep "^epoch" $f | tail -1; grep -i "error" $f | tail -1; done
tar czf "$OUT/final2.tgz" runs/*/*/metrics.jsonl runs/*/*/config.json runs/*/*/*.png
