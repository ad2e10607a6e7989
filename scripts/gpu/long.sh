#!/usr/bin/env bash
# GPU calls (issue 5): the best LRN setting (--task-prior 3, bonus 0.1) over several seeds, continued
# across calls from checkpoints: run this again on the same warm machine and each run resumes.
export OMP_NUM_THREADS=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
T=${T:-540}
P=${P:-long}
run() {
  name=$1; shift
  resume=""; [ -d runs/$name/checkpoint ] && resume="--resume"
  timeout $T python3 train.py --device cuda --no-progress --out runs/$name $resume "$@" >> runs_$(echo $name | tr / _).log 2>&1 &
}
mkdir -p runs
for s in 0 1 2; do run min/$P-lrn_d10_L6_p3_bonus0.1_s$s --env RoutingMIN-v0 --task-prior 3 --bonus-weight 0.1 --seed $s; done
run mnist/$P-lrn_d10_L6_p3_nobonus --env RoutingMNIST-v0 --task-prior 3 --no-bonus
run mnist/$P-lrn_d10_L6_p3_bonus0.1 --env RoutingMNIST-v0 --task-prior 3 --bonus-weight 0.1
wait
df -h . | tail -1
for f in runs_*.log; do echo "== $f"; grep "^epoch\|^resumed" $f | tail -3; grep -i "error" $f | tail -2; done
tar czf "$OUT/$P.tgz" runs/*/*/metrics.jsonl runs/*/*/config.json runs/*/*/*.png
