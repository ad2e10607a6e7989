#!/usr/bin/env bash
# GPU call: 9 trainings side by side on one card for ~9 minutes (each stops at its last whole epoch).
export OMP_NUM_THREADS=2
T=${T:-525}
run() { name=$1; shift; timeout $T python3 train.py --device cuda --no-progress --out runs/$name "$@" > runs_$name.log 2>&1 & }
mkdir -p runs
run min_lrn_default --env RoutingMIN-v0
run min_lrn_nobonus --env RoutingMIN-v0 --no-bonus
run min_lrn_mbtrans --env RoutingMIN-v0 --minibatch-unit transitions
run min_lrn_rlr1e-3 --env RoutingMIN-v0 --router-lr 1e-3
run min_lrn_rlr1e-3_nobonus_mbtrans --env RoutingMIN-v0 --router-lr 1e-3 --no-bonus --minibatch-unit transitions
run min_lrn_rlr1e-3_bonus0.1 --env RoutingMIN-v0 --router-lr 1e-3 --bonus-weight 0.1
run min_static --env RoutingMIN-v0 --algo static
run mnist_lrn_default --env RoutingMNIST-v0
run mnist_lrn_rlr1e-3_mbtrans_bonus0.1 --env RoutingMNIST-v0 --router-lr 1e-3 --minibatch-unit transitions --bonus-weight 0.1
wait
for f in runs_*.log; do echo "== $f"; grep "^epoch" $f | tail -2; grep -i "error" $f | tail -2; done
tar czf "$OUT/sweep.tgz" runs/*/metrics.jsonl runs/*/config.json runs/*/*.png
