#!/usr/bin/env bash
# SNLI-VE visual entailment (yes / no / maybe).
# Scores CHECKPOINT (default: SAVE_DIR/checkpoint_best.pt from train.sh) on the valid and test splits of
# DATA, with the task options of configs/snli_ve/finetune.yaml; writes SAVE_DIR/<split>_results.json and
# SAVE_DIR/<split>_predictions.json. Paper: accuracy 78.2 dev / 78.6 test.
#
# Data first (snli_ve_{train,valid,test}.tsv into DATA):
#   unival prepare snli-ve --train snli_ve_train.jsonl --dev snli_ve_dev.jsonl --test snli_ve_test.jsonl \
#     --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/snli_ve MEDIA_DIR=/datasets/flickr30k DICT_FILE=bart.base/dict.txt SAVE_DIR=runs/snli_ve \
#   bash run_scripts/snli_ve/evaluate.sh
# Runs `unival evaluate --task snli_ve --checkpoint "$CHECKPOINT" --data "$DATA" --split SPLIT --config
# snli_ve/finetune ... -- --dict-file "$DICT_FILE"` per split; arguments are added to the task options.
# Optional: CHECKPOINT, SPLITS (default: valid test), MEDIA_DIR, DRY_RUN=1 (print the commands).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of snli_ve_{train,valid,test}.tsv (unival prepare snli-ve --out)"
require_var SAVE_DIR "folder of the training run (checkpoint_best.pt) and of the results"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
evaluate_splits snli_ve snli_ve/finetune "valid test" -- "$@"
