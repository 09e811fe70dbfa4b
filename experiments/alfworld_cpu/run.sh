#!/usr/bin/env bash
# The ALFWorld score-head study of issue 30 (experiments/alfworld_cpu/README.md): per seed, an SFT start with
# the searching expert on small rooms, its held-out eval, PPO with the score head, the same evals after, and
# both on the default-size eval games; then the tables and the plot. Skips what is done; one process at a time.
#   experiments/alfworld_cpu/run.sh            # SEEDS="1" for one seed
set -euo pipefail
cd "$(dirname "$0")/../.."
AGENTRL=${AGENTRL:-.venv/bin/agentrl}
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-1 2 3}
S=runs/alfworld_cpu/study
run() { echo "+ $*"; "$@"; }
[ -f runs/alfworld_cpu/small6/eval/summary.json ] || run $AGENTRL alfworld-gen --out runs/alfworld_cpu/small6 \
  --per-type 20 --seed 0 --max-receptacles 6 --max-distractors 3
[ -f runs/alfworld_cpu/data/eval/summary.json ] || run $AGENTRL alfworld-gen --out runs/alfworld_cpu/data --per-type 20 --seed 0
mkdir -p $S/eval
evals() {  # checkpoint phase seed [overrides...]: 48 held-out episodes, greedy and sampled
  local ckpt=$1 phase=$2 seed=$3; shift 3
  for mode in greedy sampled; do
    f=$S/eval/$phase,seed=$seed-$mode.json
    [ -f "$f" ] || run $AGENTRL eval -c conf/study/alfworld_score_ppo.yaml --checkpoint "$ckpt" --episodes 48 \
      $([ $mode = greedy ] && echo --greedy) --out "$f" seed="$seed" "$@"
  done
}
DEFAULT=(env.data_path=runs/alfworld_cpu/data env.max_episode_steps=50)
for s in $SEEDS; do
  [ -d $S/sft/seed=$s/checkpoints/sft ] || run $AGENTRL sft -c conf/study/alfworld_score_sft.yaml seed=$s
  for head in score generate; do
    f=$S/eval/agreement-$head,seed=$s.json
    [ -f "$f" ] || run $PY tools/expert_agreement.py -c conf/study/alfworld_score_ppo.yaml --checkpoint $S/sft/seed=$s \
      --states 96 --json "$f" seed=$s policy.action_head=$head
  done
  evals $S/sft/seed=$s start $s
  evals $S/sft/seed=$s start-default $s "${DEFAULT[@]}"
  [ -d $S/ppo/seed=$s/checkpoints/update_000150 ] || run $AGENTRL fit -c conf/study/alfworld_score_ppo.yaml seed=$s
  evals $S/ppo/seed=$s ppo $s
  evals $S/ppo/seed=$s ppo-default $s "${DEFAULT[@]}"
done
run $PY experiments/alfworld_cpu/combine.py $S runs/numberline_heads
