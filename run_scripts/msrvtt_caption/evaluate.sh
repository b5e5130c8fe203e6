#!/usr/bin/env bash
# MSR-VTT video captioning, 16 frames at 384 px.
# Scores CHECKPOINT (default: SAVE_DIR/checkpoint_best.pt from train.sh) on the test split of
# DATA, with the task options of configs/msrvtt_caption/finetune.yaml; writes SAVE_DIR/<split>_results.json and
# SAVE_DIR/<split>_predictions.json. Paper: CIDEr 60.5 on the test split.
#
# Data first (video_caption_{train,valid,test}.tsv into DATA):
#   unival prepare msrvtt-caption --annotations train_val_videodatainfo.json test_videodatainfo.json \
#     --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/msrvtt_caption MEDIA_DIR=/datasets/msrvtt DICT_FILE=bart.base/dict.txt SAVE_DIR=runs/msrvtt_caption \
#   bash run_scripts/msrvtt_caption/evaluate.sh
# Runs `unival evaluate --task video_caption --checkpoint "$CHECKPOINT" --data "$DATA" --split SPLIT --config
# msrvtt_caption/finetune ... -- --dict-file "$DICT_FILE"` per split; arguments are added to the task options.
# Optional: CHECKPOINT, SPLITS (default: test), MEDIA_DIR, DRY_RUN=1 (print the commands).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of video_caption_{train,valid,test}.tsv (unival prepare msrvtt-caption --out)"
require_var SAVE_DIR "folder of the training run (checkpoint_best.pt) and of the results"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
evaluate_splits video_caption msrvtt_caption/finetune "test" -- "$@"
