#!/usr/bin/env bash
# VQAv2, answers constrained to answers.txt, EMA weights.
# Scores CHECKPOINT (default: SAVE_DIR/checkpoint_best.pt from train.sh), its EMA weights, on the valid split of
# DATA, with the task options of configs/vqav2/finetune.yaml; writes SAVE_DIR/<split>_results.json and
# SAVE_DIR/<split>_predictions.json. Paper: VQA accuracy 77.0 test-dev / 77.1 test-std (EvalAI server).
# The answers of test-dev/test-std are not public: the default scores the valid split (val2014, also
# used for model selection, so optimistic). SPLITS=test writes test_predictions.json for the EvalAI server
# (its accuracy printed here is 0: the test rows have no answers).
#
# Data first (vqa_{train,valid,test}.tsv and answers.txt into DATA):
#   unival prepare vqav2 --train-questions v2_OpenEnded_mscoco_train2014_questions.json \
#     --train-annotations v2_mscoco_train2014_annotations.json \
#     --val-questions v2_OpenEnded_mscoco_val2014_questions.json --val-annotations v2_mscoco_val2014_annotations.json \
#     --test-questions v2_OpenEnded_mscoco_test-dev2015_questions.json --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/vqav2 MEDIA_DIR=/datasets/coco DICT_FILE=bart.base/dict.txt SAVE_DIR=runs/vqav2 \
#   bash run_scripts/vqav2/evaluate.sh
# Runs `unival evaluate --task vqa_gen --checkpoint "$CHECKPOINT" --data "$DATA" --split SPLIT --config
# vqav2/finetune --ema ... -- --dict-file "$DICT_FILE"` per split; arguments are added to the task options.
# Optional: CHECKPOINT, SPLITS (default: valid), MEDIA_DIR, DRY_RUN=1 (print the commands).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of vqa_{train,valid,test}.tsv and answers.txt (unival prepare vqav2 --out)"
require_var SAVE_DIR "folder of the training run (checkpoint_best.pt) and of the results"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
evaluate_splits vqa_gen vqav2/finetune "valid" --ema -- "$@"
