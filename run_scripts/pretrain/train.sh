#!/usr/bin/env bash
# UnIVAL pretraining: the multimodal curriculum, one stage after the other, each starting from the last checkpoint of
# the stage before (configs/pretrain/*.yaml hold every hyperparameter):
#   stage1_image   image-text streams, lr 2e-4 (from BART_CHECKPOINT, bart.base/model.pt, as the paper; or from
#                  INIT_CHECKPOINT, a unival checkpoint; else from scratch)
#   stage2_video   adds the video-text stream, lr 1e-4 (new video encoder: VIDEO_ENCODER_PATH)
#   stage3_audio   adds the audio-text stream, lr 1e-4 (new audio encoder: AUDIO_ENCODER_PATH)
#   hires          480 px images, 16 frames at 384 px, lr 5e-5
# Each stage writes SAVE_DIR/<stage>; finetune from SAVE_DIR/hires/checkpoint_last.pt.
#
# Data first: DATA holds one TSV per stream and split (image_train.tsv, video_train.tsv, audio_train.tsv and the
# same with _valid), written by `unival prepare pretrain` from the tasks' TSV files, e.g.
#   unival prepare pretrain --stream image --split train --caption caption_train.tsv --vqa vqa_train.tsv \
#     --grounding refcoco_train.tsv --out "$DATA"
# Without valid files pass --disable-validation (every stage's training and validation files are checked before the
# first stage trains).
# Example:
#   DATA=data/pretrain MEDIA_DIR=/datasets DICT_FILE=bart.base/dict.txt BART_CHECKPOINT=bart.base/model.pt \
#   SAVE_DIR=runs/pretrain bash run_scripts/pretrain/train.sh
# Optional: STAGES (the stages to run, in order; default all four), INIT_CHECKPOINT (a unival checkpoint to start
# the first of them from; by default the checkpoint of the stage before it in SAVE_DIR), VIDEO_ENCODER_PATH
# (Kinetics weights for stage2_video's new video encoder), AUDIO_ENCODER_PATH (PANN weights for stage3_audio's new audio encoder), and NUM_GPUS, PRECISION, NUM_WORKERS, MEDIA_DIR, DRY_RUN=1
# (run_scripts/common.sh). The script's arguments go to every stage's fairseq-train (e.g. --max-update 1000).
# A stopped run started again skips the stages that finished (SAVE_DIR/<stage>/finished) and resumes the one it
# stopped in from its checkpoint_last.pt.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_var DATA "folder of the stream TSVs (unival prepare pretrain --out)"
require_var SAVE_DIR "folder for the stages' checkpoints and logs"
require_var DICT_FILE "BART's dict.txt: every stage must use the same vocabulary (and finetuning too)"
require_dir DATA
require_file DICT_FILE
curriculum="stage1_image stage2_video stage3_audio hires"
stages="${STAGES:-$curriculum}"
unival="$(unival_command)"
media_args
previous="${INIT_CHECKPOINT:-}"
[ -z "$previous" ] || require_file INIT_CHECKPOINT
if [ -n "${BART_CHECKPOINT:-}" ]; then
  require_file BART_CHECKPOINT
  [ -z "$previous" ] || fail "BART_CHECKPOINT and INIT_CHECKPOINT both set: stage 1 starts from one of them"
fi
[ -z "${VIDEO_ENCODER_PATH:-}" ] || require_file VIDEO_ENCODER_PATH
[ -z "${AUDIO_ENCODER_PATH:-}" ] || require_file AUDIO_ENCODER_PATH

# Before the first stage trains: every stage's configuration, training and validation files (a later stage's
# missing file would otherwise stop the run after the earlier stages have trained). A dry run only warns.
splits="train $(validated_splits "$@")"
for stage in $stages; do
  [ -f "$UNIVAL_CONFIGS/pretrain/$stage.yaml" ] || fail "STAGES: no stage $stage (configs/pretrain/$stage.yaml)"
  case " $* " in *" --streams "*) continue ;; esac  # the caller chose the streams
  for stream in $(config_value streams "$UNIVAL_CONFIGS/pretrain/$stage.yaml" | tr ',' ' '); do
    for split in $splits; do
      [ ! -f "$DATA/${stream}_$split.tsv" ] || continue
      message="stage $stage trains on the $stream stream: $DATA/${stream}_$split.tsv not found (unival prepare pretrain --stream $stream --split $split --out DATA)"
      [ "$split" = train ] || message="$message; without validation data pass --disable-validation"
      [ "${DRY_RUN:-0}" != "0" ] || fail "$message"
      echo "[pretrain] warning: $message" >&2
    done
  done
done

# The first stage run continues the curriculum from the stage before it in SAVE_DIR, unless INIT_CHECKPOINT says
# otherwise (or it is stage 1, which starts from BART_CHECKPOINT or from scratch).
first="${stages%% *}"
if [ -z "$previous" ] && [ "$first" != stage1_image ]; then
  before="$(echo "$curriculum" | tr ' ' '\n' | grep -B1 -x "$first" | head -n 1)"
  if [ "$before" != "$first" ] && [ -f "$SAVE_DIR/$before/checkpoint_last.pt" ]; then
    previous="$SAVE_DIR/$before/checkpoint_last.pt"
    echo "[pretrain] stage $first starts from $previous, the stage before it (INIT_CHECKPOINT to choose another)" >&2
  else
    echo "[pretrain] warning: stage $first starts from scratch: no INIT_CHECKPOINT and no $SAVE_DIR/$before/checkpoint_last.pt" >&2
  fi
fi

for stage in $stages; do
  hardware_args "pretrain/$stage"
  options=(--dict-file "$DICT_FILE")
  [ -z "$previous" ] || options+=(--finetune-from-model "$previous")
  # pretrained weights go to the stage that adds the part they are for; later stages take it from the checkpoint
  [ "$stage" != stage1_image ] || [ -z "${BART_CHECKPOINT:-}" ] || options+=(--bart-path "$BART_CHECKPOINT")
  [ "$stage" != stage2_video ] || [ -z "${VIDEO_ENCODER_PATH:-}" ] || options+=(--video-encoder-path "$VIDEO_ENCODER_PATH")
  [ "$stage" != stage3_audio ] || [ -z "${AUDIO_ENCODER_PATH:-}" ] || options+=(--audio-encoder-path "$AUDIO_ENCODER_PATH")
  dry_run=()
  [ "${DRY_RUN:-0}" = "0" ] || dry_run=(--dry-run)
  done_file="$SAVE_DIR/$stage/finished"
  if [ "${DRY_RUN:-0}" = "0" ] && [ -f "$done_file" ]; then
    echo "[pretrain] stage $stage already finished ($done_file; delete it to train the stage further)" >&2
  else
    echo "[pretrain] stage $stage -> $SAVE_DIR/$stage" >&2
    "$unival" train "pretrain/$stage" --data "$DATA" --save-dir "$SAVE_DIR/$stage" "${dry_run[@]}" -- \
      "${MEDIA_ARGS[@]}" "${HARDWARE_ARGS[@]}" "${options[@]}" "$@"
  fi
  previous="$SAVE_DIR/$stage/checkpoint_last.pt"
  if [ "${DRY_RUN:-0}" = "0" ]; then
    [ -f "$previous" ] || fail "stage $stage wrote no $previous"
    date -u +"%Y-%m-%dT%H:%M:%SZ" > "$done_file"
  fi
done
