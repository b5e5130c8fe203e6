#!/usr/bin/env bash
# RefCOCO+ (UNC splits) visual grounding.
# Scores CHECKPOINT (default: SAVE_DIR/checkpoint_best.pt from train.sh) on the valid, testA and testB splits of
# DATA, with the task options of configs/refcoco_plus/finetune.yaml; writes SAVE_DIR/<split>_results.json and
# SAVE_DIR/<split>_predictions.json. Paper: Acc@0.5 82.2 val / 86.9 testA / 75.3 testB.
#
# Data first (refcoco_plus_{train,valid,testA,testB}.tsv into DATA):
#   unival prepare refcoco --refs "refcoco+/refs(unc).p" --instances refcoco+/instances.json --prefix refcoco_plus \
#     --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/refcoco_plus MEDIA_DIR=/datasets/coco DICT_FILE=bart.base/dict.txt SAVE_DIR=runs/refcoco_plus \
#   bash run_scripts/refcoco_plus/evaluate.sh
# Runs `unival evaluate --task refcoco --checkpoint "$CHECKPOINT" --data "$DATA" --split SPLIT --config
# refcoco_plus/finetune ... -- --dict-file "$DICT_FILE"` per split; arguments are added to the task options.
# Optional: CHECKPOINT, SPLITS (default: valid testA testB), MEDIA_DIR, DRY_RUN=1 (print the commands).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of refcoco_plus_{train,valid,testA,testB}.tsv (unival prepare refcoco --out)"
require_var SAVE_DIR "folder of the training run (checkpoint_best.pt) and of the results"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
evaluate_splits refcoco refcoco_plus/finetune "valid testA testB" -- "$@"
