#!/usr/bin/env bash
# MSR-VTT video captioning, 16 frames at 384 px.
# Finetunes UnIVAL base with configs/msrvtt_caption/finetune.yaml (every hyperparameter is there), keeping the
# checkpoint with the best score on the valid split. Paper: CIDEr 60.5 on the test split.
#
# Data first (video_caption_{train,valid,test}.tsv into DATA):
#   unival prepare msrvtt-caption --annotations train_val_videodatainfo.json test_videodatainfo.json \
#     --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/msrvtt_caption MEDIA_DIR=/datasets/msrvtt INIT_CHECKPOINT=unival_s2_hs.pt DICT_FILE=bart.base/dict.txt \
#   SAVE_DIR=runs/msrvtt_caption bash run_scripts/msrvtt_caption/train.sh
# Runs `unival train msrvtt_caption/finetune --data "$DATA" --save-dir "$SAVE_DIR" -- --finetune-from-model
# "$INIT_CHECKPOINT" --dict-file "$DICT_FILE"` plus the options of the GPUs found and the script's arguments.
# Optional: NUM_GPUS, PRECISION, NUM_WORKERS, MEDIA_DIR, DRY_RUN=1 (run_scripts/common.sh).
# Then: bash run_scripts/msrvtt_caption/evaluate.sh with the same variables.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of video_caption_{train,valid,test}.tsv (unival prepare msrvtt-caption --out)"
require_var SAVE_DIR "folder for the checkpoints and logs of this run"
require_var INIT_CHECKPOINT "the pretrained UnIVAL checkpoint to finetune (e.g. unival_s2_hs)"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
finetune msrvtt_caption/finetune "$@"
