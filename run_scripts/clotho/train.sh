#!/usr/bin/env bash
# Clotho audio captioning, PANN CNN14, hop 200.
# Finetunes UnIVAL base with configs/clotho/finetune.yaml (every hyperparameter is there), keeping the
# checkpoint with the best score on the valid split. Paper: CIDEr 38.0 on the Clotho v1 evaluation split.
# An INIT_CHECKPOINT without audio weights (the image/video pretrained ones) keeps the model's own CNN14:
# pass PANN's weights as an argument, `bash run_scripts/<benchmark>/train.sh --audio-encoder-path Cnn14_mAP=0.431.pth`
# (the audio projection and positions then start from scratch; the log warns).
#
# Data first (audio_caption_{train,valid,test}.tsv into DATA):
#   unival prepare clotho --development clotho_captions_development.csv \
#     --validation clotho_captions_validation.csv --evaluation clotho_captions_evaluation.csv \
#     --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/clotho MEDIA_DIR=/datasets/clotho INIT_CHECKPOINT=unival_audio.pt DICT_FILE=bart.base/dict.txt \
#   SAVE_DIR=runs/clotho bash run_scripts/clotho/train.sh
# Runs `unival train clotho/finetune --data "$DATA" --save-dir "$SAVE_DIR" -- --finetune-from-model
# "$INIT_CHECKPOINT" --dict-file "$DICT_FILE"` plus the options of the GPUs found and the script's arguments.
# Optional: NUM_GPUS, PRECISION, NUM_WORKERS, MEDIA_DIR, DRY_RUN=1 (run_scripts/common.sh).
# Then: bash run_scripts/clotho/evaluate.sh with the same variables.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of audio_caption_{train,valid,test}.tsv (unival prepare clotho --out)"
require_var SAVE_DIR "folder for the checkpoints and logs of this run"
require_var INIT_CHECKPOINT "a checkpoint of UnIVAL base to finetune"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
finetune clotho/finetune "$@"
