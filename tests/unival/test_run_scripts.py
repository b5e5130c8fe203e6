"""The benchmark scripts of run_scripts/<benchmark>/: they parse, stop naming the first missing variable, hand paths
and hardware (never hyperparameters) to `unival train` / `unival evaluate`, whose own parsers accept what they get,
and count GPUs from the environment. A stub stands in for the unival command, so no test trains or loads a model."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from fairseq import options

from unival.cli import build_parser, main as cli_main
from unival.train import CONFIG_ROOT, load_config, plugin_dir, task_options_argv, train_command

REPO = Path(__file__).resolve().parents[2]
RUN_SCRIPTS = REPO / "run_scripts"
COMMON = RUN_SCRIPTS / "common.sh"
BENCHMARKS = ["coco_caption", "vqav2", "refcoco", "refcoco_plus", "refcocog", "snli_ve", "msrvtt_caption",
              "msrvtt_qa", "msvd_qa", "audiocaps", "clotho"]
TRAIN_SCRIPTS = {f"{name}/train.sh": f"{name}/finetune" for name in BENCHMARKS}
TRAIN_SCRIPTS["coco_caption/scst.sh"] = "coco_caption/scst"
EVALUATE_SCRIPTS = {f"{name}/evaluate.sh": f"{name}/finetune" for name in BENCHMARKS}
# the splits each evaluate.sh scores by default: those of the paper's numbers that have public answers
DEFAULT_SPLITS = {name: ["test"] for name in BENCHMARKS}
DEFAULT_SPLITS.update(vqav2=["valid"], refcoco=["valid", "testA", "testB"], refcoco_plus=["valid", "testA", "testB"],
                      refcocog=["valid", "test"], snli_ve=["valid", "test"])
SCRIPTS = sorted(TRAIN_SCRIPTS) + sorted(EVALUATE_SCRIPTS)
REFERENCE_GPUS = 8


def required_variables(script: Path):
    return re.findall(r"^require_var (\w+) ", script.read_text(), flags=re.MULTILINE)


@pytest.fixture
def paths(tmp_path):
    """Existing paths for every variable the scripts require, and a stub unival that records its arguments."""
    (tmp_path / "data").mkdir()
    (tmp_path / "save").mkdir()
    for config in set(TRAIN_SCRIPTS.values()):  # the training and validation files each script checks for
        prefix = load_config(CONFIG_ROOT / f"{config}.yaml")["tsv_prefix"]
        for split in ("train", "valid"):
            (tmp_path / "data" / f"{prefix}_{split}.tsv").write_text("")
    for name in ("init.pt", "dict.txt", "save/checkpoint_best.pt"):
        (tmp_path / name).write_text("")
    stub = tmp_path / "unival"
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$STUB_OUT"\n')
    stub.chmod(0o755)
    return {"DATA": str(tmp_path / "data"), "SAVE_DIR": str(tmp_path / "save"),
            "INIT_CHECKPOINT": str(tmp_path / "init.pt"), "DICT_FILE": str(tmp_path / "dict.txt"),
            "UNIVAL_CMD": str(stub), "STUB_OUT": str(tmp_path / "argv")}


def run(command, env, *args):
    """Runs a script (or `bash -c` text) with only ``env`` (plus PATH and HOME) set."""
    full_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}
    argv = ["bash", str(RUN_SCRIPTS / command), *args] if command.endswith(".sh") else ["bash", "-c", command]
    return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=60)


def recorded_argv(paths):
    return Path(paths["STUB_OUT"]).read_text().split("\0")[:-1]


def with_common(body: str) -> str:
    return f"set -euo pipefail; source {shlex.quote(str(COMMON))}; {body}"


# ---- layout and headers ----------------------------------------------------------------------------------------

def test_every_benchmark_has_a_config_and_its_scripts():
    for script, config in {**TRAIN_SCRIPTS, **EVALUATE_SCRIPTS}.items():
        assert (RUN_SCRIPTS / script).is_file(), script
        assert (CONFIG_ROOT / f"{config}.yaml").is_file(), config


@pytest.mark.parametrize("script", SCRIPTS + ["common.sh"])
def test_script_is_valid_bash(script):
    result = subprocess.run(["bash", "-n", str(RUN_SCRIPTS / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_header_says_what_it_reproduces_and_how_to_prepare_the_data(script):
    header = (RUN_SCRIPTS / script).read_text().split("\nset -euo pipefail")[0]
    config = {**TRAIN_SCRIPTS, **EVALUATE_SCRIPTS}[script]
    assert re.search(r"Paper: .*\d", header), "the paper's number"
    assert "unival prepare" in header and "Example:" in header
    assert f"configs/{config}.yaml" in header


# ---- required variables ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_variables_are_named_one_after_the_other(script, paths):
    names = required_variables(RUN_SCRIPTS / script)
    assert names[:2] == ["DATA", "SAVE_DIR"] and "DICT_FILE" in names
    for count, name in enumerate(names):
        result = run(script, {key: paths[key] for key in names[:count]})
        assert result.returncode != 0
        assert f"error: {name} is not set" in result.stderr, result.stderr


def test_a_path_that_does_not_exist_is_named(paths):
    result = run("refcoco/train.sh", {**paths, "INIT_CHECKPOINT": paths["DATA"] + "/missing.pt"})
    assert result.returncode != 0 and "INIT_CHECKPOINT=" in result.stderr and "no such file" in result.stderr


# ---- train scripts ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", sorted(TRAIN_SCRIPTS))
def test_train_script_passes_paths_and_hardware_to_unival_train(script, paths, capsys):
    config = TRAIN_SCRIPTS[script]
    result = run(script, {**paths, "NUM_GPUS": "2"}, "--max-epoch", "1")
    assert result.returncode == 0, result.stderr
    argv = recorded_argv(paths)
    split = argv.index("--")
    assert argv[:split] == ["train", config, "--data", paths["DATA"], "--save-dir", paths["SAVE_DIR"]]
    update_freq = load_config(CONFIG_ROOT / f"{config}.yaml").get("update_freq", 1) * REFERENCE_GPUS // 2
    assert argv[split + 1:] == ["--distributed-world-size", "2", "--update-freq", str(update_freq), "--fp16",
                                "--finetune-from-model", paths["INIT_CHECKPOINT"], "--dict-file", paths["DICT_FILE"],
                                "--max-epoch", "1"]
    # what the real `unival train --dry-run` makes of these arguments
    assert cli_main(argv[:split] + ["--dry-run"] + argv[split:]) == 0
    printed = capsys.readouterr().out
    task = load_config(CONFIG_ROOT / f"{config}.yaml")["task"]
    assert "\n+ fairseq-train " in "\n" + printed  # after the note on the scaled schedule of --max-epoch 1
    assert f" --task {task} " in printed and f" --save-dir {paths['SAVE_DIR']} " in printed


def test_fairseq_takes_the_script_options_the_last_one_winning(paths, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    result = run("refcoco/train.sh", {**paths, "NUM_GPUS": "4", "PRECISION": "bf16", "MEDIA_DIR": str(media),
                                      "NUM_WORKERS": "3"}, "--lr", "1e-6")
    assert result.returncode == 0, result.stderr
    argv = recorded_argv(paths)
    split = argv.index("--")
    command = train_command(argv[1], argv[3], argv[5], argv[split + 1:])
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=command[1:])
    assert (args.task, args.tsv_prefix, args.save_dir) == ("refcoco", "refcoco", paths["SAVE_DIR"])
    assert args.distributed_world_size == 4 and args.update_freq == [8]
    assert args.autocast_bf16 and not (args.bf16 or args.tpu or args.fp16)  # bfloat16 autocast, not a TPU run
    assert args.finetune_from_model == paths["INIT_CHECKPOINT"] and args.dict_file == paths["DICT_FILE"]
    assert args.media_dir == str(media) and args.num_workers == 3
    assert args.lr == [1e-6] and args.batch_size == 8  # the caller's option wins; the config's stays otherwise
    assert args.valid_subset == "valid" and args.best_checkpoint_metric == "acc50"


@pytest.mark.e2e
def test_dry_run_prints_the_fairseq_train_command(paths):
    env = {key: value for key, value in paths.items() if key not in ("UNIVAL_CMD", "STUB_OUT")}
    # the real unival of the environment running the tests (also where it is not the checkout's .venv)
    env["UNIVAL_VENV"] = str(Path(sys.executable).parents[1])
    result = run("refcocog/train.sh", {**env, "DRY_RUN": "1", "NUM_GPUS": "0"})
    assert result.returncode == 0, result.stderr
    command, allocator = result.stdout.rstrip().splitlines()
    assert command.startswith("+ fairseq-train ")
    assert "--task refcoco " in command and f"--save-dir {paths['SAVE_DIR']} " in command
    assert command.endswith(f"--distributed-world-size 1 --update-freq 32 --cpu --finetune-from-model "
                            f"{paths['INIT_CHECKPOINT']} --dict-file {paths['DICT_FILE']}")
    assert allocator.startswith("[unival] memory allocator: ")


# ---- evaluate scripts ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", sorted(EVALUATE_SCRIPTS))
def test_evaluate_script_dry_run_prints_one_unival_evaluate_per_split(script, paths):
    config = EVALUATE_SCRIPTS[script]
    options_of_config = load_config(CONFIG_ROOT / f"{config}.yaml")
    result = run(script, {**paths, "DRY_RUN": "1", "NUM_GPUS": "0"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    splits = DEFAULT_SPLITS[script.split("/")[0]]
    assert len(lines) == len(splits) and not Path(paths["STUB_OUT"]).exists()
    for line, split in zip(lines, splits):
        argv = shlex.split(line)
        assert argv[:3] == ["+", paths["UNIVAL_CMD"], "evaluate"]
        argv = argv[2:]
        args = build_parser(argv).parse_args(argv[:argv.index("--")])
        assert (args.task, args.config, args.split) == (options_of_config["task"], config, split)
        assert args.checkpoint == paths["SAVE_DIR"] + "/checkpoint_best.pt" and args.data == paths["DATA"]
        assert args.output == f"{paths['SAVE_DIR']}/{split}_results.json"
        assert args.ema == bool(options_of_config.get("store_ema"))
        assert args.cpu and not (args.fp16 or args.bf16)  # NUM_GPUS=0: float32 on the CPU
        assert argv[argv.index("--") + 1:] == ["--dict-file", paths["DICT_FILE"]]


# every experiment config (the demos' included, which `unival evaluate --config` is documented with)
ALL_CONFIGS = sorted(str(path.relative_to(CONFIG_ROOT).with_suffix("")) for path in CONFIG_ROOT.glob("*/*.yaml")
                     if path.parent.name != "base")


def test_every_benchmark_config_is_among_all_configs():
    assert set(EVALUATE_SCRIPTS.values()) <= set(ALL_CONFIGS) and "audio_caption/demo" in ALL_CONFIGS


@pytest.mark.parametrize("config", ALL_CONFIGS)
def test_evaluation_takes_the_task_options_of_the_training_config(config, paths):
    """`unival evaluate --config` builds the task as fairseq-generate would: its parser must accept them."""
    task = load_config(CONFIG_ROOT / f"{config}.yaml")["task"]
    argv = [paths["DATA"], "--task", task, "--user-dir", plugin_dir(), *task_options_argv(config),
            "--dict-file", paths["DICT_FILE"]]
    args = options.parse_args_and_arch(options.get_generation_parser(default_task=task), input_args=argv)
    assert args.task == task and args.dict_file == paths["DICT_FILE"]


def test_evaluate_dry_run_prints_the_commands_before_training(paths, tmp_path):
    untrained = {**paths, "SAVE_DIR": str(tmp_path / "not_yet_trained"), "NUM_GPUS": "0"}
    result = run("refcoco/evaluate.sh", {**untrained, "DRY_RUN": "1"})
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3 and str(tmp_path / "not_yet_trained/checkpoint_best.pt") in result.stdout
    result = run("refcoco/evaluate.sh", untrained)
    assert result.returncode != 0 and "checkpoint_best.pt: no such file" in result.stderr


def test_evaluate_runs_the_command_and_splits_can_be_chosen(paths):
    result = run("snli_ve/evaluate.sh", {**paths, "SPLITS": "test", "CHECKPOINT": paths["INIT_CHECKPOINT"]},
                 "--patch-image-size", "384")
    assert result.returncode == 0, result.stderr
    argv = recorded_argv(paths)
    assert argv[argv.index("--split") + 1] == "test" and argv[argv.index("--checkpoint") + 1] == paths["INIT_CHECKPOINT"]
    assert argv[-2:] == ["--patch-image-size", "384"]


# ---- hardware --------------------------------------------------------------------------------------------------

def fake_nvidia_smi(folder: Path, gpus: int) -> str:
    """A PATH whose nvidia-smi lists ``gpus`` GPUs (hiding any real one)."""
    folder.mkdir(exist_ok=True)
    tool = folder / "nvidia-smi"
    lines = "".join(f"echo 'GPU {index}: NVIDIA H100 (UUID: GPU-{index})'\n" for index in range(gpus))
    tool.write_text("#!/usr/bin/env bash\n" + lines)
    tool.chmod(0o755)
    return f"{folder}:{os.environ['PATH']}"


@pytest.mark.parametrize("env, expected", [
    ({"NUM_GPUS": "3"}, "3"),
    ({"NUM_GPUS": "0", "CUDA_VISIBLE_DEVICES": "0,1"}, "0"),
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, "2"),
    ({"CUDA_VISIBLE_DEVICES": "GPU-a, GPU-b, GPU-c"}, "3"),
    ({"CUDA_VISIBLE_DEVICES": ""}, "0"),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, "0"),
    ({}, "2"),  # the fake nvidia-smi's two GPUs
])
def test_gpu_count_reads_the_environment(env, expected, tmp_path):
    result = run(with_common("gpu_count"), {"PATH": fake_nvidia_smi(tmp_path / "bin", 2), **env})
    assert (result.returncode, result.stdout.strip()) == (0, expected), result.stderr


def test_gpu_count_is_zero_without_nvidia_smi_output(tmp_path):
    result = run(with_common("gpu_count"), {"PATH": fake_nvidia_smi(tmp_path / "bin", 0)})
    assert result.stdout.strip() == "0"


def test_gpu_count_refuses_a_bad_num_gpus():
    result = run(with_common("gpu_count"), {"NUM_GPUS": "two"})
    assert result.returncode != 0 and "NUM_GPUS=two" in result.stderr


@pytest.mark.parametrize("config, env, expected", [
    ("refcoco/finetune", {"NUM_GPUS": "0"}, "--distributed-world-size 1 --update-freq 32 --cpu"),
    ("refcoco/finetune", {"NUM_GPUS": "0", "PRECISION": "bf16"},
     "--distributed-world-size 1 --update-freq 32 --cpu --autocast-bf16"),
    ("refcoco/finetune", {"NUM_GPUS": "8"}, "--distributed-world-size 8 --update-freq 4 --fp16"),
    ("coco_caption/finetune", {"NUM_GPUS": "1", "PRECISION": "fp32"}, "--distributed-world-size 1 --update-freq 8"),
    # not fairseq's --bf16: its parser makes that a TPU run
    ("coco_caption/scst", {"NUM_GPUS": "2", "PRECISION": "bf16"},
     "--distributed-world-size 2 --update-freq 16 --autocast-bf16"),
])
def test_hardware_options_keep_the_global_batch_of_the_config(config, env, expected):
    result = run(with_common(f'hardware_args {config}; echo "${{HARDWARE_ARGS[*]}}"'), env)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, expected, "")


def test_a_gpu_count_that_cannot_keep_the_global_batch_warns():
    result = run(with_common('hardware_args clotho/finetune; echo "${HARDWARE_ARGS[*]}"'), {"NUM_GPUS": "3"})
    assert result.stdout.strip() == "--distributed-world-size 3 --update-freq 3 --fp16"
    assert "warning" in result.stderr and "--total-num-update" in result.stderr


@pytest.mark.parametrize("gpus", ["0", "1"])
def test_an_unknown_precision_is_refused(gpus):
    result = run(with_common("hardware_args refcoco/finetune"), {"NUM_GPUS": gpus, "PRECISION": "fp8"})
    assert result.returncode != 0 and "PRECISION=fp8" in result.stderr


@pytest.mark.parametrize("function", ["hardware_args refcoco/finetune", "evaluation_args"])
def test_fp16_on_the_cpu_is_refused(function):
    result = run(with_common(function), {"NUM_GPUS": "0", "PRECISION": "fp16"})
    assert result.returncode != 0 and "PRECISION=fp16 needs a GPU" in result.stderr


@pytest.mark.parametrize("env, expected", [
    ({"NUM_GPUS": "0"}, "--cpu"),
    ({"NUM_GPUS": "0", "PRECISION": "bf16"}, "--cpu"),  # a bfloat16 model predicts no faster on the CPU
    ({"NUM_GPUS": "2"}, ""),  # float32 unless asked
    ({"NUM_GPUS": "2", "PRECISION": "fp16"}, "--fp16"),
    ({"NUM_GPUS": "1", "PRECISION": "bf16"}, "--bf16"),
    ({"NUM_GPUS": "1", "PRECISION": "fp32"}, ""),
])
def test_evaluation_options_follow_the_gpus_and_precision(env, expected):
    result = run(with_common('evaluation_args; echo "${EVALUATION_ARGS[*]}"'), env)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, expected, "")


def test_evaluate_scripts_predict_in_the_chosen_precision(paths):
    result = run("vqav2/evaluate.sh", {**paths, "NUM_GPUS": "4", "PRECISION": "fp16", "SPLITS": "valid"})
    assert result.returncode == 0, result.stderr
    argv = recorded_argv(paths)
    args = build_parser(argv).parse_args(argv[:argv.index("--")])
    assert args.fp16 and not (args.bf16 or args.cpu) and args.split == "valid"


# ---- the configs the scripts run -------------------------------------------------------------------------------

@pytest.mark.parametrize("config", sorted(set(TRAIN_SCRIPTS.values())))
def test_update_freq_read_by_the_scripts_is_the_config_value(config):
    """common.sh reads update_freq from the benchmark's own file (no Python): it must equal the merged value."""
    result = run(with_common(f"config_update_freq {config}"), {})
    assert result.stdout.strip() == str(load_config(CONFIG_ROOT / f"{config}.yaml").get("update_freq", 1))


def test_no_shared_config_sets_the_batch():
    for path in (CONFIG_ROOT / "base").glob("*.yaml"):
        assert not re.search(r"^(update_freq|batch_size):", path.read_text(), flags=re.MULTILINE), path


@pytest.mark.parametrize("config", sorted(set(TRAIN_SCRIPTS.values())))
def test_models_are_selected_on_the_valid_split(config):
    values = load_config(CONFIG_ROOT / f"{config}.yaml")
    assert values.get("valid_subset", "valid") == "valid"
    assert values["best_checkpoint_metric"] in {"cider", "vqa_score", "acc50", "ve_accuracy"}
    assert values["maximize_best_checkpoint_metric"] is True
    assert values["total_num_update"] > values["warmup_updates"] > 0


def test_finetuning_scripts_look_for_the_task_files_before_starting(tmp_path):
    """RefCOCO+ prepared without --prefix refcoco_plus: the files were found missing by fairseq-train after its
    start-up, in a traceback; now before, naming what DATA holds."""
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid"):
        (data / f"refcoco_{split}.tsv").write_text("")
    for name in ("init.pt", "dict.txt"):
        (tmp_path / name).write_text("")
    stub = tmp_path / "unival"
    stub.write_text("#!/usr/bin/env bash\necho ran\n")
    stub.chmod(0o755)
    env = {"DATA": str(data), "SAVE_DIR": str(tmp_path / "save"), "INIT_CHECKPOINT": str(tmp_path / "init.pt"),
           "DICT_FILE": str(tmp_path / "dict.txt"), "UNIVAL_CMD": str(stub)}
    result = run("refcoco_plus/train.sh", env)
    assert result.returncode == 2 and "ran" not in result.stdout
    assert result.stderr.strip() == (f"error: {data}/refcoco_plus_train.tsv not found (configs/refcoco_plus/"
                                     f"finetune.yaml reads refcoco_plus_train.tsv from DATA); DATA has "
                                     f"refcoco_train.tsv: unival prepare names files by --prefix, or pass "
                                     f"--tsv-prefix")
    dry = run("refcoco_plus/train.sh", {**env, "DRY_RUN": "1"})
    assert dry.returncode == 0 and "warning: " in dry.stderr and "ran" in dry.stdout
    assert run("refcoco_plus/train.sh", env, "--tsv-prefix", "refcoco").stdout.strip() == "ran"
    (data / "refcoco_valid.tsv").unlink()
    missing_valid = run("refcoco/train.sh", env)
    assert "refcoco_valid.tsv not found" in missing_valid.stderr and "pass --disable-validation" in \
        missing_valid.stderr
    assert run("refcoco/train.sh", env, "--disable-validation").stdout.strip() == "ran"
