"""``unival train CONFIG``: turns a YAML experiment config into a ``fairseq-train`` command and runs it.

A config is a flat map of fairseq-train options (``lr: 1.0e-4``, ``arch: unival_tiny``); ``includes`` lists
configs it builds on (paths relative to it), later keys winning. Paths and hardware come from the command
line, hyperparameters from the YAML.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

import unival
from unival.allocator import add_malloc_argument, environment_or_exit

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
if not CONFIG_ROOT.is_dir():  # source checkout: configs/ sits beside the package
    CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"


def find_config(name: str) -> Path:
    """A config file path, or a name under the shipped configs folder (``caption/demo``)."""
    candidates = [Path(name), CONFIG_ROOT / name, CONFIG_ROOT / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise FileNotFoundError(f"config {name!r} not found (looked at {', '.join(str(p) for p in candidates)})")


def load_config(path: Path, _seen=()) -> Dict[str, Any]:
    """Options of a config with its ``includes`` merged in (included first, this file's keys winning)."""
    if path in _seen:
        raise ValueError(f"{path}: includes itself through {' -> '.join(map(str, _seen))}")
    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a map of fairseq-train options, got {type(data).__name__}")
    merged: Dict[str, Any] = {}
    for include in data.pop("includes", []) or []:
        merged.update(load_config((path.parent / include).resolve(), _seen + (path,)))
    merged.update(data)
    return merged


def options_to_argv(options: Dict[str, Any]) -> List[str]:
    """``{"max_epoch": 5, "fp16": True, "adam_betas": "(0.9,0.999)"}`` -> fairseq-train arguments."""
    argv: List[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag] + [str(item) for item in value]
        else:
            argv += [flag, str(value)]
    return argv


def plugin_dir() -> str:
    """The folder to give ``--user-dir``: the imported unival package."""
    return str(Path(unival.__file__).resolve().parent)


def task_options_argv(config: str) -> List[str]:
    """The options of a config that configure its task (data layout, vocabulary, resolution, decoding), as
    arguments: evaluating with the training config's task needs these and nothing else."""
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    options = load_config(find_config(config))
    task = options.get("task")
    if task not in TASK_DATACLASS_REGISTRY:
        raise ValueError(f"config {config!r} names no registered task (task: {task!r})")
    fields = TASK_DATACLASS_REGISTRY[task].__dataclass_fields__
    # a field whose default interpolates a model option (the audio sample rate) is the model's: fairseq's parsers
    # give the task no option for it
    own = {key for key, spec in fields.items()
           if key != "data" and not (isinstance(spec.default, str) and spec.default.startswith("${"))}
    return options_to_argv({key: value for key, value in options.items() if key in own})


def given_value(argv: List[str], flag: str) -> Optional[str]:
    """The value of ``flag`` in ``argv`` (``--flag V`` or ``--flag=V``; the last one given), or None."""
    value = None
    for index, item in enumerate(argv):
        if item == flag and index + 1 < len(argv):
            value = argv[index + 1]
        elif item.startswith(flag + "="):
            value = item[len(flag) + 1:]
    return value


def without_other_criterions_options(options: Dict[str, Any], criterion: Optional[str]) -> Dict[str, Any]:
    """A config's options less those of its criterion that ``criterion``, chosen on the command line instead,
    does not take (fairseq-train would refuse them as unrecognized, e.g. --label-smoothing with SCST)."""
    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY

    configured = options.get("criterion")
    if not criterion or criterion == configured or configured not in CRITERION_DATACLASS_REGISTRY \
            or criterion not in CRITERION_DATACLASS_REGISTRY:
        return options
    theirs = set(CRITERION_DATACLASS_REGISTRY[configured].__dataclass_fields__)
    kept = set(CRITERION_DATACLASS_REGISTRY[criterion].__dataclass_fields__)
    return {key: value for key, value in options.items() if key not in theirs - kept}


def scaled_schedule(options: Dict[str, Any], extra: List[str]) -> List[str]:
    """``--total-num-update`` for a ``--max-epoch`` given in ``extra`` other than the config's, scaled with it, so
    that the learning rate still decays over the whole run (with the config's, a shorter run stops before the rate
    has decayed, a longer one trains its last epochs at the final rate). Nothing when ``extra`` sets the schedule's
    length itself or the config has no such schedule."""
    epochs = given_value(extra, "--max-epoch")
    if epochs is None or given_value(extra, "--total-num-update") is not None or given_value(extra, "--max-update") \
            or not options.get("max_epoch") or not options.get("total_num_update"):
        return []
    total = max(1, round(int(options["total_num_update"]) * int(epochs) / int(options["max_epoch"])))
    if total == int(options["total_num_update"]):
        return []
    print(f"[unival] --max-epoch {epochs} instead of the config's {options['max_epoch']}: --total-num-update {total} "
          f"(the config's {options['total_num_update']} scaled), so that the learning rate schedule spans the run",
          flush=True)
    return ["--total-num-update", str(total)]


def train_command(config: str, data: str, save_dir: str, extra: Optional[List[str]] = None) -> List[str]:
    options = load_config(find_config(config))
    options.pop("command", None)
    extra = list(extra or [])
    options = without_other_criterions_options(options, given_value(extra, "--criterion"))
    argv = [data, "--user-dir", plugin_dir(), "--save-dir", save_dir] + options_to_argv(options)
    return ["fairseq-train"] + argv + extra + scaled_schedule(options, extra)


def check_precision_options(argv: List[str]) -> None:
    """Refuses fairseq's ``--bf16`` without ``--tpu``: fairseq turns it into a TPU run (its option parser sets
    ``--tpu``), which on a GPU or CPU stops at startup inside fairseq looking for torch_xla."""
    bf16 = [flag for flag in ("--bf16", "--memory-efficient-bf16") if flag in argv]
    if bf16 and "--tpu" not in argv:
        raise ValueError(f"{bf16[0]} makes fairseq-train a TPU run (fairseq sets --tpu with it) and fails on GPUs and "
                         "CPUs: use --autocast-bf16 (bfloat16 autocast, float32 weights) or --fp16")


def add_arguments(parser) -> None:
    parser.add_argument("config", help="YAML config: a path or a name under configs/ such as caption/demo")
    parser.add_argument("--data", required=True, help="folder holding the split TSVs")
    parser.add_argument("--save-dir", required=True, help="folder for checkpoints and logs")
    parser.add_argument("--dry-run", action="store_true", help="print the fairseq-train command and stop")
    add_malloc_argument(parser)
    parser.epilog = "More fairseq-train options can follow `--`, e.g. `-- --max-epoch 2 --lr 5e-4`."


def run(args) -> int:
    try:
        command = train_command(args.config, args.data, args.save_dir, args.passthrough)
        check_precision_options(command)
    except (ValueError, OSError) as error:
        print(f"unival train: error: {error}", file=sys.stderr)
        return 2
    env, allocator = environment_or_exit(args.malloc, "train")
    print("+ " + " ".join(shlex.quote(part) for part in command), flush=True)
    print(f"[unival] {allocator}", flush=True)
    if args.dry_run:
        return 0
    executable = Path(sys.executable).with_name("fairseq-train")
    command[0] = str(executable) if executable.exists() else command[0]
    return run_fairseq(command, env, "unival train")


ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit)): (.+)$")
KEPT_OUTPUT = 1 << 16  # bytes of the end of fairseq's error output searched for the reason it stopped


def stopping_reason(output: str) -> Optional[str]:
    """The last ``SomeError: message`` line of a traceback in ``output`` (the exception that ended the run; for
    one raised in a data-loader worker, its own), as ``message (SomeError)``."""
    for line in reversed(output.splitlines()):
        match = ERROR_LINE.match(line.strip())
        if match:
            return f"{match.group(2)} ({match.group(1)})"
    return None


def run_fairseq(command: List[str], env: Dict[str, str], who: str) -> int:
    """Runs a fairseq command line, its error output passed through as it comes (progress bars included), and,
    when it fails, ends with one line giving the reason the traceback above ends with: fairseq's tracebacks
    (three chained ones for an error in a data-loader worker) put the message of a bad row or a missing file in
    their middle or last line."""
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    kept = b""
    try:
        while True:
            chunk = os.read(process.stderr.fileno(), 1 << 14)
            if not chunk:
                break
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
            kept = (kept + chunk)[-KEPT_OUTPUT:]
    except BaseException:  # Ctrl-C, or our own error output gone: the run would block on its full pipe
        process.kill()
        raise
    finally:
        status = process.wait()
        process.stderr.close()
    reason = stopping_reason(kept.decode("utf-8", errors="replace")) if status else None
    if reason:
        print(f"{who}: fairseq-train stopped: {reason}", file=sys.stderr, flush=True)
    return status
