#!/usr/bin/env bash
# RefCOCOg (UMD splits) visual grounding.
# Scores CHECKPOINT (default: SAVE_DIR/checkpoint_best.pt from train.sh) on the valid and test splits of
# DATA, with the task options of configs/refcocog/finetune.yaml; writes SAVE_DIR/<split>_results.json and
# SAVE_DIR/<split>_predictions.json. Paper: Acc@0.5 84.7 val / 85.2 test.
#
# Data first (refcocog_{train,valid,test}.tsv into DATA):
#   unival prepare refcoco --refs "refcocog/refs(umd).p" --instances refcocog/instances.json --prefix refcocog \
#     --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/refcocog MEDIA_DIR=/datasets/coco DICT_FILE=bart.base/dict.txt SAVE_DIR=runs/refcocog \
#   bash run_scripts/refcocog/evaluate.sh
# Runs `unival evaluate --task refcoco --checkpoint "$CHECKPOINT" --data "$DATA" --split SPLIT --config
# refcocog/finetune ... -- --dict-file "$DICT_FILE"` per split; arguments are added to the task options.
# Optional: CHECKPOINT, SPLITS (default: valid test), MEDIA_DIR, DRY_RUN=1 (print the commands).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of refcocog_{train,valid,test}.tsv (unival prepare refcoco --out)"
require_var SAVE_DIR "folder of the training run (checkpoint_best.pt) and of the results"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
evaluate_splits refcoco refcocog/finetune "valid test" -- "$@"
