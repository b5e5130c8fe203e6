#!/usr/bin/env bash
# RefCOCO (UNC splits) visual grounding.
# Scores CHECKPOINT (default: SAVE_DIR/checkpoint_best.pt from train.sh) on the valid, testA and testB splits of
# DATA, with the task options of configs/refcoco/finetune.yaml; writes SAVE_DIR/<split>_results.json and
# SAVE_DIR/<split>_predictions.json. Paper: Acc@0.5 89.1 val / 91.5 testA / 85.2 testB.
#
# Data first (refcoco_{train,valid,testA,testB}.tsv into DATA):
#   unival prepare refcoco --refs "refcoco/refs(unc).p" --instances refcoco/instances.json --prefix refcoco \
#     --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/refcoco MEDIA_DIR=/datasets/coco DICT_FILE=bart.base/dict.txt SAVE_DIR=runs/refcoco \
#   bash run_scripts/refcoco/evaluate.sh
# Runs `unival evaluate --task refcoco --checkpoint "$CHECKPOINT" --data "$DATA" --split SPLIT --config
# refcoco/finetune ... -- --dict-file "$DICT_FILE"` per split; arguments are added to the task options.
# Optional: CHECKPOINT, SPLITS (default: valid testA testB), MEDIA_DIR, DRY_RUN=1 (print the commands).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of refcoco_{train,valid,testA,testB}.tsv (unival prepare refcoco --out)"
require_var SAVE_DIR "folder of the training run (checkpoint_best.pt) and of the results"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
evaluate_splits refcoco refcoco/finetune "valid testA testB" -- "$@"
