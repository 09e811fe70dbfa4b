#!/usr/bin/env bash
# The NumberLine CPU learning study, from nothing (README.md next to this file):
#   1. weak SFT starts (sft.noise=0.5), with and without CoT, one per seed
#   2. held-out eval of every start (200 episodes, greedy and sampled at temperature 0.2)
#   3. PPO: the lambda sweep with CoT (policy.thought_coef 0.1 / 0.5 / 0.9) and the no-CoT ablation,
#      each over the seeds, 2 runs at a time
#   4. held-out eval of every PPO run, the same episodes as its start (and, sampled only, of the
#      updates 10-40 checkpoints of the lambda 0.5 and no-CoT runs: how fast held-out success rises)
#   5. what the answers get right on held-out states (check_answers.py), start and after PPO
#   6. tables and the plot (combine.py)
# Every command is printed before it runs ("+ ..."); their output goes to the log named after it.
# Usage, from anywhere:  experiments/numberline_cpu/run.sh          (SEEDS=1,2 to run fewer seeds)
# Re-running skips finished SFT starts, evals and sweep runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
export OMP_NUM_THREADS=1 COLUMNS=${COLUMNS:-160}  # wide enough for the sweep's summary table in the logs

SEEDS=${SEEDS:-1,2,3}
OUT=runs/numberline_cpu          # conf/study/*.yaml name these paths
EPISODES=200
LOGS=$OUT/logs
mkdir -p "$LOGS"
START=$(date +%s)

. experiments/numberline_cpu/pool.sh  # pool: at most 2 commands at a time

# Eval lines ($MODES: greedy and sampled unless set) for CHECKPOINT with config overrides, writing $OUT/eval/NAME-MODE.json.
evals() {
  local name=$1 ckpt=$2; shift 2
  for mode in ${MODES:-greedy sampled}; do
    local flag="" json=$OUT/eval/$name-$mode.json
    [ "$mode" = greedy ] && flag=--greedy
    [ -f "$json" ] && continue
    echo "$LOGS/eval-$name-$mode.log agentrl eval -c conf/study/numberline_ppo.yaml --checkpoint $ckpt" \
         "--episodes $EPISODES $flag --out $json $*"
  done
}

echo "== 1. weak SFT starts (seeds $SEEDS, with and without CoT)"
for s in ${SEEDS//,/ }; do
  for cot in true false; do
    Cot=${cot^}  # OmegaConf writes the bool as True / False in the interpolated paths
    [ -d "$OUT/sft/cot=$Cot/seed=$s/checkpoints/sft" ] && continue
    echo "$LOGS/sft-cot=$cot-seed=$s.log agentrl sft -c conf/study/numberline_sft_weak.yaml prompt.cot=$cot seed=$s"
  done
done | pool

echo "== 2. held-out eval of the starts"
mkdir -p "$OUT/eval"
for s in ${SEEDS//,/ }; do
  for cot in true false; do
    evals "start,cot=$cot,seed=$s" "$OUT/sft/cot=${cot^}/seed=$s" prompt.cot=$cot seed=$s
  done
done | pool

echo "== 3. PPO: lambda sweep with CoT, then the no-CoT ablation"
echo "+ agentrl sweep -c conf/study/numberline_ppo.yaml --grid policy.thought_coef=0.1,0.5,0.9 --seeds $SEEDS --parallel 2 --out $OUT/sweep_lambda"
agentrl sweep -c conf/study/numberline_ppo.yaml --grid policy.thought_coef=0.1,0.5,0.9 --seeds "$SEEDS" \
  --parallel 2 --out $OUT/sweep_lambda 2>&1 | tee "$LOGS/sweep_lambda.log"
echo "+ agentrl sweep -c conf/study/numberline_ppo.yaml --grid prompt.cot=false --seeds $SEEDS --parallel 2 --out $OUT/sweep_nocot"
agentrl sweep -c conf/study/numberline_ppo.yaml --grid prompt.cot=false --seeds "$SEEDS" \
  --parallel 2 --out $OUT/sweep_nocot 2>&1 | tee "$LOGS/sweep_nocot.log"

echo "== 4. held-out eval after PPO"
for s in ${SEEDS//,/ }; do
  for lam in 0.1 0.5 0.9; do
    evals "ppo,cot=true,thought_coef=$lam,seed=$s" "$OUT/sweep_lambda/thought_coef=$lam/seed=$s" \
      prompt.cot=true policy.thought_coef=$lam seed=$s
  done
  evals "ppo,cot=false,seed=$s" "$OUT/sweep_nocot/cot=false/seed=$s" prompt.cot=false seed=$s
done | pool

echo "== 4b. held-out eval (sampled) along PPO: checkpoints of updates 10-40, CoT lambda 0.5 and no CoT"
for s in ${SEEDS//,/ }; do
  for u in 10 20 30 40; do
    ckpt=checkpoints/update_0000$u
    MODES=sampled evals "ppo,cot=true,thought_coef=0.5,update=$u,seed=$s" \
      "$OUT/sweep_lambda/thought_coef=0.5/seed=$s/$ckpt" prompt.cot=true seed=$s
    MODES=sampled evals "ppo,cot=false,update=$u,seed=$s" "$OUT/sweep_nocot/cot=false/seed=$s/$ckpt" prompt.cot=false seed=$s
  done
done | pool

echo "== 5. what the answers get right (digits, thoughts, action) on 120 held-out states, start and after PPO"
answers() {  # NAME CHECKPOINT overrides...
  local name=$1 ckpt=$2; shift 2
  [ -f "$OUT/answers/$name.json" ] && return
  echo "$LOGS/answers-$name.log python experiments/numberline_cpu/check_answers.py $ckpt --out $OUT/answers/$name.json $*"
}
for s in ${SEEDS//,/ }; do
  answers "start,cot=true,seed=$s" "$OUT/sft/cot=True/seed=$s" prompt.cot=true seed=$s
  answers "start,cot=false,seed=$s" "$OUT/sft/cot=False/seed=$s" prompt.cot=false seed=$s
  for lam in 0.1 0.5 0.9; do
    answers "ppo,cot=true,thought_coef=$lam,seed=$s" "$OUT/sweep_lambda/thought_coef=$lam/seed=$s" \
      prompt.cot=true policy.thought_coef=$lam seed=$s
  done
  answers "ppo,cot=false,seed=$s" "$OUT/sweep_nocot/cot=false/seed=$s" prompt.cot=false seed=$s
done | pool

echo "== 6. tables and plot"
echo "+ python experiments/numberline_cpu/combine.py $OUT"
python experiments/numberline_cpu/combine.py "$OUT"

END=$(date +%s)
echo "wall time: $(( (END - START) / 60 )) min $(( (END - START) % 60 )) s"
echo "CPU time of this script and its children (user, system):"
times
