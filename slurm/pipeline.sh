#!/usr/bin/env bash
# Submit the whole pipeline as SLURM jobs chained with --dependency=afterok; prints the job ids.
#   slurm/pipeline.sh run_name=clinical corpus=files corpus.path=/data/notes
#   SHARDS=16 TRAIN_NODES=4 GPUS_PER_NODE=8 LAUNCH_CONFIG=launch/zero2.yaml slurm/pipeline.sh run_name=clinical ...
# Every job gets the same key=value overrides. A failed job cancels the jobs after it (--kill-on-invalid-dep).
# Settings (environment): SHARDS (generate array tasks, 8), SCORE_SHARDS (teacher scoring array tasks, 1;
# with teacher.kind=none the score job only says it is off), TRAIN_NODES (1), GPUS_PER_NODE (0: CPU only),
# PROCS_PER_NODE (processes per node for mine/train/eval; default GPUS_PER_NODE or 1), LAUNCH_CONFIG (accelerate
# config for train), MINE_LAUNCH_CONFIG, EVAL_LAUNCH_CONFIG, SBATCH_FLAGS (added to every sbatch, e.g. "--partition=gpu --account=x"),
# EMBEDTUNE_PYTHON (the Python with embedtune installed). Partition, account, QOS: also SBATCH_* variables.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p logs  # jobs run in this folder (their logs/ too), as does a plain `embedtune` here
SHARDS=${SHARDS:-8}
SCORE_SHARDS=${SCORE_SHARDS:-1}
TRAIN_NODES=${TRAIN_NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-0}
export PROCS_PER_NODE=${PROCS_PER_NODE:-$(( GPUS_PER_NODE > 0 ? GPUS_PER_NODE : 1 ))}
read -r -a extra <<< "${SBATCH_FLAGS:-}"
node_gpus=() one_gpu=()
if [ "$GPUS_PER_NODE" -gt 0 ]; then node_gpus=(--gpus-per-node="$GPUS_PER_NODE"); one_gpu=(--gpus=1); fi

submit() {  # submit AFTER_JOB SBATCH_ARGS... -> job id
  local after=$1; shift
  local dep=()
  [ -n "$after" ] && dep=(--dependency=afterok:"$after" --kill-on-invalid-dep=yes)
  sbatch --parsable "${extra[@]}" "${dep[@]}" "$@" | cut -d';' -f1
}

prepare=$(submit "" "$REPO/slurm/stage.sbatch" prepare "$@")
generate=$(submit "$prepare" --array=0-$((SHARDS - 1)) "${one_gpu[@]}" "$REPO/slurm/generate.sbatch" "$@")
filter=$(submit "$generate" "${one_gpu[@]}" "$REPO/slurm/stage.sbatch" filter "$@")
mine=$(LAUNCH_CONFIG=${MINE_LAUNCH_CONFIG:-$REPO/launch/ddp.yaml} submit "$filter" "${node_gpus[@]}" \
  "$REPO/slurm/mine.sbatch" "$@")
score=$(submit "$mine" --array=0-$((SCORE_SHARDS - 1)) "${one_gpu[@]}" "$REPO/slurm/score.sbatch" "$@")
train=$(LAUNCH_CONFIG=${LAUNCH_CONFIG:-$REPO/launch/multinode.yaml} submit "$score" --nodes="$TRAIN_NODES" \
  "${node_gpus[@]}" "$REPO/slurm/train.sbatch" "$@")
evaluate=$(LAUNCH_CONFIG=${EVAL_LAUNCH_CONFIG:-$REPO/launch/ddp.yaml} submit "$train" "${node_gpus[@]}" \
  "$REPO/slurm/eval.sbatch" "$@")
echo "prepare $prepare"
echo "generate $generate (array 0-$((SHARDS - 1)))"
echo "filter $filter"
echo "mine $mine"
echo "score $score (array 0-$((SCORE_SHARDS - 1)))"
echo "train $train"
echo "eval+export $evaluate"
