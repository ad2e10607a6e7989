#!/usr/bin/env bash
# GPU calls (issue 5): LRN with the router's per-task prior (--task-prior) across bonus weights, the
# duplicates x depth grid and the d5 L4 bonus ablation; run again on the same warm machine to resume.
export OMP_NUM_THREADS=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
T=${T:-540}
P=${P:-grid}
run() {
  name=$1; shift
  resume=""; [ -d runs/$name/checkpoint ] && resume="--resume"
  timeout $T python3 train.py --device cuda --no-progress --out runs/$name $resume "$@" >> runs_$(echo $name | tr / _).log 2>&1 &
}
mkdir -p runs
run min/$P-lrn_d10_L6_p3_bonus0.3 --env RoutingMIN-v0 --task-prior 3 --bonus-weight 0.3
run min/$P-lrn_d5_L4_p3_bonus0.1 --env RoutingMIN-v0 --task-prior 3 --bonus-weight 0.1 --duplicates 5 --max-depth 4
run min/$P-lrn_d5_L4_p3_nobonus --env RoutingMIN-v0 --task-prior 3 --no-bonus --duplicates 5 --max-depth 4
run min/$P-lrn_d5_L6_p3_bonus0.1 --env RoutingMIN-v0 --task-prior 3 --bonus-weight 0.1 --duplicates 5
run min/$P-lrn_d1_L6_p3_bonus0.1 --env RoutingMIN-v0 --task-prior 3 --bonus-weight 0.1 --duplicates 1
run mnist/$P-lrn_d10_L6_p3_bonus0.1 --env RoutingMNIST-v0 --task-prior 3 --bonus-weight 0.1
run mnist/$P-lrn_d5_L4_p3_bonus0.1 --env RoutingMNIST-v0 --task-prior 3 --bonus-weight 0.1 --duplicates 5 --max-depth 4
run mnist/$P-lrn_d5_L4_p3_nobonus --env RoutingMNIST-v0 --task-prior 3 --no-bonus --duplicates 5 --max-depth 4
wait
df -h . | tail -1
for f in runs_*.log; do echo "== $f"; grep "^epoch\|^resumed" $f | tail -2; grep -i "error" $f | tail -2; done
tar czf "$OUT/$P.tgz" runs/*/*/metrics.jsonl runs/*/*/config.json runs/*/*/*.png
