#!/usr/bin/env bash
# GPU calls (issue 5): the best LRN setting (--task-prior 3, bonus 0.1) over several seeds, continued
# across calls from checkpoints: run this again on the same warm machine and each run resumes.
source "$(dirname "$0")/common.sh"
P=${P:-long}
for s in 0 1 2; do run min/$P-lrn_d10_L6_p3_bonus0.1_s$s --env RoutingMIN-v0 --task-prior 3 --bonus-weight 0.1 --seed $s; done
run mnist/$P-lrn_d10_L6_p3_nobonus --env RoutingMNIST-v0 --task-prior 3 --no-bonus
run mnist/$P-lrn_d10_L6_p3_bonus0.1 --env RoutingMNIST-v0 --task-prior 3 --bonus-weight 0.1
finish $P.tgz
