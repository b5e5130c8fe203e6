#!/usr/bin/env bash
# RefCOCOg (UMD splits) visual grounding.
# Finetunes UnIVAL base with configs/refcocog/finetune.yaml (every hyperparameter is there), keeping the
# checkpoint with the best score on the valid split. Paper: Acc@0.5 84.7 val / 85.2 test.
#
# Data first (refcocog_{train,valid,test}.tsv into DATA):
#   unival prepare refcoco --refs "refcocog/refs(umd).p" --instances refcocog/instances.json --prefix refcocog \
#     --media-dir "$MEDIA_DIR" --out "$DATA"
# Example:
#   DATA=data/refcocog MEDIA_DIR=/datasets/coco INIT_CHECKPOINT=unival_s2_hs.pt DICT_FILE=bart.base/dict.txt \
#   SAVE_DIR=runs/refcocog bash run_scripts/refcocog/train.sh
# Runs `unival train refcocog/finetune --data "$DATA" --save-dir "$SAVE_DIR" -- --finetune-from-model
# "$INIT_CHECKPOINT" --dict-file "$DICT_FILE"` plus the options of the GPUs found and the script's arguments.
# Optional: NUM_GPUS, PRECISION, NUM_WORKERS, MEDIA_DIR, DRY_RUN=1 (run_scripts/common.sh).
# Then: bash run_scripts/refcocog/evaluate.sh with the same variables.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of refcocog_{train,valid,test}.tsv (unival prepare refcoco --out)"
require_var SAVE_DIR "folder for the checkpoints and logs of this run"
require_var INIT_CHECKPOINT "the pretrained UnIVAL checkpoint to finetune (e.g. unival_s2_hs)"
require_var DICT_FILE "BART's dict.txt (the vocabulary of every UnIVAL checkpoint)"
finetune refcocog/finetune "$@"
