#!/usr/bin/env bash
# SNLI-VE visual entailment (yes / no / maybe).
# Finetunes UnIVAL base with configs/snli_ve/finetune.yaml (every hyperparameter is there), keeping the
# checkpoint with the best score on the valid split. Paper: accuracy 78.2 dev / 78.6 test.
#
# Data first (snli_ve_{train,valid,test}.tsv into DATA):
#   unival prepare snli-ve --train snli_ve_train.jsonl --dev snli_ve_dev.jsonl --test snli_ve_test.jsonl \
#     --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/snli_ve MEDIA_DIR=/datasets/flickr30k INIT_CHECKPOINT=unival_s2_hs.pt DICT_FILE=bart.base/dict.txt \
#   SAVE_DIR=runs/snli_ve bash run_scripts/snli_ve/train.sh
# Runs `unival train snli_ve/finetune --data "$DATA" --save-dir "$SAVE_DIR" -- --finetune-from-model
# "$INIT_CHECKPOINT" --dict-file "$DICT_FILE"` plus the options of the GPUs found and the script's arguments.
# Optional: NUM_GPUS, PRECISION, NUM_WORKERS, MEDIA_DIR, DRY_RUN=1 (run_scripts/common.sh).
# Then: bash run_scripts/snli_ve/evaluate.sh with the same variables.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of snli_ve_{train,valid,test}.tsv (unival prepare snli-ve --out)"
require_var SAVE_DIR "folder for the checkpoints and logs of this run"
require_var INIT_CHECKPOINT "the pretrained UnIVAL checkpoint to finetune (e.g. unival_s2_hs)"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
finetune snli_ve/finetune "$@"
