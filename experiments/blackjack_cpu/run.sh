#!/usr/bin/env bash
# The Blackjack CPU study (README.md next to this file): per seed, a weak SFT start
# (conf/study/blackjack_sft_weak.yaml), PPO from it (conf/study/blackjack_ppo.yaml), and held-out
# evals of both (1000 episodes, sampled at temperature 0.2 and greedy); two seeds at a time.
# Usage, from anywhere:  experiments/blackjack_cpu/run.sh        (SEEDS=1 to run fewer seeds)
# Re-running skips finished steps. Every command is printed before it runs; output goes to $OUT/logs.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
export OMP_NUM_THREADS=1 OUT=runs/blackjack_cpu EPISODES=1000
mkdir -p "$OUT/logs" "$OUT/eval"
START=$(date +%s)

one_seed() {
  local s=$1 run
  run() { local log=$1; shift; echo "+ $* > $log"; "$@" > "$log" 2>&1; }
  [ -d "$OUT/sft/seed=$s/checkpoints/sft" ] ||
    run "$OUT/logs/sft-seed=$s.log" agentrl sft -c conf/study/blackjack_sft_weak.yaml seed="$s"
  [ -f "$OUT/ppo/seed=$s/checkpoints/latest" ] ||
    run "$OUT/logs/ppo-seed=$s.log" agentrl fit -c conf/study/blackjack_ppo.yaml seed="$s"
  for stage in sft ppo; do
    for mode in sampled greedy; do
      local json="$OUT/eval/$stage-seed=$s-$mode.json" flag=""
      [ "$mode" = greedy ] && flag=--greedy
      [ -f "$json" ] || run "$OUT/logs/eval-$stage-seed=$s-$mode.log" agentrl eval -c conf/study/blackjack_ppo.yaml \
        seed="$s" --checkpoint "$OUT/$stage/seed=$s" --episodes "$EPISODES" $flag --out "$json"
    done
  done
}
export -f one_seed

echo "${SEEDS:-1,2,3}" | tr ',' '\n' | xargs -P 2 -I{} bash -c 'one_seed {}'
python experiments/blackjack_cpu/combine.py "$OUT"
echo "study finished in $(( $(date +%s) - START )) s"
