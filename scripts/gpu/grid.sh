#!/usr/bin/env bash
# GPU calls (issue 5): LRN with the router's per-task prior (--task-prior) across bonus weights, the
# duplicates x depth grid and the d5 L4 bonus ablation; run again on the same warm machine to resume.
source "$(dirname "$0")/common.sh"
P=${P:-grid}
run min/$P-lrn_d10_L6_p3_bonus0.3 --env RoutingMIN-v0 --task-prior 3 --bonus-weight 0.3
run min/$P-lrn_d5_L4_p3_bonus0.1 --env RoutingMIN-v0 --task-prior 3 --bonus-weight 0.1 --duplicates 5 --max-depth 4
run min/$P-lrn_d5_L4_p3_nobonus --env RoutingMIN-v0 --task-prior 3 --no-bonus --duplicates 5 --max-depth 4
run min/$P-lrn_d5_L6_p3_bonus0.1 --env RoutingMIN-v0 --task-prior 3 --bonus-weight 0.1 --duplicates 5
run min/$P-lrn_d1_L6_p3_bonus0.1 --env RoutingMIN-v0 --task-prior 3 --bonus-weight 0.1 --duplicates 1
run mnist/$P-lrn_d10_L6_p3_bonus0.1 --env RoutingMNIST-v0 --task-prior 3 --bonus-weight 0.1
run mnist/$P-lrn_d5_L4_p3_bonus0.1 --env RoutingMNIST-v0 --task-prior 3 --bonus-weight 0.1 --duplicates 5 --max-depth 4
run mnist/$P-lrn_d5_L4_p3_nobonus --env RoutingMNIST-v0 --task-prior 3 --no-bonus --duplicates 5 --max-depth 4
finish $P.tgz
