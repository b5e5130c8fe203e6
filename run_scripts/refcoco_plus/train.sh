#!/usr/bin/env bash
# RefCOCO+ (UNC splits) visual grounding.
# Finetunes UnIVAL base with configs/refcoco_plus/finetune.yaml (every hyperparameter is there), keeping the
# checkpoint with the best score on the valid split. Paper: Acc@0.5 82.2 val / 86.9 testA / 75.3 testB.
#
# Data first (refcoco_plus_{train,valid,testA,testB}.tsv into DATA):
#   unival prepare refcoco --refs "refcoco+/refs(unc).p" --instances refcoco+/instances.json --prefix refcoco_plus \
#     --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/refcoco_plus MEDIA_DIR=/datasets/coco INIT_CHECKPOINT=unival_s2_hs.pt DICT_FILE=bart.base/dict.txt \
#   SAVE_DIR=runs/refcoco_plus bash run_scripts/refcoco_plus/train.sh
# Runs `unival train refcoco_plus/finetune --data "$DATA" --save-dir "$SAVE_DIR" -- --finetune-from-model
# "$INIT_CHECKPOINT" --dict-file "$DICT_FILE"` plus the options of the GPUs found and the script's arguments.
# Optional: NUM_GPUS, PRECISION, NUM_WORKERS, MEDIA_DIR, DRY_RUN=1 (run_scripts/common.sh).
# Then: bash run_scripts/refcoco_plus/evaluate.sh with the same variables.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of refcoco_plus_{train,valid,testA,testB}.tsv (unival prepare refcoco --out)"
require_var SAVE_DIR "folder for the checkpoints and logs of this run"
require_var INIT_CHECKPOINT "the pretrained UnIVAL checkpoint to finetune (e.g. unival_s2_hs)"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
finetune refcoco_plus/finetune "$@"
