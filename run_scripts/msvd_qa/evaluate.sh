#!/usr/bin/env bash
# MSVD-QA video question answering, 8 frames, EMA weights.
# Scores CHECKPOINT (default: SAVE_DIR/checkpoint_best.pt from train.sh), its EMA weights, on the test split of
# DATA, with the task options of configs/msvd_qa/finetune.yaml; writes SAVE_DIR/<split>_results.json and
# SAVE_DIR/<split>_predictions.json. Paper: accuracy 49.55 on the test split.
#
# Data first (video_vqa_{train,valid,test}.tsv and answers.txt into DATA):
#   unival prepare msvd-qa --train train_qa.json --val val_qa.json --test test_qa.json \
#     --youtube-mapping youtube_mapping.txt --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/msvd_qa MEDIA_DIR=/datasets/msvd DICT_FILE=bart.base/dict.txt SAVE_DIR=runs/msvd_qa \
#   bash run_scripts/msvd_qa/evaluate.sh
# Runs `unival evaluate --task video_vqa_gen --checkpoint "$CHECKPOINT" --data "$DATA" --split SPLIT --config
# msvd_qa/finetune --ema ... -- --dict-file "$DICT_FILE"` per split; arguments are added to the task options.
# Optional: CHECKPOINT, SPLITS (default: test), MEDIA_DIR, DRY_RUN=1 (print the commands).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of video_vqa_{train,valid,test}.tsv and answers.txt (unival prepare msvd-qa --out)"
require_var SAVE_DIR "folder of the training run (checkpoint_best.pt) and of the results"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
evaluate_splits video_vqa_gen msvd_qa/finetune "test" --ema -- "$@"
