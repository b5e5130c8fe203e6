#!/usr/bin/env bash
# MSRVTT-QA video question answering, 8 frames, EMA weights.
# Finetunes UnIVAL base with configs/msrvtt_qa/finetune.yaml (every hyperparameter is there), keeping the
# checkpoint with the best score on the valid split. Paper: accuracy 43.5 on the test split.
#
# Data first (video_vqa_{train,valid,test}.tsv and answers.txt into DATA):
#   unival prepare msrvtt-qa --train train_qa.json --val val_qa.json --test test_qa.json \
#     --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/msrvtt_qa MEDIA_DIR=/datasets/msrvtt INIT_CHECKPOINT=unival_s2_hs.pt DICT_FILE=bart.base/dict.txt \
#   SAVE_DIR=runs/msrvtt_qa bash run_scripts/msrvtt_qa/train.sh
# Runs `unival train msrvtt_qa/finetune --data "$DATA" --save-dir "$SAVE_DIR" -- --finetune-from-model
# "$INIT_CHECKPOINT" --dict-file "$DICT_FILE"` plus the options of the GPUs found and the script's arguments.
# Optional: NUM_GPUS, PRECISION, NUM_WORKERS, MEDIA_DIR, DRY_RUN=1 (run_scripts/common.sh).
# Then: bash run_scripts/msrvtt_qa/evaluate.sh with the same variables.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of video_vqa_{train,valid,test}.tsv and answers.txt (unival prepare msrvtt-qa --out)"
require_var SAVE_DIR "folder for the checkpoints and logs of this run"
require_var INIT_CHECKPOINT "the pretrained UnIVAL checkpoint to finetune (e.g. unival_s2_hs)"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
finetune msrvtt_qa/finetune "$@"
