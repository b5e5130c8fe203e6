#!/usr/bin/env bash
# VQAv2, answers constrained to answers.txt, EMA weights.
# Finetunes UnIVAL base with configs/vqav2/finetune.yaml (every hyperparameter is there), keeping the
# checkpoint with the best score on the valid split. Paper: VQA accuracy 77.0 test-dev / 77.1 test-std (EvalAI server).
#
# Data first (vqa_{train,valid,test}.tsv and answers.txt into DATA):
#   unival prepare vqav2 --train-questions v2_OpenEnded_mscoco_train2014_questions.json \
#     --train-annotations v2_mscoco_train2014_annotations.json \
#     --val-questions v2_OpenEnded_mscoco_val2014_questions.json --val-annotations v2_mscoco_val2014_annotations.json \
#     --test-questions v2_OpenEnded_mscoco_test-dev2015_questions.json --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/vqav2 MEDIA_DIR=/datasets/coco INIT_CHECKPOINT=unival_s2_hs.pt DICT_FILE=bart.base/dict.txt \
#   SAVE_DIR=runs/vqav2 bash run_scripts/vqav2/train.sh
# Runs `unival train vqav2/finetune --data "$DATA" --save-dir "$SAVE_DIR" -- --finetune-from-model
# "$INIT_CHECKPOINT" --dict-file "$DICT_FILE"` plus the options of the GPUs found and the script's arguments.
# Optional: NUM_GPUS, PRECISION, NUM_WORKERS, MEDIA_DIR, DRY_RUN=1 (run_scripts/common.sh).
# Then: bash run_scripts/vqav2/evaluate.sh with the same variables.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of vqa_{train,valid,test}.tsv and answers.txt (unival prepare vqav2 --out)"
require_var SAVE_DIR "folder for the checkpoints and logs of this run"
require_var INIT_CHECKPOINT "the pretrained UnIVAL checkpoint to finetune (e.g. unival_s2_hs)"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
finetune vqav2/finetune "$@"
