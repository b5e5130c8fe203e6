#!/usr/bin/env bash
# COCO captioning (Karpathy splits), stage 2: CIDEr optimisation by self-critical sequence training.
# Continues from the cross-entropy stage (run_scripts/coco_caption/train.sh) with configs/coco_caption/scst.yaml
# (every hyperparameter is there), keeping the checkpoint with the best CIDEr-D on the valid split.
# Paper: CIDEr 137.0 on the Karpathy test split.
#
# Data first: the same DATA as train.sh (unival prepare coco-caption --karpathy-json dataset_coco.json --out "$DATA").
# Example:
#   DATA=data/coco_caption MEDIA_DIR=/datasets/coco INIT_CHECKPOINT=runs/coco_caption/checkpoint_best.pt \
#   DICT_FILE=bart.base/dict.txt SAVE_DIR=runs/coco_caption_scst bash run_scripts/coco_caption/scst.sh
# Runs `unival train coco_caption/scst --data "$DATA" --save-dir "$SAVE_DIR" -- --finetune-from-model
# "$INIT_CHECKPOINT" --dict-file "$DICT_FILE"` plus the options of the GPUs found and the script's arguments.
# Optional: NUM_GPUS, PRECISION, NUM_WORKERS, MEDIA_DIR, DRY_RUN=1 (run_scripts/common.sh).
# Then: SAVE_DIR=runs/coco_caption_scst bash run_scripts/coco_caption/evaluate.sh (with DATA, DICT_FILE).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of caption_{train,valid,test}.tsv (unival prepare coco-caption --out)"
require_var SAVE_DIR "folder for the checkpoints and logs of the SCST run"
require_var INIT_CHECKPOINT "checkpoint_best.pt of the cross-entropy stage (run_scripts/coco_caption/train.sh)"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
finetune coco_caption/scst "$@"
