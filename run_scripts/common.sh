# Shared helpers of the benchmark scripts in run_scripts/<benchmark>/ (sourced, not run). The scripts pass paths
# and hardware only: every hyperparameter is in configs/<benchmark>/*.yaml.
#
# Variables read here:
#   NUM_GPUS        GPUs to train on (default: the entries of CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`; 0: CPU)
#   PRECISION       fp16 (default on GPUs, the paper's), bf16 (autocast, float32 weights) or fp32; on the CPU fp32
#                   (default) or bf16 (autocast; refused on a CPU without bfloat16 instructions, see README,
#                   Performance). Evaluation runs in float32 unless PRECISION is set.
#   NUM_WORKERS     data-loading processes per GPU (default: fairseq's)
#   MEDIA_DIR       folder that the media paths of the TSVs start from (default: DATA)
#   DRY_RUN=1       print the commands instead of running them
#   UNIVAL_CMD      the unival command (default: <repo>/.venv/bin/unival, or $UNIVAL_VENV/bin/unival, else PATH)
#   UNIVAL_MALLOC   memory allocator of training: auto (default: tcmalloc, else jemalloc, where installed),
#                   tcmalloc, jemalloc, glibc or a library's path (read by `unival train`, see its --malloc)

UNIVAL_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UNIVAL_CONFIGS="$UNIVAL_REPO/configs"
# The configs give batch_size and update_freq per GPU for the original's node of 8 GPUs; other GPU counts get the
# update_freq that keeps the global batch, so the schedule of the config (total_num_update) stays right.
REFERENCE_GPUS=8

fail() {
  echo "error: $*" >&2
  exit 2
}

# require_var NAME DESCRIPTION: stops naming NAME when it is unset or empty.
require_var() {
  [ -n "${!1:-}" ] || fail "$1 is not set: $2"
}

# require_file NAME... / require_dir NAME...: the path in each variable must exist (checked before a long run).
require_file() {
  local name
  for name in "$@"; do
    [ -f "${!name}" ] || fail "$name=${!name}: no such file"
  done
}
require_dir() {
  local name
  for name in "$@"; do
    [ -d "${!name}" ] || fail "$name=${!name}: no such folder"
  done
}

# gpu_count: NUM_GPUS, else the devices CUDA_VISIBLE_DEVICES lists, else the GPUs nvidia-smi sees, else 0.
gpu_count() {
  if [ -n "${NUM_GPUS:-}" ]; then
    [[ "$NUM_GPUS" =~ ^[0-9]+$ ]] || fail "NUM_GPUS=$NUM_GPUS: expected a whole number (0 trains on the CPU)"
    echo "$NUM_GPUS"
  elif [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    # "" and "-1" hide every GPU
    local devices="${CUDA_VISIBLE_DEVICES//[[:space:]]/}"
    if [ -z "$devices" ] || [ "$devices" = "-1" ]; then
      echo 0
    else
      local -a entries
      IFS=',' read -r -a entries <<< "$devices"
      echo "${#entries[@]}"
    fi
  elif command -v nvidia-smi > /dev/null 2>&1; then
    nvidia-smi -L 2> /dev/null | grep -c '^GPU ' || true
  else
    echo 0
  fi
}

# config_update_freq NAME: the update_freq of configs/NAME.yaml (1 when absent). Read without Python, so each
# benchmark config states its own batch_size and update_freq (tests/unival/test_run_scripts.py checks this).
config_update_freq() {
  local file="$UNIVAL_CONFIGS/$1.yaml"
  [ -f "$file" ] || fail "config $1 not found ($file)"
  local value
  value="$(sed -n 's/^update_freq:[[:space:]]*\([0-9][0-9]*\)[[:space:]]*\(#.*\)\{0,1\}$/\1/p' "$file" | tail -n 1)"
  echo "${value:-1}"
}

# config_value KEY FILE: the value of a top-level `KEY: value` of a config, else of the config it includes (read
# without Python; comments after the value dropped); nothing when neither sets it.
config_value() {
  local key="$1" file="$2" line include
  line="$(sed -n "s/^$key:[[:space:]]*\([^#]*[^#[:space:]]\)[[:space:]]*\(#.*\)\{0,1\}\$/\1/p" "$file" | tail -n 1)"
  if [ -n "$line" ]; then
    echo "$line"
    return
  fi
  include="$(sed -n 's/^includes: *\[\([^],]*\)\].*/\1/p' "$file")"
  [ -z "$include" ] || config_value "$key" "$(dirname "$file")/$include"
}

# option_value FLAG ARGS...: the value of FLAG in ARGS (--flag V or --flag=V; the last one given), or nothing.
option_value() {
  local flag="$1" value="" previous="" argument
  shift
  for argument in "$@"; do
    [ "$previous" != "$flag" ] || value="$argument"
    case "$argument" in "$flag="*) value="${argument#"$flag="}" ;; esac
    previous="$argument"
  done
  echo "$value"
}

# validated_splits ARGS...: the splits a run reads besides train: --valid-subset's (default valid), none with
# --disable-validation.
validated_splits() {
  case " $* " in *" --disable-validation "*) return ;; esac
  local subsets
  subsets="$(option_value --valid-subset "$@")"
  echo "${subsets:-valid}" | tr ',' ' '
}

# check_task_files CONFIG ARGS...: DATA holds the training and validation TSV files of configs/CONFIG.yaml (its
# tsv_prefix, or ARGS' --tsv-prefix), checked before a long start-up; a dry run only warns.
check_task_files() {
  local config="$1" prefix split path message others other
  shift
  prefix="$(option_value --tsv-prefix "$@")"
  [ -n "$prefix" ] || prefix="$(config_value tsv_prefix "$UNIVAL_CONFIGS/$config.yaml")"
  for split in train $(validated_splits "$@"); do
    path="$DATA/${prefix:+${prefix}_}$split.tsv"
    [ ! -f "$path" ] || continue
    message="$path not found (configs/$config.yaml reads ${prefix:+${prefix}_}$split.tsv from DATA)"
    others=""
    for other in "$DATA"/*_"$split".tsv; do
      [ ! -f "$other" ] || others="$others, ${other##*/}"
    done
    [ -z "$others" ] || message="$message; DATA has ${others#, }: unival prepare names files by --prefix, or pass --tsv-prefix"
    [ "$split" = train ] || message="$message; without validation data pass --disable-validation"
    [ "${DRY_RUN:-0}" != "0" ] || fail "$message"
    echo "warning: $message" >&2
  done
}

# check_precision GPUS: stops unless PRECISION is unset, fp32, bf16, or fp16 with GPUs.
check_precision() {
  case "${PRECISION:-}" in
    ""|fp32|bf16) ;;
    fp16) (( $1 > 0 )) || fail "PRECISION=fp16 needs a GPU: on the CPU use bf16 (autocast) or fp32" ;;
    *) fail "PRECISION=$PRECISION: expected fp16, bf16 or fp32" ;;
  esac
}

# hardware_args CONFIG: sets HARDWARE_ARGS, the fairseq-train options for the GPUs found (world size, the
# update_freq that keeps the config's global batch, precision, data workers).
hardware_args() {
  local gpus devices update_freq reference per_device default_precision=fp32
  gpus="$(gpu_count)"
  update_freq="$(config_update_freq "$1")"
  devices=$(( gpus > 0 ? gpus : 1 ))
  reference=$(( update_freq * REFERENCE_GPUS ))
  per_device=$(( (reference + devices / 2) / devices ))
  per_device=$(( per_device > 0 ? per_device : 1 ))
  if (( per_device * devices != reference )); then
    echo "warning: $1 updates on $reference device batches (update_freq $update_freq x $REFERENCE_GPUS GPUs);" \
         "$devices devices with --update-freq $per_device give $(( per_device * devices )), so its total_num_update" \
         "no longer matches its epochs: pass --total-num-update and --warmup-updates as arguments" >&2
  fi
  check_precision "$gpus"
  HARDWARE_ARGS=(--distributed-world-size "$devices" --update-freq "$per_device")
  if (( gpus > 0 )); then
    default_precision=fp16
  else
    HARDWARE_ARGS+=(--cpu)
  fi
  # bf16: float32 weights and bfloat16 autocast on either device (on the CPU fast with AVX512-BF16 or AMX); not
  # fairseq's --bf16, which means a TPU run. fp16, the default on GPUs, is fairseq's --fp16.
  case "${PRECISION:-$default_precision}" in
    fp16) HARDWARE_ARGS+=(--fp16) ;;
    bf16) HARDWARE_ARGS+=(--autocast-bf16) ;;
  esac
  if [ -n "${NUM_WORKERS:-}" ]; then
    HARDWARE_ARGS+=(--num-workers "$NUM_WORKERS")
  fi
}

# evaluation_args: sets EVALUATION_ARGS, the `unival evaluate` options for the GPUs found: --cpu without one; on
# GPUs --fp16 or --bf16 where PRECISION is set to it (unset: float32). On the CPU prediction stays float32: a
# bfloat16 model predicts no faster there (README, Evaluation).
evaluation_args() {
  local gpus
  gpus="$(gpu_count)"
  check_precision "$gpus"
  if (( gpus == 0 )); then
    EVALUATION_ARGS=(--cpu)
  else
    case "${PRECISION:-fp32}" in
      fp16) EVALUATION_ARGS=(--fp16) ;;
      bf16) EVALUATION_ARGS=(--bf16) ;;
      fp32) EVALUATION_ARGS=() ;;
    esac
  fi
}

# media_args: sets MEDIA_ARGS (--media-dir when MEDIA_DIR is set).
media_args() {
  MEDIA_ARGS=()
  if [ -n "${MEDIA_DIR:-}" ]; then
    require_dir MEDIA_DIR
    MEDIA_ARGS=(--media-dir "$MEDIA_DIR")
  fi
}

unival_command() {
  if [ -n "${UNIVAL_CMD:-}" ]; then
    echo "$UNIVAL_CMD"
  elif [ -x "${UNIVAL_VENV:-$UNIVAL_REPO/.venv}/bin/unival" ]; then
    echo "${UNIVAL_VENV:-$UNIVAL_REPO/.venv}/bin/unival"
  elif command -v unival > /dev/null 2>&1; then
    command -v unival
  else
    fail "the unival command was not found: create the environment (bash run_scripts/setup_env.sh), put unival" \
         "on PATH or set UNIVAL_CMD"
  fi
}

# finetune CONFIG [fairseq-train options]: `unival train CONFIG --data DATA --save-dir SAVE_DIR -- ...`, initialised
# from INIT_CHECKPOINT with BART's DICT_FILE, with the hardware options (and --media-dir) before the caller's options,
# which so win. --finetune-from-model (not --restore-file) resumes from SAVE_DIR/checkpoint_last.pt when a stopped
# run is started again, and stops when the file is missing. DRY_RUN=1 prints the fairseq-train command only.
finetune() {
  local config="$1"
  shift
  require_dir DATA
  require_file INIT_CHECKPOINT DICT_FILE
  check_task_files "$config" "$@"
  hardware_args "$config"
  media_args
  local unival
  unival="$(unival_command)"
  local -a dry_run=()
  [ "${DRY_RUN:-0}" = "0" ] || dry_run=(--dry-run)
  "$unival" train "$config" --data "$DATA" --save-dir "$SAVE_DIR" "${dry_run[@]}" -- "${MEDIA_ARGS[@]}" \
    "${HARDWARE_ARGS[@]}" --finetune-from-model "$INIT_CHECKPOINT" --dict-file "$DICT_FILE" "$@"
}

# evaluate_splits TASK CONFIG "SPLITS" [unival evaluate options] -- [task options]: for each split (the SPLITS
# variable overrides the list), `unival evaluate --task TASK --checkpoint CHECKPOINT --data DATA --split SPLIT
# --config CONFIG` with BART's DICT_FILE; CHECKPOINT defaults to SAVE_DIR/checkpoint_best.pt, and the scores and
# predictions go to SAVE_DIR/<split>_results.json and SAVE_DIR/<split>_predictions.json. DRY_RUN=1 prints them.
evaluate_splits() {
  local task="$1" config="$2" splits="${SPLITS:-$3}"
  shift 3
  local -a options=()
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    options+=("$1")
    shift
  done
  [ "$#" -eq 0 ] || shift
  CHECKPOINT="${CHECKPOINT:-$SAVE_DIR/checkpoint_best.pt}"
  require_dir DATA
  require_file DICT_FILE
  # a dry run may print the commands before training has written the checkpoint
  [ "${DRY_RUN:-0}" != "0" ] || require_file CHECKPOINT
  media_args
  evaluation_args
  local unival split
  unival="$(unival_command)"
  for split in $splits; do
    local -a command=("$unival" evaluate --task "$task" --checkpoint "$CHECKPOINT" --data "$DATA" --split "$split"
                      --config "$config" "${EVALUATION_ARGS[@]}" "${options[@]}"
                      --save-predictions "$SAVE_DIR/${split}_predictions.json"
                      --output "$SAVE_DIR/${split}_results.json" -- --dict-file "$DICT_FILE" "${MEDIA_ARGS[@]}" "$@")
    if [ "${DRY_RUN:-0}" = "0" ]; then
      "${command[@]}"
    else
      printf '+'
      printf ' %q' "${command[@]}"
      echo
    fi
  done
}
