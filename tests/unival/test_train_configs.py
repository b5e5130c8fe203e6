"""Every YAML config loads, starts with the command that runs it, and turns into fairseq-train options
that fairseq's own parser accepts; `unival train` passes paths and extra options through."""

import os
import re
import sys
import time

import pytest
from fairseq import options

from unival.cli import main as cli_main
from unival.train import CONFIG_ROOT, load_config, options_to_argv, train_command

CONFIGS = sorted(p for p in CONFIG_ROOT.rglob("*.yaml") if p.parent.name != "base")


def test_configs_are_found():
    assert any(p.name == "demo.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_config_starts_with_its_command_and_parses(path, tmp_path):
    first_line = path.read_text().splitlines()[0]
    name = str(path.relative_to(CONFIG_ROOT).with_suffix(""))
    assert first_line.startswith(f"# unival train {name} "), first_line
    command = train_command(name, str(tmp_path), str(tmp_path / "save"))
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=command[1:])
    assert args.save_dir == str(tmp_path / "save") and args.user_dir.endswith("unival")


def test_includes_are_merged_with_the_including_file_winning(tmp_path):
    (tmp_path / "base.yaml").write_text("lr: 1.0\noptimizer: adam\n")
    (tmp_path / "run.yaml").write_text("includes: [base.yaml]\nlr: 0.5\nfp16: true\nno_save: false\n")
    assert load_config(tmp_path / "run.yaml") == {"lr": 0.5, "optimizer": "adam", "fp16": True, "no_save": False}
    assert options_to_argv(load_config(tmp_path / "run.yaml")) == ["--lr", "0.5", "--optimizer", "adam", "--fp16"]


def test_circular_includes_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("includes: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("includes: [a.yaml]\n")
    with pytest.raises(ValueError, match="includes itself"):
        load_config(tmp_path / "a.yaml")


def test_dry_run_prints_the_command_with_passthrough_options(tmp_path, capsys):
    assert cli_main(["train", "caption/demo", "--data", str(tmp_path), "--save-dir", "out", "--dry-run", "--",
                     "--max-epoch", "2"]) == 0
    scaled, command, allocator = capsys.readouterr().out.splitlines()
    assert scaled.startswith("[unival] --max-epoch 2 instead of the config's 3: --total-num-update 300")
    assert command.startswith("+ fairseq-train ") and command.endswith("--max-epoch 2 --total-num-update 300")
    assert "--arch unival_tiny" in command and "--task caption" in command
    assert allocator.startswith("[unival] memory allocator: ")


@pytest.mark.parametrize("flag", ["--bf16", "--memory-efficient-bf16"])
def test_fairseqs_bf16_is_refused_because_fairseq_makes_it_a_tpu_run(flag, tmp_path, capsys):
    # fairseq's own parser turns --bf16 into --tpu: the run would stop inside fairseq looking for torch_xla
    args = options.parse_args_and_arch(options.get_training_parser(),
                                       input_args=train_command("caption/demo", str(tmp_path), "out", [flag])[1:])
    assert args.tpu
    assert cli_main(["train", "caption/demo", "--data", str(tmp_path), "--save-dir", "out", "--dry-run", "--",
                     flag]) == 2
    printed = capsys.readouterr()
    assert re.search(f"unival train: error: {flag} makes fairseq-train a TPU run.*--autocast-bf16", printed.err)
    assert printed.out == ""  # refused before anything is printed or run
    assert cli_main(["train", "caption/demo", "--data", str(tmp_path), "--save-dir", "out", "--dry-run", "--",
                     flag, "--tpu"]) == 0  # a real TPU run is the caller's business


@pytest.mark.parametrize("flag", ["--bf16", "--memory-efficient-bf16"])
def test_fairseq_train_itself_refuses_bf16_before_building_the_model(flag, tmp_path):
    """A direct fairseq-train --bf16 (not through unival train) stops at the task's model build with the same
    advice, instead of inside fairseq's trainer looking for torch_xla."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from unival.tasks.base import refuse_tpu_run_without_torch_xla

    def task_cfg(extra):
        argv = train_command("caption/demo", str(tmp_path), "out", extra)[1:]
        return convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(),
                                                                          input_args=argv)).task

    with pytest.raises(ValueError, match="--bf16 makes fairseq-train a TPU run .*--autocast-bf16"):
        refuse_tpu_run_without_torch_xla(task_cfg([flag]))
    refuse_tpu_run_without_torch_xla(task_cfg(["--autocast-bf16"]))  # no error


def test_unknown_config_names_the_places_searched(capsys):
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        train_command("nonexistent/config", "data", "save")
    assert cli_main(["train", "nonexistent/config", "--data", "data", "--save-dir", "save"]) == 2
    assert capsys.readouterr().err.startswith("unival train: error: config 'nonexistent/config' not found (looked at ")


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    printed = capsys.readouterr().out
    for name in ("demo", "make-demo-data", "train", "evaluate", "merge", "convert", "prepare"):
        assert name in printed


def test_a_criterion_chosen_on_the_command_line_drops_the_configs_criterion_options(tmp_path):
    """caption/demo trains with label-smoothed cross entropy; SCST takes no --label-smoothing, which fairseq-train
    would refuse as unrecognized."""
    command = train_command("caption/demo", str(tmp_path), "out", ["--criterion", "scst_reward_criterion",
                                                                    "--reward", "cider"])
    assert "--label-smoothing" not in command and command[-4:] == ["--criterion", "scst_reward_criterion",
                                                                   "--reward", "cider"]
    assert "--patch-image-size" in command and "--lr" in command  # the task's and the run's options stay
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=command[1:])
    assert args.criterion == "scst_reward_criterion" and args.reward == "cider"
    assert "--label-smoothing" in train_command("caption/demo", str(tmp_path), "out", ["--criterion=" +
                                                "adjust_label_smoothed_cross_entropy"])


def test_another_number_of_epochs_scales_the_learning_rate_schedule(tmp_path, capsys):
    """caption/demo: 3 epochs, the rate decaying over 450 updates. With --max-epoch 1 it stopped at 7e-4 of 1e-3
    (the schedule kept 450); the schedule now spans the run, unless the command line sets its length."""
    def schedule(extra):
        argv = train_command("caption/demo", str(tmp_path), "out", extra)[1:]
        cfg = options.parse_args_and_arch(options.get_training_parser(), input_args=argv)
        return cfg.max_epoch, int(cfg.total_num_update)

    assert schedule([]) == (3, 450)
    assert schedule(["--max-epoch", "1"]) == (1, 150)
    assert "--max-epoch 1 instead of the config's 3: --total-num-update 150 (the config's 450 scaled)" in \
        capsys.readouterr().out
    assert schedule(["--max-epoch=6"]) == (6, 900)
    assert schedule(["--max-epoch", "1", "--total-num-update", "200"]) == (1, 200)
    capsys.readouterr()
    assert schedule(["--max-epoch", "3"]) == (3, 450) and "scaled" not in capsys.readouterr().out


def test_a_failed_run_ends_with_the_reason_its_traceback_ends_with(tmp_path, capsys):
    """fairseq's tracebacks put the message (a bad row, a missing file) in their middle or last line, three of them
    for an error in a data-loader worker: unival train passes its output through, then says why in one line."""
    from unival.train import run_fairseq, stopping_reason

    worker = ("Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: Caught ValueError in "
              "DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n  File \"y.py\", line 2\n"
              "unival.data_utils.media.MediaError: caption_train.tsv:11: empty caption ''\n")
    assert stopping_reason(worker) == "caption_train.tsv:11: empty caption '' (MediaError)"
    assert stopping_reason("| INFO | done\n") is None
    script = tmp_path / "fails.py"
    script.write_text("import sys\nsys.stderr.write('progress 1\\rprogress 2\\r')\n"
                      "raise FileNotFoundError(\"split 'valid': data/valid.tsv not found\")\n")
    assert run_fairseq([sys.executable, str(script)], dict(os.environ), "unival train") == 1
    err = capsys.readouterr().err
    assert "progress 1\rprogress 2\r" in err  # passed through as it came
    assert err.endswith("unival train: fairseq-train stopped: split 'valid': data/valid.tsv not found "
                        "(FileNotFoundError)\n")
    # when its own error output goes away (a closed pipe, Ctrl-C), the run is stopped, not left blocked on its pipe
    script.write_text("import sys, time\nsys.stderr.write('x' * 200000)\ntime.sleep(60)\n")

    class Gone:
        class buffer:
            @staticmethod
            def write(chunk):
                raise BrokenPipeError(32, "Broken pipe")

    real, sys.stderr = sys.stderr, Gone()
    started = time.monotonic()
    try:
        with pytest.raises(BrokenPipeError):
            run_fairseq([sys.executable, str(script)], dict(os.environ), "unival train")
    finally:
        sys.stderr = real
    assert time.monotonic() - started < 30
    script.write_text("print('fine')\n")
    assert run_fairseq([sys.executable, str(script)], dict(os.environ), "unival train") == 0
    assert "stopped" not in capsys.readouterr().err
