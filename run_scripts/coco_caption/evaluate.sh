#!/usr/bin/env bash
# COCO captioning (Karpathy splits).
# Scores CHECKPOINT (default: SAVE_DIR/checkpoint_best.pt from train.sh) on the test split of
# DATA, with the task options of configs/coco_caption/finetune.yaml; writes SAVE_DIR/<split>_results.json and
# SAVE_DIR/<split>_predictions.json. Paper: CIDEr 137.0 on the Karpathy test split.
# Either stage: SAVE_DIR of train.sh (cross-entropy) or of scst.sh (CIDEr optimisation).
#
# Data first (caption_{train,valid,test}.tsv into DATA):
#   unival prepare coco-caption --karpathy-json dataset_coco.json --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/coco_caption MEDIA_DIR=/datasets/coco DICT_FILE=bart.base/dict.txt SAVE_DIR=runs/coco_caption \
#   bash run_scripts/coco_caption/evaluate.sh
# Runs `unival evaluate --task caption --checkpoint "$CHECKPOINT" --data "$DATA" --split SPLIT --config
# coco_caption/finetune ... -- --dict-file "$DICT_FILE"` per split; arguments are added to the task options.
# Optional: CHECKPOINT, SPLITS (default: test), MEDIA_DIR, DRY_RUN=1 (print the commands).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of caption_{train,valid,test}.tsv (unival prepare coco-caption --out)"
require_var SAVE_DIR "folder of the training run (checkpoint_best.pt) and of the results"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
evaluate_splits caption coco_caption/finetune "test" -- "$@"
