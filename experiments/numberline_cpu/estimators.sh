#!/usr/bin/env bash
# GAE (PPO with a value head) vs the critic-free group estimators GRPO and GiGPO on NumberLine (issue 17).
# Same weak SFT starts as the recorded study (run.sh step 1), same PPO settings (conf/study/numberline_ppo.yaml:
# lr 2e-5, 4 epochs, clip 0.1, 8 envs, 64 env steps per update, 50 updates), 3 seeds; the group runs use
# rollout.group_size=4 (2 groups of 4 envs; a rollout holds whole groups, so it is a little over 64 steps:
# the table gives the env steps each used). Held-out eval as the study: eval split, 200 episodes, greedy and
# sampled at 0.2, eval seed = run seed. Writes runs/numberline_cpu/{sft,eval,sweep_gae,sweep_group} and
# experiments/numberline_cpu/estimators.md (combine_estimators.py).
# Usage, from anywhere:  experiments/numberline_cpu/estimators.sh    (SEEDS=1,2 to run fewer seeds)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
export OMP_NUM_THREADS=1 COLUMNS=${COLUMNS:-160}
SEEDS=${SEEDS:-1,2,3}
OUT=runs/numberline_cpu
EPISODES=200
LOGS=$OUT/logs
mkdir -p "$LOGS" "$OUT/eval"
START=$(date +%s)

. experiments/numberline_cpu/pool.sh  # pool: at most 2 commands at a time

evals() {  # NAME CHECKPOINT overrides...: greedy and sampled held-out evals, skipped when done
  local name=$1 ckpt=$2; shift 2
  for mode in greedy sampled; do
    local flag="" json=$OUT/eval/$name-$mode.json
    [ "$mode" = greedy ] && flag=--greedy
    [ -f "$json" ] && continue
    echo "$LOGS/eval-$name-$mode.log agentrl eval -c conf/study/numberline_ppo.yaml --checkpoint $ckpt" \
         "--episodes $EPISODES $flag --out $json $*"
  done
}

echo "== 1. weak SFT starts with CoT (as run.sh)"
for s in ${SEEDS//,/ }; do
  [ -d "$OUT/sft/cot=True/seed=$s/checkpoints/sft" ] && continue
  echo "$LOGS/sft-cot=true-seed=$s.log agentrl sft -c conf/study/numberline_sft_weak.yaml prompt.cot=true seed=$s"
done | pool
for s in ${SEEDS//,/ }; do evals "start,cot=true,seed=$s" "$OUT/sft/cot=True/seed=$s" prompt.cot=true seed=$s; done | pool

echo "== 2. PPO with GAE, then GRPO and GiGPO (group_size 4)"
echo "+ agentrl sweep -c conf/study/numberline_ppo.yaml --grid advantage.estimator=gae --seeds $SEEDS --parallel 2 --out $OUT/sweep_gae"
agentrl sweep -c conf/study/numberline_ppo.yaml --grid advantage.estimator=gae --seeds "$SEEDS" --parallel 2 \
  --out $OUT/sweep_gae 2>&1 | tee "$LOGS/sweep_gae.log"
echo "+ agentrl sweep -c conf/study/numberline_ppo.yaml --grid advantage.estimator=grpo,gigpo --seeds $SEEDS --parallel 2 --out $OUT/sweep_group rollout.group_size=4"
agentrl sweep -c conf/study/numberline_ppo.yaml --grid advantage.estimator=grpo,gigpo --seeds "$SEEDS" --parallel 2 \
  --out $OUT/sweep_group rollout.group_size=4 2>&1 | tee "$LOGS/sweep_group.log"

echo "== 3. held-out eval after PPO"
for s in ${SEEDS//,/ }; do
  evals "estimator=gae,seed=$s" "$OUT/sweep_gae/estimator=gae/seed=$s" prompt.cot=true seed=$s
  for e in grpo gigpo; do
    evals "estimator=$e,seed=$s" "$OUT/sweep_group/estimator=$e/seed=$s" prompt.cot=true seed=$s
  done
done | pool

echo "== 4. table"
python experiments/numberline_cpu/combine_estimators.py "$OUT"
END=$(date +%s)
echo "wall time: $(( (END - START) / 60 )) min $(( (END - START) % 60 )) s"
