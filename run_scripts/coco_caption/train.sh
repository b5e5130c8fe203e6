#!/usr/bin/env bash
# COCO captioning (Karpathy splits), stage 1: cross-entropy finetuning.
# Finetunes UnIVAL base with configs/coco_caption/finetune.yaml (every hyperparameter is there), keeping the
# checkpoint with the best score on the valid split. Paper: CIDEr 137.0 on the Karpathy test split.
# Then run_scripts/coco_caption/scst.sh (CIDEr optimisation) from this run's checkpoint_best.pt.
#
# Data first (caption_{train,valid,test}.tsv into DATA):
#   unival prepare coco-caption --karpathy-json dataset_coco.json --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/coco_caption MEDIA_DIR=/datasets/coco INIT_CHECKPOINT=unival_s2_hs.pt DICT_FILE=bart.base/dict.txt \
#   SAVE_DIR=runs/coco_caption bash run_scripts/coco_caption/train.sh
# Runs `unival train coco_caption/finetune --data "$DATA" --save-dir "$SAVE_DIR" -- --finetune-from-model
# "$INIT_CHECKPOINT" --dict-file "$DICT_FILE"` plus the options of the GPUs found and the script's arguments.
# Optional: NUM_GPUS, PRECISION, NUM_WORKERS, MEDIA_DIR, DRY_RUN=1 (run_scripts/common.sh).
# Then: bash run_scripts/coco_caption/evaluate.sh with the same variables.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of caption_{train,valid,test}.tsv (unival prepare coco-caption --out)"
require_var SAVE_DIR "folder for the checkpoints and logs of this run"
require_var INIT_CHECKPOINT "the pretrained UnIVAL checkpoint to finetune (e.g. unival_s2_hs)"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
finetune coco_caption/finetune "$@"
