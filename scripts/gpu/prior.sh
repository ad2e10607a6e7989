#!/usr/bin/env bash
# GPU call (issue 5): LRN with the router's per-task prior (--task-prior), with and without the bonus,
# side by side on one card for ~9 minutes (each run stops at its last whole epoch).
RUN_ARGS=--no-checkpoint
source "$(dirname "$0")/common.sh"
P=${P:-prior}
gpu_mb=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
run min/$P-lrn_d10_L6_p3_nobonus --env RoutingMIN-v0 --task-prior 3 --no-bonus
run min/$P-lrn_d10_L6_p3_bonus --env RoutingMIN-v0 --task-prior 3
run mnist/$P-lrn_d10_L6_p3_nobonus --env RoutingMNIST-v0 --task-prior 3 --no-bonus
run mnist/$P-lrn_d10_L6_p3_bonus --env RoutingMNIST-v0 --task-prior 3
run mnist/$P-lrn_d10_L6_p3_bonus0.1 --env RoutingMNIST-v0 --task-prior 3 --bonus-weight 0.1
if [ "$gpu_mb" -gt 100000 ]; then
  run min/$P-lrn_d10_L6_p3_bonus0.1 --env RoutingMIN-v0 --task-prior 3 --bonus-weight 0.1
  run min/$P-lrn_d10_L6_p3_nobonus_s1 --env RoutingMIN-v0 --task-prior 3 --no-bonus --seed 1
fi
finish $P.tgz
