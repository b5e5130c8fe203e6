#!/usr/bin/env bash
# Clotho audio captioning, PANN CNN14, hop 200.
# Scores CHECKPOINT (default: SAVE_DIR/checkpoint_best.pt from train.sh) on the test split of
# DATA, with the task options of configs/clotho/finetune.yaml; writes SAVE_DIR/<split>_results.json and
# SAVE_DIR/<split>_predictions.json. Paper: CIDEr 38.0 on the Clotho v1 evaluation split.
#
# Data first (audio_caption_{train,valid,test}.tsv into DATA):
#   unival prepare clotho --development clotho_captions_development.csv \
#     --validation clotho_captions_validation.csv --evaluation clotho_captions_evaluation.csv \
#     --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/clotho MEDIA_DIR=/datasets/clotho DICT_FILE=bart.base/dict.txt SAVE_DIR=runs/clotho \
#   bash run_scripts/clotho/evaluate.sh
# Runs `unival evaluate --task audio_caption --checkpoint "$CHECKPOINT" --data "$DATA" --split SPLIT --config
# clotho/finetune ... -- --dict-file "$DICT_FILE"` per split; arguments are added to the task options.
# Optional: CHECKPOINT, SPLITS (default: test), MEDIA_DIR, DRY_RUN=1 (print the commands).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of audio_caption_{train,valid,test}.tsv (unival prepare clotho --out)"
require_var SAVE_DIR "folder of the training run (checkpoint_best.pt) and of the results"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
evaluate_splits audio_caption clotho/finetune "test" -- "$@"
