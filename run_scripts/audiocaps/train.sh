#!/usr/bin/env bash
# AudioCaps audio captioning, PANN CNN14, hop 200.
# Finetunes UnIVAL base with configs/audiocaps/finetune.yaml (every hyperparameter is there), keeping the
# checkpoint with the best score on the valid split. Paper: CIDEr 71.3 on the test split.
# An INIT_CHECKPOINT without audio weights (the image/video pretrained ones) keeps the model's own CNN14:
# pass PANN's weights as an argument, `bash run_scripts/<benchmark>/train.sh --audio-encoder-path Cnn14_mAP=0.431.pth`
# (the audio projection and positions then start from scratch; the log warns).
#
# Data first (audio_caption_{train,valid,test}.tsv into DATA):
#   unival prepare audiocaps --train train.csv --val val.csv --test test.csv --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/audiocaps MEDIA_DIR=/datasets/audiocaps INIT_CHECKPOINT=unival_audio.pt DICT_FILE=bart.base/dict.txt \
#   SAVE_DIR=runs/audiocaps bash run_scripts/audiocaps/train.sh
# Runs `unival train audiocaps/finetune --data "$DATA" --save-dir "$SAVE_DIR" -- --finetune-from-model
# "$INIT_CHECKPOINT" --dict-file "$DICT_FILE"` plus the options of the GPUs found and the script's arguments.
# Optional: NUM_GPUS, PRECISION, NUM_WORKERS, MEDIA_DIR, DRY_RUN=1 (run_scripts/common.sh).
# Then: bash run_scripts/audiocaps/evaluate.sh with the same variables.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of audio_caption_{train,valid,test}.tsv (unival prepare audiocaps --out)"
require_var SAVE_DIR "folder for the checkpoints and logs of this run"
require_var INIT_CHECKPOINT "a checkpoint of UnIVAL base to finetune"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
finetune audiocaps/finetune "$@"
