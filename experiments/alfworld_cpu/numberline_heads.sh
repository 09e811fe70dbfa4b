#!/usr/bin/env bash
# The action heads on NumberLine (issue 30): generate vs score, no CoT, from the same weak SFT start per seed,
# with the recorded NumberLine study's settings (conf/study/numberline_*.yaml: 50 updates of 64 env steps,
# ppo.lr 2e-5, value_lr 1e-3) and its held-out eval (200 episodes, greedy and sampled, eval seed = run seed).
# Skips what is done; one process at a time. Writes under runs/numberline_heads/.
#   experiments/alfworld_cpu/numberline_heads.sh        # SEEDS="1 2" for fewer
set -euo pipefail
cd "$(dirname "$0")/../.."
AGENTRL=${AGENTRL:-.venv/bin/agentrl}
OUT=runs/numberline_heads
SEEDS=${SEEDS:-1 2 3}
run() { echo "+ $*"; "$@"; }
evals() {  # checkpoint head name seed
  for mode in greedy sampled; do
    f=$OUT/eval/$3,seed=$4-$mode.json
    [ -f "$f" ] || run $AGENTRL eval -c conf/study/numberline_ppo.yaml --checkpoint "$1" --episodes 200 \
      $([ $mode = greedy ] && echo --greedy) --out "$f" prompt.cot=false policy.action_head="$2" seed="$4"
  done
}
mkdir -p $OUT/eval
for s in $SEEDS; do
  start=runs/numberline_cpu/sft/cot=False/seed=$s
  [ -d "$start" ] || run $AGENTRL sft -c conf/study/numberline_sft_weak.yaml prompt.cot=false seed=$s
  evals "$start" generate start-generate "$s"
  evals "$start" score start-score "$s"
  for head in generate score; do
    dir=$OUT/$head/seed=$s
    [ -d "$dir/checkpoints/update_000050" ] || run $AGENTRL fit -c conf/study/numberline_ppo.yaml prompt.cot=false \
      policy.action_head=$head seed=$s trainer.out_dir=$dir
    evals "$dir" $head ppo-$head "$s"
  done
done
